"""DeepLabV3+ faithful to mmsegmentation: configs, network, checkpoints, safe loading, zoo download.

The core imports none of its subpackages: `model.pipeline` (image in, labels out), `model.accel`
(the GPU fast path) and `model.training` build on it, never the other way round.
"""

from .checkpoint import load_model, save_checkpoint
from .configs import DEFAULT_MODEL, ModelConfig, get_config, list_configs
from .network import DeepLabV3Plus, build_model
from .safe_load import CheckpointError, UnsafeCheckpointError

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointError",
    "DeepLabV3Plus",
    "ModelConfig",
    "UnsafeCheckpointError",
    "build_model",
    "get_config",
    "list_configs",
    "load_model",
    "save_checkpoint",
]
