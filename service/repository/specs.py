"""What to serve: ``--model`` entries and the folders of ``--model-repository``, as ``ModelSpec``s.

A repository holds one folder per model, named after it::

    models/
      camvid/                     # served as "camvid"
        config.toml               # optional: see ModelFile
        1/model.pth               # numbered version folders: the latest_versions highest are served
        2/model.pth
      city/
        deeplabv3plus.onnx        # no version folders: the file itself is version 1

Each version folder (or the model folder) holds exactly one model file (a checkpoint, .onnx or
TensorRT engine), unless ``config.toml`` names a zoo config with ``model = "<config name>"``. The
folder is read again at every load, so files dropped in are picked up without a restart.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.configs import list_configs
from service.backends import BACKENDS
from service.errors import ModelLoadFailed, ModelNotFound
from service.settings import BackendChoice, PrecisionChoice, Settings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
CONFIG_FILE = "config.toml"
MODEL_SUFFIXES = tuple(sorted({ext for cls in BACKENDS.values() for ext in cls.extensions}))
#: the settings a model may set for itself; every other setting is the server's
PER_MODEL = (
    "backend", "precision", "device", "cuda_graphs", "tta", "test_scale", "max_batch_size", "max_queue_delay_ms",
    "queue_capacity", "queue_capacity_pixels", "request_timeout_s", "instances",
)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """One model version to load: ``source`` is a config name, a model file or None (built-in);
    ``name`` None = the served config's name, known once loaded."""

    source: str | None
    name: str | None = None
    version: str = "1"
    overrides: dict = field(default_factory=dict, compare=False)

    def settings(self, server: Settings) -> Settings:
        """The server's settings with this model's own values (validated like the server's)."""
        return Settings(**{**server.model_dump(), **self.overrides}) if self.overrides else server


class ModelFile(BaseModel):
    """``config.toml`` of a model folder; unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="zoo config name, or the model file's name when a folder holds several")
    latest_versions: int = Field(1, ge=1, description="how many of the highest-numbered version folders are served")
    backend: BackendChoice | None = None
    precision: PrecisionChoice | None = None
    device: str | None = None
    cuda_graphs: bool | None = None
    tta: bool | None = None
    test_scale: str | None = None
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    queue_capacity: int | None = None
    queue_capacity_pixels: int | None = None
    request_timeout_s: float | None = None
    instances: int | None = None

    def overrides(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if k in PER_MODEL and v is not None}


def parse_entry(entry: str) -> ModelSpec:
    """``NAME=PATH_OR_CONFIG`` or ``PATH_OR_CONFIG`` (served under its config's name)."""
    name, sep, source = entry.partition("=")
    if sep and re.match(NAME_PATTERN, name):
        return ModelSpec(source.strip() or None, name)
    return ModelSpec(entry.strip() or None)


def model_file(values: dict, name: str) -> ModelFile:
    """``values`` checked as a model's config, or ModelLoadFailed naming every problem."""
    try:
        return ModelFile(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ModelLoadFailed(f"{name}: bad model config: {problems}") from None


def read_config(folder: Path, extra: dict | None = None) -> ModelFile:
    """The folder's ``config.toml`` (absent = defaults), with ``extra`` (a load request's
    ``config`` parameter) on top."""
    path = folder / CONFIG_FILE
    try:
        values = tomllib.loads(path.read_text()) if path.is_file() else {}
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ModelLoadFailed(f"{path}: {exc}") from None
    return model_file({**values, **(extra or {})}, folder.name)


def _model_file(folder: Path, named: str | None) -> str:
    """The one model file in ``folder`` (or the one ``named``, which must stay inside it)."""
    if named is not None:
        path = (folder / named).resolve()
        if not path.is_relative_to(folder.resolve()) or not path.is_file():
            raise ModelLoadFailed(f"{folder}: no model file {named!r} in the folder")
        return str(path)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise ModelLoadFailed(
            f"{folder}: expected one model file ({', '.join(MODEL_SUFFIXES)}), found {found}; "
            f"name it with model = \"FILE\" in {CONFIG_FILE}"
        )
    return str(files[0])


def model_folder(root: Path, name: str) -> Path:
    """``root/name``, or ModelNotFound."""
    folder = root / name
    if not re.match(NAME_PATTERN, name) or not folder.is_dir():
        raise ModelNotFound(f"no model folder {name!r} in the model repository {root}")
    return folder


def read_model(root: Path, name: str, extra: dict | None = None) -> list[ModelSpec]:
    """The versions of ``root/name`` to serve, highest first."""
    folder = model_folder(root, name)
    config = read_config(folder, extra)
    overrides = config.overrides()
    if config.model is not None and config.model in {c.name for c in list_configs()}:
        return [ModelSpec(config.model, name, "1", overrides)]
    numbered = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
    if not numbered:
        return [ModelSpec(_model_file(folder, config.model), name, "1", overrides)]
    kept = numbered[: config.latest_versions]
    return [ModelSpec(_model_file(p, config.model), name, str(int(p.name)), overrides) for p in kept]


def repository_names(root: Path) -> list[str]:
    """The model folders of ``root``, sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and re.match(NAME_PATTERN, p.name))
