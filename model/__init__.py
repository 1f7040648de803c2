"""DeepLabV3+ faithful to mmsegmentation: configs, network, checkpoints and inference."""

from .checkpoint import load_model, save_checkpoint
from .configs import DEFAULT_MODEL, ModelConfig, get_config, list_configs
from .inference import Segmenter
from .network import DeepLabV3Plus, build_model
from .safe_load import CheckpointError, UnsafeCheckpointError

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "DeepLabV3Plus",
    "ModelConfig",
    "Segmenter",
    "UnsafeCheckpointError",
    "build_model",
    "get_config",
    "list_configs",
    "load_model",
    "save_checkpoint",
]
