"""Every command line, run as a user runs it (a subprocess): `--help` shows defaults and choices,
`--version` prints the installed package's version, and a missing optional package is one line
naming what to install, with exit code 2 and no traceback.

A package is made missing by a directory first on PYTHONPATH holding a package of that name whose
import raises ModuleNotFoundError, exactly what Python raises for an uninstalled one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from helpers import REPO

CLIS = {
    "model": ["(default: list)", "{list}"],
    "model.pipeline.predict": ["(default: fp32)", "{fp32,fp16,bf16}"],
    "model.training.train": ["(default: 0.01)", "{bf16,fp16,none}"],
    "model.training.evaluate": ["(default: val)", "{fp32,fp16,bf16}"],
    "export.onnx_export": ["(default: dynamic)", "(default: 18)"],
    "export.build_engine": ["(default: 3)", "{0,1,2,3,4,5}", "(default: 4.0)"],
}
ONNX_EXTRA = "pip install 'deeplab-serve[onnx]'"


def run(args: list[str], cwd: Path, missing: list[str] = ()) -> subprocess.CompletedProcess:
    """`python ARGS` in `cwd` with the packages in `missing` made unimportable."""
    env = os.environ | {"COLUMNS": "250"}  # no wrapping inside "(default: ...)"
    if missing:
        blocked = cwd / "blocked"
        for name in missing:
            (blocked / name).mkdir(parents=True)
            (blocked / name / "__init__.py").write_text(
                f"raise ModuleNotFoundError({f'No module named {name!r}'!r}, name={name!r})\n"
            )
        env["PYTHONPATH"] = os.pathsep.join([str(blocked), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module", CLIS)
def test_help_shows_defaults_and_choices(module, tmp_path):
    proc = run(["-m", module, "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for shown in CLIS[module]:
        assert shown in proc.stdout, f"{module} --help lacks {shown!r}"


@pytest.mark.parametrize("module", CLIS)
def test_version_prints_the_package_version(module, tmp_path):
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version("deeplab-serve") == expected  # the installed metadata is the checkout's
    proc = run(["-m", module, "--version"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"deeplab-serve {expected}\n"


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_onnx_export_without_onnx_says_what_to_install(tmp_path):
    """The README's export command on a serving-only install (no `[onnx]` extra)."""
    proc = run(["-m", "export.onnx_export", "--out", "model.onnx", "--with-argmax"], tmp_path, missing=["onnx"])
    # onnxscript is installed but imports onnx, so it is unusable too and is named
    assert one_line_error(proc) == f"error: ONNX export needs the 'onnx' and 'onnxscript' packages: {ONNX_EXTRA}"
    assert not (tmp_path / "model.onnx").exists()


def test_onnx_export_without_onnxruntime_says_what_to_install(tmp_path):
    proc = run(["-m", "export.onnx_export", "--out", "model.onnx"], tmp_path, missing=["onnxruntime"])
    assert one_line_error(proc) == f"error: ONNX export needs the 'onnxruntime' package: {ONNX_EXTRA}"


def test_build_engine_without_onnx_says_what_to_install(tmp_path):
    proc = run(["-m", "export.build_engine", "--out", "m.engine"], tmp_path, missing=["onnx"])
    assert one_line_error(proc) == (
        f"error: building a TensorRT engine needs the 'onnx' and 'onnxscript' packages: {ONNX_EXTRA}"
    )
    assert not (tmp_path / "m.engine.json").exists()


def test_build_engine_verify_without_onnxruntime_says_what_to_install(tmp_path):
    """An existing .onnx needs only `onnx`; `--verify` also needs ONNX Runtime as its reference."""
    (tmp_path / "m.onnx").write_bytes(b"not read: the check comes first")
    (tmp_path / "a.jpg").write_bytes(b"not read either")
    argv = ["-m", "export.build_engine", "--model", "m.onnx", "--out", "m.engine", "--verify", "a.jpg"]
    proc = run(argv, tmp_path, missing=["onnxruntime"])
    assert one_line_error(proc) == f"error: building a TensorRT engine needs the 'onnxruntime' package: {ONNX_EXTRA}"


def test_onnxruntime_session_without_onnxruntime_raises_missing_dependency(tmp_path):
    """What the service's ONNX Runtime backend calls at load: a typed error with the one line."""
    code = (
        "from export.engines.ort_session import create_session\n"
        "try:\n    create_session('m.onnx')\n"
        "except ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    )
    proc = run(["-c", code], tmp_path, missing=["onnxruntime"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"MissingDependency running an ONNX graph needs the 'onnxruntime' package: {ONNX_EXTRA}\n"
