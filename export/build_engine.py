"""Build a TensorRT FP16 engine (plus its JSON sidecar) from a checkpoint, config name or ONNX file.

    python -m export.build_engine --model CHECKPOINT|ONNX|NAME --out model.engine [--fp16 | --fp32]
        [--min-batch 1 --opt-batch 8 --max-batch 16]
        [--shape HxW | --min-shape HxW --opt-shape HxW --max-shape HxW]
        [--workspace-gb G] [--timing-cache FILE] [--opt-level 0-5] [--verify IMAGES...]

A checkpoint or name is first exported to ONNX with the argmax folded in (`model.onnx` beside the
engine), so the engine returns int32 labels. Without a shape option the profile covers every bucket
the server pads images into for this config (`model.pipeline.buckets.InputPolicy`). Where
`tensorrt` is not installed, the sidecar is still written and the equivalent `trtexec` command
is printed (exit 0: a documented fallback, but no engine file), so the engine can be built on a
machine that only has TensorRT's command-line tools. `--verify` runs the engine and ONNX Runtime
on the given images (resized to the profile's opt size) and fails below 99.5% pixel agreement.

Only the ONNX side and the `trtexec` fallback have ever run here: the TensorRT build, `--verify`
and the engine runner are written to the TensorRT 10 Python API but have never been executed by
this project (no TensorRT wheel is reachable from its machines or CI).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from export.check import check_export, pixel_agreement, sample_batch
from export.engines.dependencies import MissingDependency, require
from export.engines.metadata import LABELS, ExportMetadata, read_onnx, write_sidecar
from export.engines.ort_session import create_session, labels_of
from export.engines.profile import ShapeProfile, hw_arg
from export.engines.tensorrt_import import TensorRTMissing, UnsupportedTensorRT, import_tensorrt
from export.engines.tensorrt_runtime import EngineRunner
from export.onnx_export import export_onnx
from export.tensorrt_build import (
    EngineBuildError,
    build_serialized,
    check_profile_fits,
    onnx_input,
    trtexec_command,
)
from model import CheckpointError, load_model
from model.cli import argument_parser
from model.pipeline.buckets import InputPolicy
from model.pipeline.decode import load_image
from model.pipeline.normalize import normalize
from model.pipeline.resize import resize_image

MIN_TRT_AGREEMENT = 0.995
DEFAULT_BATCHES = (1, 8, 16)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argument_parser("python -m export.build_engine", __doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint (.pth/.safetensors), .onnx file or config name (default: built-in)")
    p.add_argument("--out", required=True, type=Path, help="engine file, .engine or .plan")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="fp16", action="store_true", default=True, help="FP16 kernels")
    precision.add_argument(
        "--fp32", dest="fp16", action="store_false", default=argparse.SUPPRESS, help="FP32/TF32 kernels only"
    )
    for name, default in zip(("min", "opt", "max"), DEFAULT_BATCHES):
        p.add_argument(
            f"--{name}-batch",
            type=_positive(int),
            help=f"profile {name} batch size (default: the ONNX graph's fixed batch, else {default})",
        )
    p.add_argument("--shape", type=hw_arg, help="fixed input size HEIGHTxWIDTH")
    shape_defaults = {
        "min": "the smallest of the server's buckets",
        "opt": "the config's landscape test size",
        "max": "the largest of the server's buckets",
    }
    for name, default in shape_defaults.items():
        p.add_argument(f"--{name}-shape", type=hw_arg, help=f"profile {name} input size HxW (default: {default})")
    p.add_argument("--workspace-gb", type=_positive(float), default=4.0, help="builder workspace limit in GB")
    p.add_argument("--timing-cache", type=Path, help="timing cache file, read if present and updated")
    p.add_argument("--opt-level", type=int, choices=range(6), default=3, help="builder optimization level")
    p.add_argument("--verify", nargs="+", type=Path, metavar="IMAGE", help="images to compare against ONNX Runtime")
    return p


def validate(args: argparse.Namespace) -> None:
    """Fail fast, before any model loading, on inputs that cannot work."""
    fail = parser().error
    if args.out.suffix not in (".engine", ".plan"):
        fail(f"--out must end in .engine or .plan (the server picks its backend by extension), got {args.out}")
    ranged = [args.min_shape, args.opt_shape, args.max_shape]
    if args.shape and any(ranged):
        fail("use either --shape or --min-shape/--opt-shape/--max-shape, not both")
    if any(ranged) and not all(ranged):
        fail("--min-shape, --opt-shape and --max-shape go together")
    if args.model and args.model.endswith(".onnx") and not Path(args.model).is_file():
        fail(f"ONNX file {args.model} not found")
    missing = [str(p) for p in args.verify or () if not p.is_file()]
    if missing:
        fail(f"--verify images not found: {', '.join(missing)}")


def resolve_profile(args: argparse.Namespace, config, dims: list[int | None]) -> ShapeProfile:
    """CLI values, else the graph's static dims, else defaults: batch 1/8/16 and the range of the
    server's input buckets for this config (`ShapeProfile.covering`)."""
    batches = [args.min_batch, args.opt_batch, args.max_batch]
    if dims[0] is not None:
        batches = [b or dims[0] for b in batches]
    batches = [b or d for b, d in zip(batches, DEFAULT_BATCHES)]
    if args.shape:
        profile = ShapeProfile(*batches, *[args.shape] * 3)
    elif args.min_shape:
        profile = ShapeProfile(*batches, args.min_shape, args.opt_shape, args.max_shape)
    elif dims[2] is not None and dims[3] is not None:
        profile = ShapeProfile(*batches, *[(dims[2], dims[3])] * 3)
    else:
        profile = ShapeProfile.covering(InputPolicy.for_config(config), *batches)
    check_profile_fits(profile, dims)
    return profile


