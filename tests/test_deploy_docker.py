"""Dockerfile and .dockerignore: hadolint, then the rules issue 6 sets that a linter does not know."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import zipfile

import pytest
from deploy_support import ROOT, parse_dockerfile, require_tool, service_get_paths

FINAL_STAGES = ("cpu", "gpu")
ARGS, STAGES = parse_dockerfile()


def instructions(stage: str, instr: str) -> list[str]:
    return [rest for i, rest in STAGES[stage] if i == instr]


def base(stage: str) -> str:
    return STAGES[stage][0][1]


def env(stage: str) -> dict[str, str]:
    """The stage's ENV variables (KEY=VALUE form)."""
    return dict(pair.split("=", 1) for rest in instructions(stage, "ENV") for pair in shlex.split(rest))


def venv_stage(stage: str) -> str:
    """The stage the final image copies its virtualenv from."""
    (copy,) = [c for c in instructions(stage, "COPY") if "/opt/venv" in c]
    return re.match(r"--from=(\S+)", copy).group(1)


def test_hadolint_passes():
    hadolint = require_tool("hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_targets_gpu_by_default_and_cpu():
    assert set(FINAL_STAGES) <= set(STAGES)
    assert list(STAGES)[-1] == "gpu", "gpu must be the last stage: the default `docker build` target"
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", base("gpu")), base("gpu")
    assert "cuda" not in base("cpu")


def test_gpu_image_has_torch_tensorrt_and_onnxruntime_from_pip():
    installs = " ".join(instructions(venv_stage("gpu"), "RUN"))
    for package in ("torch==", "tensorrt-cu13==", "onnxruntime-gpu"):
        assert package in installs, f"{package} is not pip-installed for the GPU image"
    cuda_major = ARGS["CUDA_IMAGE"].split(":")[1].split(".")[0]
    assert "tensorrt-cu" + cuda_major in installs, "TensorRT's CUDA major differs from the base image's"


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_final_stage_is_runtime_only(stage):
    """The venv is built in a stage with the same base (so its interpreter path holds) and copied."""
    assert base(venv_stage(stage)) == base(stage)
    runs = " ".join(instructions(stage, "RUN"))
    assert "pip install" not in runs and not re.search(r"\b(gcc|g\+\+|build-essential|-dev)\b", runs)


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_final_stage_serves_as_non_root_with_health_check(stage):
    from service.settings import Settings

    (user,) = instructions(stage, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot needs it)"
    port = Settings.model_fields["port"].default
    assert instructions(stage, "EXPOSE") == [f"{port} {Settings.model_fields['grpc_port'].default}"]
    (healthcheck,) = instructions(stage, "HEALTHCHECK")
    cmd = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert "/healthz" in cmd[-1] and "/healthz" in service_get_paths() and str(port) in cmd[-1]
    (entrypoint,) = instructions(stage, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "service"], "exec form, so SIGTERM reaches the server"


@pytest.mark.parametrize("stage", FINAL_STAGES)
def test_final_stage_exposes_the_http_and_grpc_ports_it_listens_on(stage):
    """EXPOSE lists exactly the ports the image's DEEPLAB_ variables (or the settings' defaults) make
    the server listen on: HTTP, then gRPC."""
    from service.settings import Settings

    variables = env(stage)
    listens = [
        int(variables.get(f"DEEPLAB_{field.upper()}", Settings.model_fields[field].default))
        for field in ("port", "grpc_port")
    ]
    assert all(listens) and len(set(listens)) == 2, listens
    assert [int(p) for (expose,) in [instructions(stage, "EXPOSE")] for p in expose.split()] == listens
    assert variables["DEEPLAB_HOST"] == "0.0.0.0", "the ports must be reachable from outside the container"


def test_health_check_command_runs():
    """The inline Python in HEALTHCHECK is valid and fails (non-zero) when nothing answers."""
    (healthcheck,) = instructions("gpu", "HEALTHCHECK")
    _, _, code = json.loads(healthcheck.split(" CMD ", 1)[1])
    proc = subprocess.run([sys.executable, "-c", code], env={"DEEPLAB_PORT": "9"}, capture_output=True, text=True)
    assert proc.returncode == 1 and "URLError" in proc.stderr, proc.stderr


def test_wheel_stage_builds_from_the_sources():
    copies = instructions("wheel", "COPY")
    for src in ("model", "service", "export"):
        assert any(c.split()[0] == src for c in copies), f"{src}/ is not copied into the wheel build"
    assert any("pip wheel" in r for r in instructions("wheel", "RUN"))


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append((negate, re.compile(regex)))
    return patterns


def docker_ignores(path: str, patterns) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in patterns:
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_sends_sources_and_nothing_else():
    patterns = dockerignore_patterns()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = tracked.stdout.split()
    needed = [
        f for f in files if f.split("/")[0] in {"model", "service", "export"} or f in {"pyproject.toml", "README.md"}
    ]
    assert needed and not [f for f in needed if docker_ignores(f, patterns)]
    for unwanted in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/test_deploy_docker.py",
        "deploy/README.md",
        "model/__pycache__/configs.cpython-311.pyc",
        "export/out/model.engine",
    ):
        assert docker_ignores(unwanted, patterns), f"{unwanted} would be sent to the build"


def test_wheel_built_from_the_docker_context_carries_the_builtin_model(tmp_path):
    """Build the "wheel" stage's wheel from exactly the files Docker would send, and look inside.

    Until the trained weights are committed, a stand-in file at model/weights/ proves the path:
    whatever lies there is package data that reaches the image."""
    from model.checkpoint import DEFAULT_WEIGHTS

    patterns = dockerignore_patterns()
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    context = tmp_path / "context"
    for rel in listed:
        if (ROOT / rel).is_file() and not docker_ignores(rel, patterns):
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            (context / rel).write_bytes((ROOT / rel).read_bytes())
    weights = DEFAULT_WEIGHTS.relative_to(ROOT).as_posix()
    assert not docker_ignores(weights, patterns)
    if not (context / weights).exists():
        (context / weights).parent.mkdir(parents=True, exist_ok=True)
        (context / weights).write_bytes(b"stand-in for the built-in weights")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheels"), str(context)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (weights, "model/zoo/model_zoo.json", "service/__main__.py", "export/build_engine.py", "service/web/static/index.html"):
        assert needed in names, f"{needed} is not in the image's wheel"
