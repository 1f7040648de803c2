"""Export a DeepLabV3+ model to ONNX for ONNX Runtime and TensorRT, then check the result.

    python -m export.onnx_export [--model NAME|PATH] --out model.onnx [--batch dynamic|N]
                          [--shape HxW | --dynamic-shape] [--opset N] [--with-argmax]

Exporter: the dynamo-based `torch.onnx.export(..., dynamo=True)`. For this network it gives the
cleaner graph for TensorRT: BatchNorm folded into the convolutions, one Shape -> Concat -> Resize
per upsampling instead of the TorchScript exporter's Shape/Gather/Unsqueeze/Cast/Slice chains
(R-18: 91 nodes at a fixed size, 112 with dynamic size, against 168), and named symbolic output dims
(`batch x C x height x width`), where the TorchScript exporter leaves the output shape unknown for
the parser to infer. It is also the exporter PyTorch maintains; the TorchScript one is deprecated.
It emits opset 18 and newer only, which TensorRT 10's ONNX parser reads.

`--with-argmax` ends the graph in ArgMax over classes cast to int32 ("labels"): N x H x W int32 is
11x less output traffic than CamVid's float logits (37x for ADE20K). int32, not uint8, because
TensorRT computes ArgMax as a TopK layer whose indices are int32, and it cannot cast int32 to uint8
(its uint8 conversions exist only from and to float/half); the server narrows to uint8 itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from model.cli import argument_parser

from .check import ExportCheckError, check_export, sample_batch
from .engines.dependencies import MissingDependency, require
from .engines.metadata import INPUT_NAME, LABELS, LOGITS, ExportMetadata, attach
from .engines.profile import hw_arg

MIN_OPSET = 18  # the dynamo exporter's oldest implementations; lower requests are silently raised
DEFAULT_OPSET = 18


class _Labels(nn.Module):
    """The network followed by argmax over classes, as int32 (see the module docstring)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).argmax(1).to(torch.int32)


def sample_hw(config) -> tuple[int, int]:
    """A representative network input: the slide crop, else a landscape image at the test scale."""
    if config.inference == "slide":
        return tuple(config.slide_crop)
    return min(config.test_scale), max(config.test_scale)


def check_shapes(batch: int | None, shape: tuple[int, int] | None, hw: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(batch, h, w) inputs for the self-check: the sample, plus a second batch size and, for a
    dynamic size, an odd-sized image, so a dynamic axis frozen during tracing cannot pass."""
    first = (batch or 2, *hw)
    if batch is not None and shape is not None:
        return [first]
    other_hw = hw if shape is not None else (hw[0] // 2 + 5, hw[1] // 2 + 3)
    return [first, (batch or (3 if shape is not None else 1), *other_hw)]


def export_onnx(
    net: nn.Module,
    out: str | Path,
    *,
    batch: int | None = None,
    shape: tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    with_argmax: bool = False,
    trace_hw: tuple[int, int] | None = None,
) -> ExportMetadata:
    """Write `net` to `out` (moving it to CPU fp32 eval in place: the exporter traces on CPU).
    `batch`/`shape` None make those axes dynamic; `trace_hw` is the example size used for tracing
    a dynamic-size graph (default: `sample_hw`)."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}: the dynamo exporter emits opset {MIN_OPSET} and newer only")
    net = net.to("cpu").float().eval()
    meta = ExportMetadata.from_model(net, LABELS if with_argmax else LOGITS)
    module = (_Labels(net) if with_argmax else net).eval()
    # Batch 2, not 1: torch.export specialises size-1 dimensions to constants.
    example = torch.zeros(batch or 2, 3, *(shape or trace_hw or sample_hw(net.config)))
    axes = {} if batch else {0: torch.export.Dim("batch", min=1)}
    if shape is None:
        axes |= {2: torch.export.Dim("height", min=16), 3: torch.export.Dim("width", min=16)}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecations inside torch.export itself
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[meta.output],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=(axes,),
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if got != opset:
        raise ValueError(f"asked for opset {opset}, the exporter produced {got}")
    attach(proto, meta)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(out))
    return meta


def _batch_arg(text: str) -> int | None:
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive integer, got {text!r}")
    return int(text)


def _opset_arg(text: str) -> int:
    """The lower bound only: the upper one is the installed `onnx`'s, checked once it is imported."""
    if not text.isdigit() or int(text) < MIN_OPSET:
        raise argparse.ArgumentTypeError(
            f"opset must be an integer >= {MIN_OPSET} (the dynamo exporter starts there), got {text!r}"
        )
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = argument_parser("python -m export.onnx_export", __doc__.split("\n\n")[0])
    p.add_argument("--model", help="config name or checkpoint path (default: the built-in default model)")
    p.add_argument("--out", required=True, type=Path, help="output .onnx file")
    p.add_argument("--batch", type=_batch_arg, default="dynamic", help="'dynamic' or a fixed batch size")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shape", type=hw_arg, help="fixed input size HEIGHTxWIDTH, e.g. 360x480")
    size.add_argument("--dynamic-shape", action="store_true", help="dynamic height and width (the default)")
    p.add_argument("--opset", type=_opset_arg, default=DEFAULT_OPSET, help="ONNX opset")
    p.add_argument("--with-argmax", action="store_true", help="end in int32 labels instead of float logits")
    p.add_argument(
        "--sample-shape",
        type=hw_arg,
        help="HxW for tracing and the self-check of a dynamic-size export (default: the config's test size)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.out.suffix != ".onnx":
        parser().error(f"--out must end in .onnx (the server picks its backend by extension), got {args.out}")
    if args.shape and args.sample_shape:
        parser().error("--sample-shape only applies to dynamic-size exports; --shape already fixes the size")
    try:
        require("ONNX export", "onnx", "onnxscript", "onnxruntime")
    except MissingDependency as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if args.opset > newest:
        parser().error(f"--opset {args.opset} is newer than the installed onnx supports ({newest})")
    from model import CheckpointError, load_model

    try:
        net = load_model(args.model)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    hw = args.shape or args.sample_shape or sample_hw(net.config)
    meta = export_onnx(
        net, args.out, batch=args.batch, shape=args.shape, opset=args.opset, with_argmax=args.with_argmax, trace_hw=hw
    )
    print(f"exported {meta.config} -> {args.out} ({meta.output}, opset {args.opset}) in {time.perf_counter() - start:.1f}s")
    inputs = [sample_batch(net.config, n, (h, w), seed=i) for i, (n, h, w) in enumerate(check_shapes(args.batch, args.shape, hw))]
    try:
        for result in check_export(net, args.out, inputs):
            print(f"check: {result}")
    except ExportCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
