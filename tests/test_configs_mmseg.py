"""Every config against mmsegmentation's own config file of the same name."""

from __future__ import annotations

import pytest

from mmseg_ref import load_mmseg_config
from model import DEFAULT_MODEL, build_model, get_config, list_configs
from model.__main__ import main as list_main

ZOO = [c for c in list_configs() if c.zoo]


def test_the_table_has_43_rows_with_unique_real_names():
    assert len(ZOO) == 43
    assert len({c.name for c in ZOO}) == 43
    assert get_config("ddeeplabv3plus_r101-d16-mg124_4xb2-40k_cityscapes-512x1024").arch == "R-101-D16-MG124"
    assert get_config("deeplabv3plus_r101-d8_4xb4-40k_pascal-context-480x480").arch == "R-101-D8"


@pytest.mark.parametrize("cfg", ZOO, ids=lambda c: c.name)
def test_config_matches_mmseg_file(cfg):
    ref = load_mmseg_config(cfg.name)
    bb, dh, ah = ref.model.backbone, ref.model.decode_head, ref.model.auxiliary_head
    assert (bb.type == "ResNetV1c") == cfg.backbone.deep_stem
    assert bb.depth == cfg.backbone.depth
    assert tuple(bb.dilations) == cfg.backbone.dilations
    assert tuple(bb.strides) == cfg.backbone.strides
    assert (tuple(bb.multi_grid) if bb.get("multi_grid") else None) == cfg.backbone.multi_grid
    assert bb.contract_dilation == cfg.backbone.contract_dilation
    assert (dh.in_channels, dh.channels, dh.c1_in_channels, dh.c1_channels) == (
        cfg.head.in_channels, cfg.head.channels, cfg.head.c1_in_channels, cfg.head.c1_channels)  # fmt: skip
    assert tuple(dh.dilations) == cfg.head.dilations
    assert dh.align_corners == cfg.head.align_corners == ah.align_corners
    assert dh.num_classes == ah.num_classes == cfg.num_classes
    assert (ah.in_channels, ah.channels) == (cfg.head.aux_in_channels, cfg.head.aux_channels)
    assert dh.dropout_ratio == cfg.head.dropout
    resize = next(t for t in ref.test_pipeline if t["type"] == "Resize")
    assert tuple(resize["scale"]) == cfg.test_scale and resize["keep_ratio"]
    assert ref.model.test_cfg["mode"] == cfg.inference
    if cfg.inference == "slide":
        assert tuple(ref.model.test_cfg["crop_size"]) == cfg.slide_crop
        assert tuple(ref.model.test_cfg["stride"]) == cfg.slide_stride
    assert tuple(ref.model.data_preprocessor.mean) == cfg.mean
    assert tuple(ref.model.data_preprocessor.std) == cfg.std
    assert ref.model.data_preprocessor.bgr_to_rgb
    assert tuple(ref.crop_size) == cfg.crop_size
    train_resize = next(t for t in ref.train_pipeline if t["type"] == "RandomResize")
    assert tuple(train_resize["scale"]) == cfg.train_scale
    assert ref.train_dataloader.batch_size == cfg.batch_per_gpu
    sampler = dh.get("sampler")
    assert (sampler["min_kept"] if sampler else None) == cfg.ohem_min_kept


@pytest.mark.parametrize("cfg", ZOO + [get_config(DEFAULT_MODEL)], ids=lambda c: c.name)
def test_every_config_builds(cfg):
    net = build_model(cfg, with_auxiliary=False)
    assert net.decode_head.conv_seg.out_channels == cfg.num_classes
    assert len(cfg.dataset.palette) == cfg.num_classes


def test_list_prints_one_line_per_config(capsys):
    list_main(["list"])
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines[2:]]
    assert names == [c.name for c in list_configs()]


def test_unknown_name_is_a_key_error():
    with pytest.raises(KeyError, match="not a DeepLabV3\\+ config name"):
        get_config("pspnet_r50-d8_cityscapes")
