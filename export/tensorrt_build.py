"""Build a TensorRT engine from our ONNX graph with the TensorRT 10 Python API, or say how to.

Everything that touches `tensorrt` is in `build_serialized`; the rest (the ONNX input's static
dims, the equivalent `trtexec` command for machines without the Python bindings) runs anywhere,
so it is what the CPU test suite covers. Written against the documented TensorRT 10 API: named
tensors, `create_network(0)` (explicit batch is the only mode in 10.x), memory pools, one
optimization profile, builder optimization level and a persistent timing cache. `build_serialized`
has never been executed (no TensorRT wheel is reachable from this project's machines or CI);
TensorRT 11 is refused (`export.engines.tensorrt_import`): it removed `BuilderFlag.FP16`.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .engines.profile import ShapeProfile
from .engines.tensorrt_import import import_tensorrt


class EngineBuildError(RuntimeError):
    """TensorRT rejected the ONNX graph or failed to build."""


def onnx_input(onnx_path: str | Path) -> tuple[str, list[int | None]]:
    """(name, dims) of the graph's single input; None marks a dynamic dim."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path} has {len(inputs)} inputs; expected one image batch")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ValueError(f"{onnx_path}: input {inputs[0].name} is {len(dims)}-D, expected N x 3 x H x W")
    return inputs[0].name, dims


def check_profile_fits(profile: ShapeProfile, dims: list[int | None]) -> None:
    """The profile may only vary the graph's dynamic dims; static ones must be matched exactly."""
    for axis, label in ((0, "batch"), (2, "height"), (3, "width")):
        if dims[axis] is None:
            continue
        values = {shape[axis] for shape in profile.shapes()}
        if values != {dims[axis]}:
            raise ValueError(
                f"the ONNX graph's {label} is fixed at {dims[axis]} but the profile asks for "
                f"{'/'.join(str(s[axis]) for s in profile.shapes())} (min/opt/max)"
            )


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    profile: ShapeProfile,
    input_name: str,
    *,
    fp16: bool,
    workspace_gb: float,
    timing_cache: str | Path | None,
    opt_level: int,
) -> str:
    """The TensorRT 10 `trtexec` line that builds the same engine as `build_serialized` (11's
    trtexec dropped `--fp16` with weak typing)."""
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    for flag, shape in zip(("min", "opt", "max"), profile.shapes()):
        args.append(f"--{flag}Shapes={input_name}:{'x'.join(map(str, shape))}")
    if fp16:
        args.append("--fp16")
    args += [f"--memPoolSize=workspace:{round(workspace_gb * 1024)}M", f"--builderOptimizationLevel={opt_level}"]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def build_serialized(
    onnx_path: str | Path,
    profile: ShapeProfile,
    *,
    fp16: bool,
    workspace_gb: float,
    timing_cache: str | Path | None,
    opt_level: int,
) -> tuple[bytes, str]:
    """(serialized engine, TensorRT version). The timing cache file is read if present and
    rewritten with what this build measured, so rebuilds on the same GPU skip kernel timing."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = opt_level
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)

    tensor = network.get_input(0)
    if any(d == -1 for d in tensor.shape):
        shapes = builder.create_optimization_profile()
        shapes.set_shape(tensor.name, *profile.shapes())
        config.add_optimization_profile(shapes)

    cache_file = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file and cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT could not build the engine; its log above says why")
    if cache_file:
        cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized), trt.__version__
