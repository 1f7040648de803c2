"""export/build_engine.py: argument validation, profiles, sidecars, the no-TensorRT fallback and
the TensorRT version gate (against a stand-in `tensorrt` package that only has `__version__`).

The TensorRT build itself needs `tensorrt` 10 and a GPU; those tests skip here with that reason:
no TensorRT wheel is reachable from this project's machines, so they have never run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import randomize

from export.build_engine import main, resolve_profile
from export.engines.metadata import MetadataError, read_onnx, read_sidecar
from export.engines.profile import ShapeProfile, parse_hw
from export.engines.tensorrt_import import UnsupportedTensorRT, import_tensorrt
from export.tensorrt_build import onnx_input, trtexec_command
from model import DEFAULT_MODEL, build_model, get_config, save_checkpoint
from model.pipeline.buckets import InputPolicy

REPO = Path(__file__).resolve().parent.parent
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(
    not HAS_TENSORRT, reason="tensorrt is not installed (needs TensorRT 10 and a GPU): never run by this project"
)
CAMVID = get_config(DEFAULT_MODEL)


def tensorrt_stand_in(root: Path, version: str | None) -> Path:
    """A real importable `tensorrt` package holding only `__version__` (None: not even that), the
    one attribute the version gate reads. Legitimate here because TensorRT itself is absent."""
    (root / "tensorrt").mkdir(parents=True)
    (root / "tensorrt" / "__init__.py").write_text("" if version is None else f"__version__ = {version!r}\n")
    return root


@pytest.fixture
def fake_tensorrt(monkeypatch, tmp_path):
    """install(version): makes `import tensorrt` in this process find the stand-in."""
    had_tensorrt = "tensorrt" in sys.modules

    def install(version: str | None) -> None:
        monkeypatch.syspath_prepend(str(tensorrt_stand_in(tmp_path / "site", version)))
        monkeypatch.delitem(sys.modules, "tensorrt", raising=False)

    yield install
    if not had_tensorrt:
        sys.modules.pop("tensorrt", None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    net = build_model(CAMVID, with_auxiliary=False)
    net.load_state_dict(randomize(net.state_dict(), seed=0))
    return save_checkpoint(net, tmp_path_factory.mktemp("ckpt") / "r18.pth")


@pytest.fixture(scope="module")
def from_checkpoint(checkpoint, tmp_path_factory):
    """build_engine from a checkpoint: (exit code, stdout, stderr, engine path, timing cache path)."""
    work = tmp_path_factory.mktemp("engine")
    engine, cache = work / "r18.engine", work / "t.cache"
    argv = ["--model", str(checkpoint), "--out", str(engine), "--shape", "64x96", "--timing-cache", str(cache)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue(), engine, cache


@pytest.fixture(scope="module")
def labels_onnx(from_checkpoint) -> Path:
    *_, engine, _ = from_checkpoint
    assert engine.with_suffix(".onnx").is_file(), from_checkpoint
    return engine.with_suffix(".onnx")


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: the fallback path does not run")
def test_without_tensorrt_prints_trtexec_command_and_writes_sidecar(from_checkpoint, labels_onnx):
    """The documented fallback succeeded, so exit 0, saying plainly that no engine was built."""
    code, out, err, engine, cache = from_checkpoint
    assert code == 0, err
    assert f"{engine} was NOT built: the `tensorrt` Python package is not installed" in err
    assert "Traceback" not in err
    assert "onnx check: batch 2 at 64x96" in out
    assert out.strip().splitlines()[-1] == (
        f"trtexec --onnx={labels_onnx} --saveEngine={engine} --minShapes=input:1x3x64x96 "
        "--optShapes=input:8x3x64x96 --maxShapes=input:16x3x64x96 --fp16 --memPoolSize=workspace:4096M "
        f"--builderOptimizationLevel=3 --timingCacheFile={cache}"
    )
    assert not engine.exists()
    meta, build = read_sidecar(engine)
    assert meta == read_onnx(labels_onnx) and meta.output == "labels"
    assert ShapeProfile.from_json(build["profile"]) == ShapeProfile(1, 8, 16, (64, 96), (64, 96), (64, 96))
    assert build["precision"] == "fp16" and build["tensorrt_version"] is None
    assert build["onnx_sha256"] == hashlib.sha256(labels_onnx.read_bytes()).hexdigest()


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: the fallback path does not run")
def test_runs_as_a_script_from_any_directory(labels_onnx, tmp_path):
    """`python export/build_engine.py` must import the `onnx` package, not export/onnx.py."""
    script = REPO / "export" / "build_engine.py"
    argv = [sys.executable, str(script), "--model", str(labels_onnx), "--out", "m.plan", "--fp32"]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"trtexec --onnx={labels_onnx} --saveEngine=m.plan ")
    assert "--fp16" not in proc.stdout and (tmp_path / "m.plan.json").is_file()


@pytest.mark.parametrize("version", ["10.0.1", "10.16.1.11"])
def test_tensorrt_gate_accepts_10(fake_tensorrt, version):
    fake_tensorrt(version)
    assert import_tensorrt().__version__ == version


@pytest.mark.parametrize(
    "version, found",
    [("11.0.0", "11.0.0"), ("9.3.0.post12", "9.3.0.post12"), ("nightly", "nightly"), (None, "of unknown version")],
)
def test_tensorrt_gate_refuses_every_other_version(fake_tensorrt, version, found):
    fake_tensorrt(version)
    with pytest.raises(UnsupportedTensorRT) as exc:
        import_tensorrt()
    assert str(exc.value) == f"TensorRT {found} found; this code supports TensorRT 10.x only: pip install 'tensorrt>=10,<11'"


def test_build_engine_under_tensorrt_11_stops_in_one_line_before_any_work(labels_onnx, tmp_path):
    """TensorRT 11 removed `BuilderFlag.FP16`: refused up front, not a traceback mid-build."""
    site = tensorrt_stand_in(tmp_path / "site", "11.1.0")
    argv = [sys.executable, "-m", "export.build_engine", "--model", str(labels_onnx), "--out", "m.engine"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: TensorRT 11.1.0 found; this code supports TensorRT 10.x only: pip install 'tensorrt>=10,<11'\n"
    )
    assert proc.stdout == "" and not (tmp_path / "m.engine.json").exists()


def test_exported_onnx_is_fixed_size_labels_graph(labels_onnx):
    assert onnx_input(labels_onnx) == ("input", [None, 3, 64, 96])


def test_trtexec_command_for_a_size_range():
    profile = ShapeProfile(2, 4, 8, (360, 360), (360, 480), (480, 480))
    command = trtexec_command(
        "a b.onnx", "m.plan", profile, "input", fp16=False, workspace_gb=1.5, timing_cache=None, opt_level=5
    )
    assert command == (
        "trtexec '--onnx=a b.onnx' --saveEngine=m.plan --minShapes=input:2x3x360x360 "
        "--optShapes=input:4x3x360x480 --maxShapes=input:8x3x480x480 --memPoolSize=workspace:1536M "
        "--builderOptimizationLevel=5"
    )


def _args(**overrides) -> argparse.Namespace:
    base = {"min_batch": None, "opt_batch": None, "max_batch": None, "shape": None, "min_shape": None, "opt_shape": None, "max_shape": None}
    return argparse.Namespace(**base | overrides)


@pytest.mark.parametrize("name", [DEFAULT_MODEL, "deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024"])
def test_default_profile_is_exactly_the_range_of_the_server_buckets(name):
    """The buckets come from the input policy preparing real images of every aspect ratio, from
    1:100 to 100:1 (the flattest land in the smallest bucket): the profile must span exactly them."""
    cfg = get_config(name)
    policy = InputPolicy.for_config(cfg)
    sizes = [(1000, k) for k in (10, 40, 120, 300, 500, 750, 1000)] + [(k, 1000) for k in (10, 40, 120, 300, 500, 750)]
    buckets = {policy.prepare(np.zeros((h, w, 3), np.uint8)).bucket for w, h in sizes}  # (width, height)
    profile = resolve_profile(_args(), cfg, [None, 3, None, None])
    assert (profile.min_batch, profile.opt_batch, profile.max_batch) == (1, 8, 16)
    assert profile.min_hw == (min(h for _, h in buckets), min(w for w, _ in buckets))
    assert profile.max_hw == (max(h for _, h in buckets), max(w for w, _ in buckets))
    assert profile.opt_hw == (min(cfg.test_scale), max(cfg.test_scale))  # the landscape box: most photos
    assert all(profile.accepts_hw((h, w)) for w, h in policy.all_buckets())


def test_profile_follows_static_dims_and_rejects_conflicts():
    assert resolve_profile(_args(), CAMVID, [4, 3, 64, 96]) == ShapeProfile(4, 4, 4, (64, 96), (64, 96), (64, 96))
    with pytest.raises(ValueError, match="height is fixed at 64"):
        resolve_profile(_args(shape=(360, 480)), CAMVID, [None, 3, 64, 96])
    with pytest.raises(ValueError, match="batch is fixed at 4"):
        resolve_profile(_args(max_batch=8), CAMVID, [4, 3, 64, 96])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_batch": 0}, "min batch must be >= 1"),
        ({"min_batch": 4, "opt_batch": 2}, "min <= opt <= max"),
        ({"min_hw": (64, 96), "opt_hw": (32, 96)}, "heights must satisfy"),
        ({"max_hw": (64, 90)}, "widths must satisfy"),
    ],
)
def test_profile_rejects_bad_ranges(kwargs, message):
    values = {"min_batch": 1, "opt_batch": 2, "max_batch": 4, "min_hw": (64, 96), "opt_hw": (64, 96), "max_hw": (64, 96)}
    with pytest.raises(ValueError, match=message):
        ShapeProfile(**values | kwargs)


def test_profile_json_round_trip_and_hw_parsing():
    profile = ShapeProfile(1, 2, 3, (10, 20), (30, 40), (50, 60))
    assert ShapeProfile.from_json(profile.to_json()) == profile
    assert parse_hw(" 360X480 ") == (360, 480)
    for bad in ("360", "0x480", "axb", "360x480x3"):
        with pytest.raises(ValueError):
            parse_hw(bad)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "m.onnx"], "--out must end in .engine or .plan"),
        (["--out", "m.engine", "--shape", "64x96", "--min-shape", "64x96"], "either --shape or"),
        (["--out", "m.engine", "--min-shape", "64x96"], "go together"),
        (["--out", "m.engine", "--model", "missing.onnx"], "ONNX file missing.onnx not found"),
        (["--out", "m.engine", "--verify", "nope.jpg"], "--verify images not found: nope.jpg"),
        (["--out", "m.engine", "--workspace-gb", "0"], "must be > 0"),
        (["--out", "m.engine", "--min-batch", "x"], "expected a number"),
        (["--out", "m.engine", "--opt-level", "7"], "invalid choice"),
        (["--out", "m.engine", "--shape", "64by96"], "expected HEIGHTxWIDTH"),
        (["--out", "m.engine", "--fp16", "--fp32"], "not allowed with argument"),
    ],
)
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_profile_conflicting_with_onnx_is_a_clear_error(labels_onnx, tmp_path, capsys):
    assert main(["--model", str(labels_onnx), "--out", str(tmp_path / "m.engine"), "--shape", "360x480"]) == 2
    assert "the ONNX graph's height is fixed at 64" in capsys.readouterr().err
    assert main(["--model", str(labels_onnx), "--out", str(tmp_path / "m.engine"), "--min-batch", "9"]) == 2
    assert "min <= opt <= max, got 9/8/16" in capsys.readouterr().err
    assert not (tmp_path / "m.engine.json").exists()


def test_sidecar_missing_is_a_clear_error(tmp_path):
    with pytest.raises(MetadataError, match="r18.engine.json not found"):
        read_sidecar(tmp_path / "r18.engine")


@needs_tensorrt
def test_engine_builds_and_agrees_with_onnxruntime(labels_onnx, camvid_dir, tmp_path):
    images = sorted((camvid_dir / "images" / "val").glob("*.jpg"))[:3]
    engine = tmp_path / "r18.engine"
    argv = ["--model", str(labels_onnx), "--out", str(engine), "--max-batch", "2", "--timing-cache", str(tmp_path / "t")]
    assert main([*argv, "--verify", *map(str, images)]) == 0  # 3 images through a max-batch-2 engine: split
    _, build = read_sidecar(engine)
    assert build["tensorrt_version"].startswith("10.") and (tmp_path / "t").stat().st_size > 0
