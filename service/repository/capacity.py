"""Does a model fit? Checked after its weights are loaded and before it is warmed up, so a load
that cannot fit is refused (507) without running a batch, and the models already served keep
their memory.

The need is the weights plus one full batch of activations at the largest bucket: the values
alive at the forward pass's peak per model-input pixel depend on the blocks (bottleneck ResNets
carry 4x the channels) and the output stride (stride 8 keeps the deep features at 4x the area).
The coefficients are upper bounds of the peaks measured on an H200 in fp16 with CUDA graphs and
cuDNN's tuning workspaces (bench/results/model_memory.json: R-18 os8 189-217, R-50/101 os8 624,
R-101 os16 436 values per pixel); CUDA graphs share one memory pool, so the largest batch shape
sets the peak.
"""

from __future__ import annotations

import math

import torch

from model.pipeline.buckets import InputPolicy
from service.admission import MemoryBudget, container_memory_limit, resident_bytes
from service.backends import Backend
from service.errors import InsufficientMemory

#: activation values at the peak per model-input pixel and image, by (bottleneck blocks, output stride)
PEAK_VALUES_PER_PIXEL = {(False, 8): 224, (False, 16): 160, (True, 8): 640, (True, 16): 448}
_MB = 1 << 20


def output_stride(config) -> int:
    return 4 * math.prod(config.backbone.strides)


def needed_bytes(backend: Backend, policy: InputPolicy, max_batch_size: int) -> int:
    """Weights (already on the device) plus one full batch of activations at the largest bucket."""
    width, height = max(policy.all_buckets(), key=lambda b: b[0] * b[1])
    cfg = backend.config
    values = PEAK_VALUES_PER_PIXEL[cfg.backbone.depth >= 50, 8 if output_stride(cfg) <= 8 else 16]
    itemsize = torch.empty((), dtype=backend.precision.dtype).element_size()
    return backend.memory_bytes() + max_batch_size * width * height * values * itemsize


def free_bytes(device: str, memory: MemoryBudget) -> int:
    """What a new model may still use: on a GPU its free memory (plus what torch's cache holds
    unused); on the CPU the container's limit minus the process and the requests' budget."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    return container_memory_limit() - resident_bytes() - memory.budget_bytes


def require_room(backend: Backend, policy: InputPolicy, max_batch_size: int, memory: MemoryBudget, what: str) -> None:
    """InsufficientMemory unless ``backend``'s model, at ``max_batch_size``, fits what is free on
    each of its devices (a replicated model holds a copy per device)."""
    need = needed_bytes(backend, policy, max_batch_size)
    for device in (str(r.device) for r in getattr(backend, "replicas", [backend])):
        free = free_bytes(device, memory)
        if need > free:
            raise InsufficientMemory(
                f"{what} needs about {need // _MB} MB on {device} (weights + a batch of {max_batch_size} at "
                f"the largest input size) but {max(free, 0) // _MB} MB is free; lower max_batch_size or unload a model"
            )
