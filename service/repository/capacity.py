"""Does a model fit? Checked after its weights are loaded and before it is warmed up, so a load
that cannot fit is refused (507) without running a batch, and the models already served keep
their memory.

The need is the weights plus the activations of one full batch at the largest bucket: the values
alive at the forward pass's peak, per model-input pixel, depend on the output stride (a stride-8
network keeps its deep features at 4x the area). The coefficients are upper bounds of the peaks
measured on the GPU for R-18/50/101 (bench/results/model_memory.json); CUDA graphs share one
memory pool, so the largest batch shape sets the peak.
"""

from __future__ import annotations

import math

import torch

from model.pipeline.buckets import InputPolicy
from service.admission import MemoryBudget, container_memory_limit, resident_bytes
from service.backends import Backend
from service.errors import InsufficientMemory

#: activation bytes at the peak per model-input pixel per image, per byte of activation dtype
PEAK_VALUES_PER_PIXEL = {8: 160, 16: 64}
_MB = 1 << 20


def output_stride(config) -> int:
    return 4 * math.prod(config.backbone.strides)


def needed_bytes(backend: Backend, policy: InputPolicy, max_batch_size: int) -> int:
    """Weights (already on the device) plus one full batch of activations at the largest bucket."""
    width, height = max(policy.all_buckets(), key=lambda b: b[0] * b[1])
    values = PEAK_VALUES_PER_PIXEL[min(PEAK_VALUES_PER_PIXEL, key=lambda s: abs(s - output_stride(backend.config)))]
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
    """InsufficientMemory unless ``backend``'s model, at ``max_batch_size``, fits what is free."""
    need, free = needed_bytes(backend, policy, max_batch_size), free_bytes(str(backend.device), memory)
    if need > free:
        raise InsufficientMemory(
            f"{what} needs about {need // _MB} MB on {backend.device} (weights + a batch of {max_batch_size} at "
            f"the largest input size) but {max(free, 0) // _MB} MB is free; lower max_batch_size or unload a model"
        )
