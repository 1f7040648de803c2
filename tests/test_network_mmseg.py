"""Our network against mmsegmentation's own EncoderDecoder: same keys, same parameters, same logits."""

from __future__ import annotations

import pytest
import torch

from helpers import randomize
from mmseg_ref import build_mmseg_model
from model import build_model, get_config, list_configs, load_model

ARCHS = [
    "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus_r18b-d8_4xb2-80k_cityscapes-769x769",
    "deeplabv3plus_r50-d8_4xb2-40k_cityscapes-769x769",
    "deeplabv3plus_r50b-d8_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus_r101-d8_4xb4-80k_ade20k-512x512",
    "deeplabv3plus_r101b-d8_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus_r101-d16-mg124_4xb2-40k_cityscapes-512x1024",
]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def mmseg_logits(ref, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ref.encode_decode(x, [dict(img_shape=x.shape[2:])])


@pytest.mark.parametrize("name", ARCHS)
def test_logits_match_mmseg(name):
    ref = build_mmseg_model(name)
    ref.load_state_dict(randomize(ref.state_dict(), seed=len(name)))
    ours = build_model(get_config(name)).eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    for h, w in [(97, 131), (64, 80)]:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        expected = mmseg_logits(ref, x)
        with torch.no_grad():
            got = ours(x)
        assert got.shape == (2, ours.config.num_classes, h, w)
        assert relative_error(got, expected) <= 1e-4


@pytest.mark.parametrize("cfg", [c for c in list_configs() if c.zoo], ids=lambda c: c.name)
def test_every_zoo_row_loads_an_mmseg_checkpoint_and_reproduces_it(cfg, tmp_path):
    """A checkpoint saved in mmseg's layout under the row's published file name loads strictly,
    its config is inferred from that name, and the logits equal mmseg's."""
    ref = build_mmseg_model(cfg.name)
    state = randomize(ref.state_dict(), seed=7)
    ref.load_state_dict(state)
    path = tmp_path / cfg.zoo.checkpoint_url.rsplit("/", 1)[-1]
    torch.save({"meta": {"CLASSES": cfg.dataset.classes, "PALETTE": cfg.dataset.palette}, "state_dict": state}, path)
    net = load_model(path)
    assert net.config.name == cfg.name
    assert net.auxiliary_head is not None  # aux weights are accepted and kept
    x = torch.randn(1, 3, 41, 57, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert relative_error(net(x), mmseg_logits(ref, x)) <= 1e-4
