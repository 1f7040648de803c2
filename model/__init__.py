"""DeepLabV3+ faithful to mmsegmentation: configs, network, checkpoints and inference."""

from .configs import DEFAULT_MODEL, ModelConfig, get_config, list_configs
from .network import DeepLabV3Plus, build_model

__all__ = ["DEFAULT_MODEL", "DeepLabV3Plus", "ModelConfig", "build_model", "get_config", "list_configs"]
