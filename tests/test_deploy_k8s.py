"""Kubernetes manifests: every overlay rendered, validated against the official API schemas offline
(kubernetes-validate ships them), and checked against the image, the service and each other."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_support import (
    K8S,
    MERGE_KEYS,
    OVERLAYS,
    check_settings,
    find,
    parse_dockerfile,
    promql_selectors,
    rendered,
    service_get_paths,
    service_metrics,
)

# Oldest Kubernetes release we support, and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "latest")
GPU_OVERLAYS = [o for o in OVERLAYS if o != "cpu"]
ADAPTER = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
CRDS = {"monitoring.coreos.com/v1"}
# Labels the Prometheus Operator puts on every series it scrapes through a ServiceMonitor.
OPERATOR_TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}


def objects(overlay: str) -> dict[str, dict]:
    docs = rendered(overlay)
    assert len({(d["kind"], d["metadata"]["name"]) for d in docs}) == len(docs)
    return {d["kind"]: d for d in docs if d["metadata"]["name"] == "deeplab-serve"} | {
        "Namespace": find(docs, "Namespace", "deeplab")
    }


def pod_spec(overlay: str) -> dict:
    return objects(overlay)["Deployment"]["spec"]["template"]["spec"]


def server(overlay: str) -> dict:
    (container,) = [c for c in pod_spec(overlay)["containers"] if c["name"] == "server"]
    return container


def settings(overlay: str) -> dict[str, str]:
    return objects(overlay)["ConfigMap"]["data"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_match_official_schemas(overlay, version):
    import kubernetes_validate

    version = kubernetes_validate.latest_version() if version == "latest" else version
    for doc in rendered(overlay):
        if doc["apiVersion"] in CRDS:
            continue  # no official schema; checked by test_service_monitor_scrapes_the_service
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


def canonical(value):
    """Order-insensitive form: lists with a strategic-merge key are sorted by it."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [canonical(v) for v in value]
        keys = [k for k in sorted(set(MERGE_KEYS.values())) if all(isinstance(i, dict) and k in i for i in items)]
        return sorted(items, key=lambda i: str(i[keys[0]])) if keys else items
    return value


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_matches_kubectl_kustomize(overlay):
    """The tests' renderer against the real kustomize, wherever kubectl is installed (not in CI)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=True
    ).stdout

    def key(doc):
        return doc["kind"], doc["metadata"]["name"]

    real = sorted((d for d in yaml.safe_load_all(out) if d), key=key)
    ours = sorted(rendered(overlay), key=key)
    assert [canonical(d) for d in ours] == [canonical(d) for d in real]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_holds_valid_service_settings(overlay, monkeypatch):
    check_settings(settings(overlay), monkeypatch)
    assert server(overlay)["envFrom"] == [{"configMapRef": {"name": objects(overlay)["ConfigMap"]["metadata"]["name"]}}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_placement(overlay):
    spec, resources = pod_spec(overlay), server(overlay)["resources"]
    if overlay in GPU_OVERLAYS:
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
        assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert settings(overlay)["DEEPLAB_DEVICE"].startswith("cuda")
    else:
        assert "nvidia" not in yaml.safe_dump(objects(overlay)["Deployment"])
        assert settings(overlay)["DEEPLAB_DEVICE"] == "cpu"
    image = server(overlay)["image"]
    assert image.endswith("-gpu" if overlay in GPU_OVERLAYS else "-cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay):
    for container in pod_spec(overlay).get("initContainers", []) + pod_spec(overlay)["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (container["name"], kind)


def named_port(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_http_and_grpc_ports_are_named_published_and_match_the_settings(overlay):
    """The server container declares its two listeners by name at the settings' defaults; the
    ConfigMap's DEEPLAB_PORT / DEEPLAB_GRPC_PORT (when set) are those ports; the Service publishes
    both under the same names and numbers, gRPC with appProtocol grpc."""
    from service.settings import Settings

    container, env = server(overlay), settings(overlay)
    fields = {"http": "port", "grpc": "grpc_port"}
    declared = {p["name"]: (p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert len(declared) == len(container["ports"])
    assert declared == {name: (Settings.model_fields[field].default, "TCP") for name, field in fields.items()}
    assert not [e for e in container.get("env", []) if e["name"].startswith("DEEPLAB_")], "settings live in the ConfigMap"
    for name, field in fields.items():
        value = env.get(f"DEEPLAB_{field.upper()}")
        assert value is None or int(value) == named_port(container, name), f"DEEPLAB_{field.upper()} != port {name}"
    published = {p["name"]: (p["port"], p["targetPort"], p["protocol"], p["appProtocol"]) for p in objects(overlay)["Service"]["spec"]["ports"]}
    assert published == {name: (declared[name][0], name, "TCP", name) for name in fields}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_drain_agree_with_the_service(overlay):
    from service.settings import Settings

    container, env = server(overlay), settings(overlay)
    port = int(env.get("DEEPLAB_PORT", Settings.model_fields["port"].default))
    probes = {name: container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {n: p["httpGet"]["path"] for n, p in probes.items()} == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    for probe in probes.values():
        assert probe["httpGet"]["path"] in service_get_paths()
        assert named_port(container, probe["httpGet"]["port"]) == port
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "too short for load + warm-up"
    # preStop delays SIGTERM; the server then drains for up to DEEPLAB_DRAIN_TIMEOUT_S and exits.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(env.get("DEEPLAB_DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default))
    grace = pod_spec(overlay)["terminationGracePeriodSeconds"]
    # + uvicorn's 5 s graceful close (service/server.py) and the model's shutdown
    assert int(command[1]) + drain + 10 <= grace <= int(command[1]) + drain + 30


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_security_context(overlay):
    _, stages = parse_dockerfile()
    image_uid = {rest.split(":")[0] for stage in ("cpu", "gpu") for i, rest in stages[stage] if i == "USER"}
    spec = pod_spec(overlay)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert {str(spec["securityContext"]["runAsUser"])} == image_uid
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert objects(overlay)["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    emptydirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    cache_dir = re.search(r"XDG_CACHE_HOME=(\S+)", (K8S.parent.parent / "Dockerfile").read_text()).group(1)
    for container in spec.get("initContainers", []) + spec["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}
    writable = {
        m["mountPath"] for m in server(overlay)["volumeMounts"] if m["name"] in emptydirs and not m.get("readOnly")
    }
    assert {"/tmp", cache_dir} <= writable


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_and_hpa_target_the_deployment(overlay):
    objs = objects(overlay)
    pod_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = objs["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for svc_port in service["spec"]["ports"]:
        assert named_port(server(overlay), svc_port["targetPort"]) == svc_port["port"]
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ref = objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", objs["Deployment"]["metadata"]["name"])
    assert "replicas" not in objs["Deployment"]["spec"], "the HPA owns the replica count"


def adapter_metric_names() -> dict[str, str]:
    """Custom-metric name the adapter serves -> the series it reads."""
    names = {}
    for rule in ADAPTER["rules"]["custom"]:
        ((series, _),) = promql_selectors(rule["seriesQuery"])
        assert re.search(rule["name"]["matches"], series)
        names[rule["name"]["as"]] = series
    return names


def test_adapter_rules_read_service_metrics_with_pod_labels():
    exposed = service_metrics()
    for rule in ADAPTER["rules"]["custom"]:
        ((series, labels),) = promql_selectors(rule["seriesQuery"])
        assert series in exposed, f"{series} is not a service metric"
        assert {"namespace", "pod"} <= labels
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        promql_selectors(rule["metricsQuery"])  # parses once the adapter's placeholders are filled


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_on_queue_depth_with_cpu_fallback(overlay):
    metrics = objects(overlay)["HorizontalPodAutoscaler"]["spec"]["metrics"]
    (custom,) = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert custom["metric"]["name"] in adapter_metric_names()
    target = float(custom["target"]["averageValue"])
    assert 0 < target < int(settings(overlay)["DEEPLAB_QUEUE_CAPACITY"]), "would only scale once requests get 429"
    (cpu,) = [m["resource"] for m in metrics if m["type"] == "Resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    assert "cpu" in server(overlay)["resources"]["requests"], "CPU utilisation needs a CPU request"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_the_service(overlay):
    objs = objects(overlay)
    monitor, service = objs["ServiceMonitor"], objs["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["path"] in service_get_paths()
    clashes = {label for labels in service_metrics().values() for label in labels} & OPERATOR_TARGET_LABELS
    if clashes:
        assert endpoint.get("honorLabels") is True, f"{clashes} would be renamed to exported_*"


def fetch_script(overlay: str) -> tuple[dict, dict]:
    (init,) = pod_spec(overlay)["initContainers"]
    return init, {e["name"]: e for e in init["env"]}


def test_user_model_reaches_the_pod():
    from export.engines.metadata import sidecar_path

    init, env = fetch_script("user-model")
    assert init["image"] == server("user-model")["image"]
    source = find(rendered("user-model"), "ConfigMap", env["MODEL_URLS"]["valueFrom"]["configMapKeyRef"]["name"])
    urls = source["data"][env["MODEL_URLS"]["valueFrom"]["configMapKeyRef"]["key"]].split()
    fetched = {Path(env["MODEL_DIR"]["value"]) / PurePosixPath(urlsplit(u).path).name for u in urls}
    model = Path(settings("user-model")["DEEPLAB_MODEL"])
    assert model in fetched
    if model.suffix in {".engine", ".plan"}:
        assert sidecar_path(model) in fetched, "a TensorRT engine needs its JSON sidecar"
    mounts = {m["mountPath"]: m for m in server("user-model")["volumeMounts"]}
    assert mounts[str(model.parent)].get("readOnly") is True
    (init_mount,) = [m for m in init["volumeMounts"] if m["mountPath"] == env["MODEL_DIR"]["value"]]
    assert init_mount["name"] == mounts[str(model.parent)]["name"]


def test_fetch_model_init_container_downloads(tmp_path):
    """Run the init container's script for real against a local HTTP server."""
    init, _ = fetch_script("user-model")
    served = tmp_path / "served"
    served.mkdir()
    (served / "deeplab.engine").write_bytes(b"\x00engine" * 1000)
    (served / "deeplab.engine.json").write_text('{"format": "x"}')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_port}"
        out = tmp_path / "models"
        out.mkdir()
        env = {"MODEL_DIR": str(out), "MODEL_URLS": f"{base}/deeplab.engine {base}/deeplab.engine.json?sig=1"}
        command = [sys.executable if init["command"][0] == "python" else init["command"][0], *init["command"][1:]]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in out.iterdir()) == ["deeplab.engine", "deeplab.engine.json"]
        assert (out / "deeplab.engine").read_bytes() == (served / "deeplab.engine").read_bytes()
        env["MODEL_URLS"] = f"{base}/missing.engine"
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "404" in proc.stderr, "a failed download must fail the pod start"
    finally:
        httpd.shutdown()


