"""Load DeepLabV3+ weights from mmseg's published files, mmengine-era files or our own format.

Our format is `torch.save({"format": FORMAT, "config": name, "state_dict": ..., "meta": {...}})`
with JSON-able meta (classes, palette, normalisation, training provenance), read back with
`weights_only=True` like every other file here (see `safe_load`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from .configs import DEFAULT_MODEL, ModelConfig, get_config, list_configs
from .download import fetch_checkpoint
from .network import DeepLabV3Plus, build_model
from .safe_load import CheckpointError, read_checkpoint

FORMAT = "deeplab-serve/1"
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / f"{DEFAULT_MODEL}.pth"
_STAMP = re.compile(r"(_\d{8}_\d{6})?(-[0-9a-f]{8,64})?(_fp16)?$")


def half_floats(tensors: dict) -> dict:
    """Floating tensors as fp16, the rest (BN's batch counters) as they are: half the bytes on disk."""
    return {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}


def save_checkpoint(net: DeepLabV3Plus, path: str | Path, meta: dict | None = None, half: bool = False) -> Path:
    """Write our format; `half` stores floating weights as fp16 (BN statistics included)."""
    weights = net.state_dict()
    state = {k: v.detach().cpu() for k, v in (half_floats(weights) if half else weights).items()}
    cfg = net.config
    full_meta = {
        "classes": list(cfg.dataset.classes),
        "palette": [list(p) for p in cfg.dataset.palette],
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "input": "RGB, NCHW float32, (x - mean) / std",
        **(meta or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "config": cfg.name, "state_dict": state, "meta": full_meta}, path)
    return path


def config_for_checkpoint(path: Path) -> ModelConfig:
    """Infer the config: our `config` field, else the zoo row whose published file this is."""
    stem = _STAMP.sub("", path.stem)
    for cfg in list_configs():
        url = cfg.zoo.checkpoint_url if cfg.zoo else None
        published = _STAMP.sub("", url.rsplit("/", 1)[-1][: -len(".pth")]) if url else None
        if stem in (cfg.name, published):
            return cfg
    try:
        return get_config(stem)
    except KeyError:
        pass
    raise CheckpointError(
        f"cannot tell which config {path.name} belongs to; pass config=<name> (see `python -m model list`)"
    )


def _with_meta_classes(cfg: ModelConfig, meta: dict) -> ModelConfig:
    """Class names and palette from the checkpoint's meta override the config's when they fit."""
    classes = meta.get("classes") or meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    palette = meta.get("palette") or meta.get("PALETTE") or (meta.get("dataset_meta") or {}).get("palette")
    if not classes or len(classes) != cfg.num_classes:
        return cfg
    ds = dataclasses.replace(cfg.dataset, classes=tuple(classes))
    if palette and len(palette) == len(classes):
        ds = dataclasses.replace(ds, palette=tuple(tuple(int(c) for c in p) for p in palette))
    return dataclasses.replace(cfg, dataset=ds)


def _with_meta_test_scale(cfg: ModelConfig, meta: dict) -> ModelConfig:
    """The inference size a checkpoint records (``meta["test_scale"]``, [w, h]) replaces the
    config's: the size its weights were found to segment best at (the built-in model's card)."""
    scale = meta.get("test_scale")
    if not scale:
        return cfg
    if len(scale) != 2 or not all(isinstance(v, int) and v > 0 for v in scale):
        raise CheckpointError(f"meta test_scale must be [width, height] in pixels, got {scale!r}")
    return dataclasses.replace(cfg, test_scale=(scale[0], scale[1]))


def _split(obj: object, path: Path) -> tuple[dict, dict, str | None]:
    """(state_dict, meta, config name) of any supported layout."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if obj.get("format") == FORMAT:
        return obj["state_dict"], obj.get("meta") or {}, obj.get("config")
    state = obj.get("state_dict", obj)
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} has no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, meta, None


def load_state(net: DeepLabV3Plus, state: dict, source: str) -> None:
    """Strict load that names every missing, unexpected or mis-shaped key."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        parts = [f"{source} does not match config {net.config.name}"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{title} ({len(items)}): " + ", ".join(items[:10]) + (" ..." if len(items) > 10 else ""))
        raise CheckpointError("; ".join(parts))
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _built_in_weights() -> Path:
    """The shipped weights, or a loud error: a silent random stand-in would serve garbage labels."""
    if not DEFAULT_WEIGHTS.is_file():
        raise CheckpointError(
            f"the built-in weights {DEFAULT_WEIGHTS} are missing: restore them (`git checkout -- model/weights` in a "
            "checkout, or reinstall deeplab-serve) or pass a checkpoint file or zoo config name"
        )
    return DEFAULT_WEIGHTS


def load_model(
    path_or_name: str | Path | None = None, config: str | ModelConfig | None = None, device: str | torch.device = "cpu"
) -> DeepLabV3Plus:
    """An eval-mode model from a checkpoint file, a zoo config name, or None (or the built-in
    model's name) for the built-in one."""
    if path_or_name is None or str(path_or_name) == DEFAULT_MODEL:
        path_or_name = _built_in_weights()
    path = Path(path_or_name)
    if not path.exists():
        try:
            zoo_cfg = get_config(str(path_or_name))
        except KeyError:
            raise CheckpointError(f"{path_or_name} is neither a file nor a known config name") from None
        path, config = fetch_checkpoint(zoo_cfg), config or zoo_cfg
    state, meta, name = _split(read_checkpoint(path), path)
    if isinstance(config, str):
        config = get_config(config)
    cfg = config or (get_config(name) if name else config_for_checkpoint(path))
    cfg = _with_meta_test_scale(_with_meta_classes(cfg, meta), meta)
    has_aux = any(k.startswith("auxiliary_head.") for k in state)
    net = build_model(cfg, with_auxiliary=has_aux)
    load_state(net, state, path.name)
    net.meta = meta
    return net.to(device).eval()