def prepare_onnx(args: argparse.Namespace) -> tuple[Path, ExportMetadata]:
    """The ONNX file to build from: the given one, or a fresh checked export with argmax."""
    if args.model and args.model.endswith(".onnx"):
        return Path(args.model), read_onnx(args.model)
    net = load_model(args.model)
    onnx_path = args.out.with_suffix(".onnx")
    meta = export_onnx(net, onnx_path, with_argmax=True, shape=args.shape)
    hw = args.shape or args.opt_shape or (min(net.config.test_scale), max(net.config.test_scale))
    for result in check_export(net, onnx_path, [sample_batch(net.config, 2, hw)]):
        print(f"onnx check: {result}")
    return onnx_path, meta


def verify(engine_path: Path, onnx_path: Path, images: list[Path], profile: ShapeProfile) -> float:
    """Pixel agreement of the engine's labels with ONNX Runtime's (fp32, CPU) on `images`."""
    runner = EngineRunner(engine_path)
    h, w = profile.opt_hw
    pixels = torch.from_numpy(np.stack([resize_image(load_image(p), (w, h)) for p in images]))
    x = normalize(pixels, runner.meta.model_config())
    session = create_session(onnx_path)
    reference = labels_of(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], runner.meta.output)
    out = runner.run(x.to(runner.device))
    engine = (out if runner.meta.output == LABELS else out.argmax(1)).to(torch.uint8).cpu().numpy()
    return pixel_agreement(reference, engine)


def _needed_packages(args: argparse.Namespace) -> list[str]:
    """`onnx` to read the graph; the exporter's and ONNX Runtime's packages to export and check
    one from a checkpoint; ONNX Runtime again as `--verify`'s reference."""
    if not (args.model and args.model.endswith(".onnx")):
        return ["onnx", "onnxscript", "onnxruntime"]
    return ["onnx", "onnxruntime"] if args.verify else ["onnx"]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    validate(args)
    try:
        require("building a TensorRT engine", *_needed_packages(args))
        import_tensorrt()
        have_tensorrt = True
    except TensorRTMissing:
        have_tensorrt = False
    except (MissingDependency, UnsupportedTensorRT) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        onnx_path, meta = prepare_onnx(args)
        input_name, dims = onnx_input(onnx_path)
        profile = resolve_profile(args, meta.model_config(), dims)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    build = {
        "fp16": args.fp16,
        "workspace_gb": args.workspace_gb,
        "timing_cache": args.timing_cache,
        "opt_level": args.opt_level,
    }
    facts = {
        "profile": profile.to_json(),
        "input": input_name,
        "precision": "fp16" if args.fp16 else "fp32",
        "builder_optimization_level": args.opt_level,
        "onnx": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
    }
    if not have_tensorrt:
        sidecar = write_sidecar(args.out, meta, **facts, tensorrt_version=None, built_with="trtexec")
        sys.stdout.flush()  # keep the notice between the check's lines and the command
        print(
            f"{args.out} was NOT built: the `tensorrt` Python package is not installed. Build it with "
            f"TensorRT 10's trtexec (command below); the server reads {sidecar}, already written, next to it.",
            file=sys.stderr,
        )
        print(trtexec_command(onnx_path, args.out, profile, input_name, **build), flush=True)
        if args.verify:
            print("--verify skipped: it runs the engine, which needs `tensorrt`", file=sys.stderr)
        return 0
    start = time.perf_counter()
    try:
        engine, version = build_serialized(onnx_path, profile, **build)
    except EngineBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(engine)
    built_at = datetime.now(UTC).isoformat(timespec="seconds")
    write_sidecar(args.out, meta, **facts, tensorrt_version=version, built_with="tensorrt-python", built_at=built_at)
    print(f"built {args.out} ({len(engine) / 1e6:.1f} MB, TensorRT {version}) in {time.perf_counter() - start:.0f}s")
    if args.verify:
        agreement = verify(args.out, onnx_path, args.verify, profile)
        print(f"verify: {len(args.verify)} images, pixel agreement with ONNX Runtime {100 * agreement:.3f}%")
        if agreement < MIN_TRT_AGREEMENT:
            print(f"error: agreement below {100 * MIN_TRT_AGREEMENT:.1f}%", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