API_KEYS_SECRET = K8S / "api-keys-secret.example.yaml"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_auth_is_on_through_the_api_keys_secret(overlay):
    """DEEPLAB_API_KEYS_FILE is a file of the mounted Secret the example manifest creates; the Secret
    is not rendered (re-applying never resets real keys); probes and the scrape stay exempt."""
    from service.settings import Settings

    keys_file = PurePosixPath(settings(overlay)["DEEPLAB_API_KEYS_FILE"])
    (mount,) = [m for m in server(overlay)["volumeMounts"] if m["mountPath"] == str(keys_file.parent)]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod_spec(overlay)["volumes"] if v["name"] == mount["name"]]
    (secret,) = yaml.safe_load_all(API_KEYS_SECRET.read_text())
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"].get("optional") is not True, "without the Secret the pod must not start"
    (item,) = volume["secret"]["items"]
    assert item["path"] == keys_file.name and item["key"] in secret["stringData"]
    assert secret["metadata"]["namespace"] == objects(overlay)["Namespace"]["metadata"]["name"]
    assert "Secret" not in {d["kind"] for d in rendered(overlay)}
    exempt = settings(overlay).get("DEEPLAB_AUTH_EXEMPT_PATHS", ",".join(Settings.model_fields["auth_exempt_paths"].default))
    probes = [server(overlay)[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    (endpoint,) = objects(overlay)["ServiceMonitor"]["spec"]["endpoints"]
    assert set(probes + [endpoint["path"]]) <= set(exempt.split(","))


def test_api_keys_secret_example_is_valid_and_holds_no_usable_key(tmp_path):
    """The placeholder is a valid Secret whose file has no key: applied unchanged, the server
    refuses to start instead of serving with a key somebody published."""
    import kubernetes_validate

    from service.auth import KeyRing
    from service.settings import Settings

    (secret,) = yaml.safe_load_all(API_KEYS_SECRET.read_text())
    kubernetes_validate.validate(secret, kubernetes_validate.latest_version(), strict=True)
    assert secret["kind"] == "Secret" and "data" not in secret
    text = API_KEYS_SECRET.read_text()
    assert "kubectl -n deeplab create secret generic deeplab-serve-api-keys --from-file=api-keys=" in text
    placeholder = tmp_path / "api-keys"
    placeholder.write_text(secret["stringData"]["api-keys"])
    with pytest.raises(ValueError, match="holds no keys"):
        KeyRing.from_settings(Settings(api_keys_file=placeholder))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grafana_dashboard_ships_as_a_configmap_for_the_sidecar(overlay):
    """The dashboard compose provisions (deploy/grafana/dashboards), byte for byte, in a ConfigMap
    labelled for Grafana's dashboard sidecar; its queries are checked in test_deploy_compose."""
    dashboard = K8S.parent / "grafana" / "dashboards" / "deeplab-serve.json"
    (config_map,) = [
        d for d in rendered(overlay) if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert config_map["data"] == {dashboard.name: dashboard.read_text()}
    assert config_map["metadata"]["namespace"] == objects(overlay)["Namespace"]["metadata"]["name"]
    assert len(dashboard.read_bytes()) < 256 * 1024, "kubectl apply keeps a copy in an annotation of at most 256 KiB"
