"""mmsegmentation itself, as the numerical reference for the tests (CPU, no compiled ops).

mmseg's model package imports compiled `mmcv.ops` that DeepLabV3+ never calls; a placeholder
`mmcv._ext` whose functions raise keeps the import working without running anything compiled.
"""

from __future__ import annotations

import os
import sys
import types


class _PlaceholderExt(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name} is a placeholder: compiled mmcv ops are not installed")

        return unavailable


def import_mmseg():
    sys.modules.setdefault("mmcv._ext", _PlaceholderExt("mmcv._ext"))
    import mmseg  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return mmseg


def mmseg_config_path(name: str) -> str:
    mmseg = import_mmseg()
    return os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", "deeplabv3plus", name + ".py")


def load_mmseg_config(name: str):
    from mmengine import Config

    return Config.fromfile(mmseg_config_path(name))


def build_mmseg_model(name: str):
    """mmseg's EncoderDecoder for a config, with SyncBN as plain BN and no pretrained download."""
    from mmseg.registry import MODELS

    cfg = load_mmseg_config(name)
    model_cfg = cfg.model
    model_cfg.pretrained = None
    model_cfg.backbone.init_cfg = None
    for part in ("backbone", "decode_head", "auxiliary_head"):
        model_cfg[part].norm_cfg = dict(type="BN", requires_grad=True)
    model_cfg.data_preprocessor = None
    model = MODELS.build(model_cfg)
    return model.eval()
