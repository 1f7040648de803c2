"""Configurations for every row of mmsegmentation's DeepLabV3+ model zoo, plus the CamVid default.

Each config is a frozen dataclass built from one table (`zoo/model_zoo.json`, the seed's rows) and
the dataset facts in `zoo/datasets.json` (class names and palettes as mmsegmentation defines them).
The architecture and test pipeline follow from the config name exactly as mmsegmentation's config
files derive them, so `tests/test_configs_mmseg.py` can check each one against mmseg's own file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)
DEFAULT_MODEL = "deeplabv3plus_r18-d8_camvid-360x480"


@dataclass(frozen=True)
class BackboneSpec:
    """ResNet layout; `deep_stem` is the v1c 3-conv stem, False is the 7x7 "b" stem."""

    depth: int
    deep_stem: bool
    dilations: tuple[int, int, int, int]
    strides: tuple[int, int, int, int]
    multi_grid: tuple[int, ...] | None = None
    contract_dilation: bool = True


@dataclass(frozen=True)
class HeadSpec:
    """DepthwiseSeparableASPPHead and the training-only FCN auxiliary head."""

    in_channels: int
    channels: int
    c1_in_channels: int
    c1_channels: int
    dilations: tuple[int, ...]
    align_corners: bool
    aux_in_channels: int
    aux_channels: int
    dropout: float = 0.1


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    label: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    reduce_zero_label: bool
    ignore_index: int = 255


@dataclass(frozen=True)
class ZooEntry:
    """The seed table's figures for a row (fps measured by mmseg, fp32 unless the row says FP16)."""

    dataset_label: str
    miou: float | None
    miou_ms_flip: float | None
    fps: float | None
    fps_gpu: str | None
    train_mem_gb: float | None
    checkpoint_url: str | None
    seed_name: str


@dataclass(frozen=True)
class ModelConfig:
    name: str
    backbone: BackboneSpec
    head: HeadSpec
    dataset: DatasetInfo
    test_scale: tuple[int, int]  # (w, h) for a keep-ratio resize, as mmseg's Resize(scale=...)
    inference: str  # "whole" or "slide"
    slide_crop: tuple[int, int] | None  # (h, w)
    slide_stride: tuple[int, int] | None  # (h, w)
    crop_size: tuple[int, int]  # (h, w) training crop
    train_scale: tuple[int, int]  # (w, h) base scale of RandomResize
    batch_per_gpu: int
    gpus: int
    iters: int
    mean: tuple[float, float, float] = MMSEG_MEAN
    std: tuple[float, float, float] = MMSEG_STD
    ohem_min_kept: int | None = None
    amp: bool = False
    zoo: ZooEntry | None = None

    @property
    def num_classes(self) -> int:
        return len(self.dataset.classes)

    @property
    def arch(self) -> str:
        """Backbone label as the seed table writes it, e.g. R-50-D8, R-18b-D8, R-101-D16-MG124."""
        stride = 8 if self.backbone.strides[2] == 1 else 16
        stem = "" if self.backbone.deep_stem else "b"
        mg = "-MG" + "".join(map(str, self.backbone.multi_grid)) if self.backbone.multi_grid else ""
        return f"R-{self.backbone.depth}{stem}-D{stride}{mg}"


# Per dataset: (config-name suffix, test scale, slide crop/stride or None, train scale).
_DATASET_SUFFIX = {
    "cityscapes": "cityscapes",
    "ade20k": "ade20k",
    "voc12aug": "voc12aug",
    "pascal-context": "pascal_context",
    "pascal-context-59": "pascal_context_59",
    "loveda": "loveda",
    "potsdam": "potsdam",
    "vaihingen": "vaihingen",
    "isaid": "isaid",
    "mapillay_v1_65": "mapillary_v1",
    "camvid": "camvid",
}
_TEST_SCALE = {
    "cityscapes": (2048, 1024),
    "ade20k": (2048, 512),
    "voc12aug": (2048, 512),
    "pascal_context": (520, 520),
    "pascal_context_59": (520, 520),
    "loveda": (1024, 1024),
    "potsdam": (512, 512),
    "vaihingen": (512, 512),
    "isaid": (896, 896),
    "mapillary_v1": (2048, 1024),
    "camvid": (480, 360),
}
_TRAIN_SCALE = {**_TEST_SCALE, "loveda": (2048, 512)}

_NAME = re.compile(
    r"^deeplabv3plus_r(?P<depth>18|50|101)(?P<b>b?)-d(?P<os>8|16)(?P<mg>-mg124)?"
    r"(?:_(?P<gpus>\d+)xb(?P<bs>\d+)(?P<amp>-amp)?-(?P<iters>\d+)k)?"
    r"_(?P<dataset>[a-z0-9_-]+?)-(?P<h>\d+)x(?P<w>\d+)$"
)


@cache
def _datasets() -> dict:
    return json.loads(resources.files("model").joinpath("zoo/datasets.json").read_text())


@cache
def _seed_rows() -> list[dict]:
    return json.loads(resources.files("model").joinpath("zoo/model_zoo.json").read_text())


