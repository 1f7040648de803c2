"""Helpers for the deployment tests: YAML loading, a kustomize renderer, PromQL and service facts.

No Docker engine, cluster or kustomize binary is assumed, so `render_kustomization` renders the
overlays itself. It implements only the kustomization fields deploy/k8s uses (and refuses any
other), with kustomize's semantics for them; test_deploy_k8s compares it with `kubectl kustomize`
wherever kubectl is installed.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())


def require_tool(name: str) -> str:
    """Path of a validation tool; CI installs them all (see deploy/README.md), so there it must exist."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# ---- Dockerfile ----------------------------------------------------------------------------------


def parse_dockerfile() -> tuple[dict[str, str], dict[str, list[tuple[str, str]]]]:
    """(global ARG defaults, stage name -> [(INSTRUCTION, arguments)]) with FROM as first entry."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            parts = re.split(r"\s+as\s+", rest, flags=re.IGNORECASE)
            image, name = parts[0], parts[1]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            current = stages.setdefault(name, [("FROM", image)])
        elif current is None:
            if instr == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key] = value
        else:
            current.append((instr, rest))
    return args, stages


# ---- kustomize ------------------------------------------------------------------------------------

SUPPORTED = {"apiVersion", "kind", "resources", "configMapGenerator", "namespace", "patches", "images", "replacements"}
CLUSTER_SCOPED = {"Namespace"}
# Strategic-merge keys of the list fields our patches touch (from the Kubernetes API's patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def render_kustomization(directory: Path) -> list[dict]:
    """The objects `kustomize build DIRECTORY` outputs (same content; list order aside)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kust) - SUPPORTED
    if unsupported:
        raise NotImplementedError(f"{directory}: kustomization fields {sorted(unsupported)}")
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = directory / res
        docs += render_kustomization(path) if path.is_dir() else load_docs(path)
    docs += [generated_config_map(directory, generator) for generator in kust.get("configMapGenerator", [])]
    for patch in kust.get("patches", []):
        if set(patch) != {"path"}:
            raise NotImplementedError(f"{directory}: only strategic-merge patch files are supported")
        for doc in load_docs(directory / patch["path"]):
            strategic_merge(find(docs, doc["kind"], doc["metadata"]["name"]), doc)
    if "namespace" in kust:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kust["namespace"]
    for image in kust.get("images", []):
        for container in all_containers(docs):
            set_image(container, image)
    for rep in kust.get("replacements", []):
        src = rep["source"]
        value = get_field(find(docs, src["kind"], src["name"]), src["fieldPath"])
        for target in rep["targets"]:
            for path in target["fieldPaths"]:
                set_field(find(docs, target["select"]["kind"], target["select"]["name"]), path, value)
    return docs


def generated_config_map(directory: Path, generator: dict) -> dict:
    """A configMapGenerator entry of whole files (key = file name), without a name hash."""
    options = generator.get("options", {})
    if set(generator) - {"name", "files", "options"} or set(options) - {"labels", "disableNameSuffixHash"}:
        raise NotImplementedError(f"{directory}: configMapGenerator fields {sorted(generator)}, options {sorted(options)}")
    if not options.get("disableNameSuffixHash") or any("=" in f for f in generator["files"]):
        raise NotImplementedError(f"{directory}: only hash-less generators of plain file paths are supported")
    metadata = {"name": generator["name"], **({"labels": options["labels"]} if "labels" in options else {})}
    data = {Path(f).name: (directory / f).read_text() for f in generator["files"]}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def strategic_merge(base: dict, patch: dict) -> None:
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(base.get(key), list):
            merge_key = MERGE_KEYS[key]
            for item in value:
                same = [b for b in base[key] if b.get(merge_key) == item.get(merge_key)]
                if same:
                    strategic_merge(same[0], item)
                else:
                    base[key].append(copy.deepcopy(item))
        else:
            base[key] = copy.deepcopy(value)


def all_containers(docs: list[dict]) -> list[dict]:
    specs = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in {"Deployment", "Job"}]
    return [c for s in specs for c in s.get("initContainers", []) + s["containers"]]


def set_image(container: dict, image: dict) -> None:
    name, sep, tag = container["image"].rpartition(":")
    if not sep or "/" in tag:
        name, tag = container["image"], None
    if name == image["name"]:
        tag = image.get("newTag", tag)
        container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")


def _path(field_path: str) -> list[str]:
    return re.findall(r"\[[^\]]*\]|[^.\[\]]+", field_path)


def _step(node, part: str):
    if part.startswith("["):
        key, value = part[1:-1].split("=", 1)
        return next(item for item in node if item.get(key) == value)
    return node[part]


def get_field(doc: dict, field_path: str):
    node = doc
    for part in _path(field_path):
        node = _step(node, part)
    return node


def set_field(doc: dict, field_path: str, value) -> None:
    *parents, last = _path(field_path)
    node = doc
    for part in parents:
        node = _step(node, part)
    node[last] = value


def rendered(overlay: str) -> list[dict]:
    return render_kustomization(K8S / "overlays" / overlay)


# ---- PromQL ---------------------------------------------------------------------------------------

# Grafana's and prometheus-adapter's template variables, replaced by something PromQL accepts.
TEMPLATE_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "<<.Series>>": "placeholder_series",
    "<<.LabelMatchers>>": 'namespace="x"',
    "<<.GroupBy>>": "pod",
}


def promql_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names the query matches or groups on) for each series selector."""
    import promql_parser

    for var, value in TEMPLATE_VARS.items():
        expr = expr.replace(var, value)
    found: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            found.append((node.name, labels))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return [(name, labels | grouping) for name, labels in found]


# ---- the service's side of the contract ----------------------------------------------------------


def settings_env_names() -> set[str]:
    from service.settings import Settings

    prefix = Settings.model_config["env_prefix"]
    return {prefix + name.upper() for name in Settings.model_fields}


def check_settings(env: dict[str, str], monkeypatch) -> None:
    """Every DEEPLAB_ variable is a Settings field, and Settings accepts the values."""
    from service.settings import Settings

    ours = {k: v for k, v in env.items() if k.startswith("DEEPLAB_")}
    unknown = set(ours) - settings_env_names()
    assert not unknown, f"not settings of service/settings.py: {sorted(unknown)}"
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in ours.items():
        if value is not None:
            monkeypatch.setenv(name, str(value))
    Settings()  # raises pydantic.ValidationError on a bad value


@functools.cache
def service_get_paths() -> set[str]:
    """Paths the service's app answers GET on (from its OpenAPI schema; nothing is started)."""
    from service.app import create_app
    from service.settings import Settings

    spec = create_app(Settings()).openapi()
    return {path for path, operations in spec["paths"].items() if "get" in operations}


@functools.cache
def service_metrics() -> dict[str, set[str]]:
    """Every series name the service's registry exposes on /metrics -> its label names.

    Labelled metrics show no series until a label value is used, so one child of each is created
    first (on a fresh ServiceMetrics; the values are irrelevant, the label names are what we read).
    The GPU series are taken from their collector's table: on a machine without a GPU it exports none.
    """
    from prometheus_client.metrics import MetricWrapperBase

    from service.gpu_metrics import SERIES as GPU_SERIES
    from service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    exposed = {s.name: set(s.labels) for family in metrics.registry.collect() for s in family.samples}
    return exposed | {name: set(labels) for name, (_, labels) in GPU_SERIES.items()}
