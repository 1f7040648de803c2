"""Does an exported graph compute what the PyTorch model computes? Checked right after export.

`onnx.checker` catches malformed graphs; running ONNX Runtime next to PyTorch on the same inputs
catches wrong ones (a mis-traced resize, a dynamic axis frozen to the sample size). Graphs that end
in argmax have no logits output, so the check exposes the ArgMax input as an extra output of an
in-memory copy: the file itself is not changed. `onnx` is imported on use, so the export CLIs can
report it missing in one line (`export.engines.dependencies`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.pipeline.normalize import normalize

from .engines.metadata import LABELS, read_onnx
from .engines.ort_session import create_session

MIN_AGREEMENT = 0.999


class ExportCheckError(RuntimeError):
    """The exported graph is malformed or disagrees with the PyTorch model."""


@dataclass(frozen=True)
class Agreement:
    shape: tuple[int, int, int, int]
    max_logit_diff: float
    pixel_agreement: float

    def __str__(self) -> str:
        n, _, h, w = self.shape
        return (
            f"batch {n} at {h}x{w}: max |logit diff| {self.max_logit_diff:.2e}, "
            f"pixel agreement {100 * self.pixel_agreement:.3f}%"
        )


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal labels; shapes must match exactly."""
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    return float((a == b).mean())


def sample_batch(config, batch: int, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Seeded random RGB images normalised like real ones, so inputs match the trained range."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, *hw, 3), generator=gen, dtype=torch.uint8)
    return normalize(pixels, config)


def _session_with_logits(path: Path):
    """A session on a copy of the graph whose outputs also include the logits feeding ArgMax."""
    import onnx

    proto = onnx.load(str(path))
    argmax = [n for n in proto.graph.node if n.op_type == "ArgMax"]
    if len(argmax) != 1:
        raise ExportCheckError(f"{path} says it outputs labels but has {len(argmax)} ArgMax nodes")
    proto.graph.output.append(onnx.helper.make_tensor_value_info(argmax[0].input[0], onnx.TensorProto.FLOAT, None))
    return create_session(proto.SerializeToString())


def compare(net: torch.nn.Module, onnx_path: str | Path, inputs: list[torch.Tensor]) -> list[Agreement]:
    """ONNX Runtime (CPU) vs PyTorch (on CPU, fp32) on each input batch."""
    onnx_path = Path(onnx_path)
    kind = read_onnx(onnx_path).output
    session = _session_with_logits(onnx_path) if kind == LABELS else create_session(onnx_path)
    net = net.to("cpu").float().eval()
    results = []
    for x in inputs:
        with torch.inference_mode():
            ref = net(x).numpy()
        outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        logits = outs[-1] if kind == LABELS else outs[0]
        labels = outs[0] if kind == LABELS else logits.argmax(1)
        results.append(
            Agreement(
                shape=tuple(x.shape),
                max_logit_diff=float(np.abs(ref - logits).max()),
                pixel_agreement=pixel_agreement(ref.argmax(1), labels),
            )
        )
    return results


def check_export(
    net: torch.nn.Module, onnx_path: str | Path, inputs: list[torch.Tensor], min_agreement: float = MIN_AGREEMENT
) -> list[Agreement]:
    """`onnx.checker`, then `compare`; raises `ExportCheckError` below `min_agreement` anywhere."""
    import onnx

    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportCheckError(f"onnx.checker rejected {onnx_path}: {exc}") from exc
    results = compare(net, onnx_path, inputs)
    bad = [r for r in results if r.pixel_agreement < min_agreement]
    if bad:
        raise ExportCheckError(
            f"{onnx_path} disagrees with the PyTorch model (need >= {100 * min_agreement:.1f}%): "
            + "; ".join(map(str, bad))
        )
    return results
