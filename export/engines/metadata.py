"""What a deployed model file must carry so a server can use it without the PyTorch checkpoint.

An ONNX file or TensorRT engine is only weights and a graph: the server still needs the config
(test pipeline), class names and palette (PNG/JSON responses), the normalisation the graph expects
and whether the graph ends in logits or labels. `ExportMetadata` is that record, stored as ONNX
`metadata_props` (string key/value pairs, values JSON) and, for engines, which have no metadata
slot, in a JSON sidecar next to the engine (`sidecar_path`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "deeplab-serve/export/1"
INPUT_NAME = "input"
LOGITS = "logits"
LABELS = "labels"


class MetadataError(ValueError):
    """A model file lacks our metadata or carries a version we cannot read."""


@dataclass(frozen=True)
class ExportMetadata:
    """The graph's contract: input `input` float32 NCHW RGB, (pixel - mean) / std on 0..255.

    `output` is "logits" (float32 N x C x H x W) or "labels" (int32 N x H x W, argmax in-graph).
    """

    config: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str
    input_layout: str = "NCHW float32 RGB, (x - mean) / std, x in 0..255"
    provenance: dict = field(default_factory=dict)

    def model_config(self):
        """The `model.ModelConfig` to serve with: the named config, with this file's classes,
        palette and normalisation, which describe these weights and win over the table's."""
        import dataclasses

        from model import get_config

        cfg = get_config(self.config)
        dataset = dataclasses.replace(cfg.dataset, classes=self.classes, palette=self.palette)
        return dataclasses.replace(cfg, dataset=dataset, mean=self.mean, std=self.std)

    @classmethod
    def from_model(cls, net, output: str) -> ExportMetadata:
        """From a loaded `DeepLabV3Plus`; `net.meta` (weights provenance) travels along verbatim."""
        if output not in (LOGITS, LABELS):
            raise ValueError(f"output must be {LOGITS!r} or {LABELS!r}, not {output!r}")
        cfg = net.config
        return cls(
            config=cfg.name,
            classes=tuple(cfg.dataset.classes),
            palette=tuple(tuple(int(c) for c in p) for p in cfg.dataset.palette),
            mean=tuple(float(v) for v in cfg.mean),
            std=tuple(float(v) for v in cfg.std),
            output=output,
            provenance=json.loads(json.dumps(net.meta, default=str)),
        )

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> ExportMetadata:
        if data.get("format") != FORMAT:
            raise MetadataError(f"metadata format {data.get('format')!r} is not {FORMAT!r}")
        return cls(
            config=data["config"],
            classes=tuple(data["classes"]),
            palette=tuple(tuple(p) for p in data["palette"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            output=data["output"],
            input_layout=data["input_layout"],
            provenance=data.get("provenance") or {},
        )

    def to_props(self) -> dict[str, str]:
        """ONNX `metadata_props`: one key per field so tools like Netron show them readably."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.to_json().items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ExportMetadata:
        if "format" not in props:
            raise MetadataError("no deeplab-serve metadata in this ONNX file (was it exported by export.onnx_export?)")
        strings = {"format", "config", "output", "input_layout"}
        return cls.from_json({k: v if k in strings else json.loads(v) for k, v in props.items() if k in _FIELDS})


_FIELDS = {"format", *ExportMetadata.__dataclass_fields__}


def attach(model_proto, meta: ExportMetadata) -> None:
    """Replace any previous metadata_props of ours on an in-memory `onnx.ModelProto`."""
    keep = [p for p in model_proto.metadata_props if p.key not in _FIELDS]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    for key, value in meta.to_props().items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_onnx(path: str | Path) -> ExportMetadata:
    """Metadata of an ONNX file, read without loading its weights (`onnx` is imported here only:
    the TensorRT backend reads sidecars and need not have it)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return ExportMetadata.from_props({p.key: p.value for p in proto.metadata_props})


def sidecar_path(engine_path: str | Path) -> Path:
    """`model.engine` -> `model.engine.json`: the suffix keeps `.engine`/`.plan` recognisable."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path: str | Path, meta: ExportMetadata, **build: object) -> Path:
    """Metadata plus build facts (profile, precision, TensorRT version) beside the engine."""
    path = sidecar_path(engine_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metadata": meta.to_json(), **build}, indent=2) + "\n")
    return path


def read_sidecar(engine_path: str | Path) -> tuple[ExportMetadata, dict]:
    """(metadata, build facts); a clear error when the sidecar is missing or foreign."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise MetadataError(f"{path} not found: engines need the JSON sidecar written by export/build_engine.py")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "metadata" not in data:
        raise MetadataError(f"{path} is not a deeplab-serve engine sidecar")
    build = {k: v for k, v in data.items() if k != "metadata"}
    return ExportMetadata.from_json(data["metadata"]), build