def dataset_info(key: str) -> DatasetInfo:
    d = _datasets()[key]
    return DatasetInfo(
        name=key,
        label=d["label"],
        classes=tuple(d["classes"]),
        palette=tuple(tuple(p) for p in d["palette"]),
        reduce_zero_label=d["reduce_zero_label"],
    )


def config_from_name(name: str, zoo: ZooEntry | None = None) -> ModelConfig:
    """Derive a config from an mmseg-style name, the way mmseg's config files are laid out."""
    m = _NAME.match(name)
    if not m or m["dataset"] not in _DATASET_SUFFIX:
        raise KeyError(f"not a DeepLabV3+ config name: {name!r}")
    depth, os16 = int(m["depth"]), m["os"] == "16"
    crop = (int(m["h"]), int(m["w"]))
    ds_key = _DATASET_SUFFIX[m["dataset"]]
    small = depth == 18
    # mmseg's 769x769 Cityscapes configs (and only they) use align_corners=True and slide inference.
    slide_cityscapes = ds_key == "cityscapes" and crop == (769, 769)
    slide_context = ds_key.startswith("pascal_context")
    if slide_cityscapes:
        test_scale, slide = (2049, 1025), (crop, (513, 513))
    elif slide_context:
        test_scale, slide = _TEST_SCALE[ds_key], (crop, (320, 320))
    else:
        test_scale, slide = _TEST_SCALE[ds_key], None
    backbone = BackboneSpec(
        depth=depth,
        deep_stem=not m["b"],
        dilations=(1, 1, 1, 2) if os16 else (1, 1, 2, 4),
        strides=(1, 2, 2, 1) if os16 else (1, 2, 1, 1),
        multi_grid=(1, 2, 4) if m["mg"] else None,
    )
    head = HeadSpec(
        in_channels=512 if small else 2048,
        channels=128 if small else 512,
        c1_in_channels=64 if small else 256,
        c1_channels=12 if small else 48,
        dilations=(1, 6, 12, 18) if os16 else (1, 12, 24, 36),
        align_corners=slide_cityscapes,
        aux_in_channels=256 if small else 1024,
        aux_channels=64 if small else 256,
    )
    return ModelConfig(
        name=name,
        backbone=backbone,
        head=head,
        dataset=dataset_info(ds_key),
        test_scale=(2049, 1025) if slide_cityscapes else test_scale,
        inference="slide" if slide else "whole",
        slide_crop=slide[0] if slide else None,
        slide_stride=slide[1] if slide else None,
        crop_size=crop,
        train_scale=(2049, 1025) if slide_cityscapes else _TRAIN_SCALE[ds_key],
        batch_per_gpu=int(m["bs"] or 8),
        gpus=int(m["gpus"] or 1),
        iters=int(m["iters"] or 20) * 1000,
        ohem_min_kept=100000 if m["mg"] else None,
        amp=bool(m["amp"]),
        zoo=zoo,
    )


def canonical_name(row: dict) -> str:
    """The row's real mmseg config name: the seed page's links are wrong for a few rows.

    The backbone and schedule tokens are rebuilt from the row's own fields, which also repairs the
    doubled 'd' of one link.
    """
    name = re.sub(r"^d+eeplab", "deeplab", row["config"])
    bb = row["backbone"].lower().replace("r-", "r").split("-")[0]
    name = re.sub(r"^deeplabv3plus_r\d+b?", f"deeplabv3plus_{bb}", name)
    return re.sub(r"-\d+k_", f"-{row['lr_schedule_iters'] // 1000}k_", name)


@cache
def _all_configs() -> dict[str, ModelConfig]:
    configs = {}
    for row in _seed_rows():
        name = canonical_name(row)
        zoo = ZooEntry(
            dataset_label=row["dataset"],
            miou=row.get("miou"),
            miou_ms_flip=row.get("miou_ms_flip"),
            fps=row.get("inf_fps"),
            fps_gpu=row.get("device"),
            train_mem_gb=row.get("train_mem_gb"),
            checkpoint_url=row.get("checkpoint_url"),
            seed_name=row["config"],
        )
        configs[name] = config_from_name(name, zoo)
    configs[DEFAULT_MODEL] = config_from_name(DEFAULT_MODEL)
    return configs


def list_configs() -> list[ModelConfig]:
    return list(_all_configs().values())


def get_config(name: str) -> ModelConfig:
    """A zoo row by name (the seed's misspelt names are accepted too), or any name of mmseg's form."""
    configs = _all_configs()
    if name in configs:
        return configs[name]
    for cfg in configs.values():
        if cfg.zoo and cfg.zoo.seed_name == name:
            return cfg
    return config_from_name(name)


def parse_test_scale(size: str) -> tuple[int, int]:
    """"WxH" -> (w, h) in pixels; ValueError saying the form otherwise."""
    width, _, height = size.partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise ValueError(f"a test scale is WIDTHxHEIGHT in pixels, e.g. 480x360; got {size!r}")
    return int(width), int(height)


def with_test_scale(cfg: ModelConfig, size: str) -> ModelConfig:
    """``cfg`` inferring at ``size`` "WxH" (the box an image is resized into) instead of its own."""
    return dataclasses.replace(cfg, test_scale=parse_test_scale(size))
