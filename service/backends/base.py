"""The backend interface: everything the service needs from an inference engine, and no more.

A backend turns a dense batch of bucket-sized uint8 RGB images into uint8 label maps of the same
height and width. Normalisation, precision, device placement and argmax all live inside the
backend, so each engine can do them where it is fastest (e.g. on the GPU, copying back only the
uint8 labels), and the service stays engine-agnostic. Backends are called from at most
``concurrent_batches`` inference threads at a time (1 unless the backend says otherwise).

To add an engine: subclass ``Backend`` (``name``, ``extensions``, ``load``, ``infer``) and add the
class to ``service.backends.BACKENDS``. Import the engine's own package inside ``load`` so that an
image without it can still import the registry.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.precision import Precision, UnsupportedPrecision

#: the precision setting that lets each backend pick the best it runs on its device
AUTO = "auto"


class Backend(abc.ABC):
    #: registry name, shown in /v1/models and the ``deeplab_model_info`` metric
    name: str = "base"
    #: model file suffixes (lower case) this backend is chosen for when the backend setting is auto
    extensions: tuple[str, ...] = ()
    #: keyword options of ``__init__`` beyond model/device/precision that settings may pass
    options: tuple[str, ...] = ()
    #: how many batches the batcher may hand over at once, from that many threads (set by ``load``)
    concurrent_batches: int = 1

    def __init__(self, model: str | None, device: str = "cpu", precision: str = AUTO):
        self.model = model
        self.device = device
        self.requested_precision = precision
        #: what the engine really computes in, set by ``load`` (``resolve_precision``)
        self.precision: Precision | None = None
        #: safe facts about the weights' origin for /v1/models, set by ``load``
        self.provenance: dict = {}

    def resolve_precision(self, supported: tuple[Precision, ...], best: Precision, note: str = "") -> Precision:
        """The precision to run: ``best`` for ``auto``, else the requested one if this engine on
        this device runs it; otherwise ``UnsupportedPrecision`` naming the supported ones."""
        if self.requested_precision == AUTO:
            return best
        try:
            return Precision.parse(self.requested_precision, supported, f"the {self.name} backend on {self.device}")
        except UnsupportedPrecision as exc:
            raise UnsupportedPrecision(f"{exc}{note}") from None

    @abc.abstractmethod
    def load(self):
        """Load the model onto ``device``, set ``self.precision`` and ``self.config`` (the
        ``model.ModelConfig`` it serves: classes, palette, test scale, mean/std, zoo entry) and
        return the config."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``N x H x W x 3`` uint8 RGB -> ``N x H x W`` uint8 class indices."""

    def stage(self, pixels: np.ndarray) -> Any:
        """Prepare one ``H x W x 3`` image for a later ``infer_images``, in the caller's thread
        (the service calls it in its codec threads, right after decoding, so that work stays off
        the single inference thread; a GPU backend starts the upload here). Default: nothing."""
        return pixels

    def infer_images(self, staged: Sequence[Any]) -> np.ndarray:
        """``infer`` for a list of same-sized images returned by ``stage``."""
        return self.infer(np.stack(staged))

    def warm_up(self, shapes: Iterable[tuple[int, int, int]], tune: bool = True) -> None:
        """Run one batch of each ``(n, height, width)`` so that lazy initialisation, memory pools
        and per-shape kernel tuning happen before the first request, not during it; ``tune=False``:
        skip the per-shape tuning where the engine can (rare shapes, short start-up)."""
        for n, height, width in shapes:
            self.infer(np.zeros((n, height, width, 3), np.uint8))

    def describe(self) -> dict:
        """Extra facts for /v1/models (engine versions, engine-specific settings)."""
        return {}

    def memory_bytes(self) -> int:
        """What the loaded weights hold on the device (a load's memory check); default: the
        model file's size."""
        path = Path(self.model) if self.model else None
        return path.stat().st_size if path is not None and path.is_file() else 0

    def close(self) -> None:
        """Drop the loaded model (the model was unloaded); default: nothing to do beyond
        forgetting the references."""
