"""docker-compose.yml (+ the CPU override), Prometheus and Grafana configs, checked against each other
and against the service: compose-spec validation, promtool, PromQL parsing, settings and metric names."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from deploy_support import (
    ROOT,
    check_settings,
    parse_dockerfile,
    promql_selectors,
    require_tool,
    service_get_paths,
    service_metrics,
)

from service.gpu_metrics import SERIES as GPU_SERIES
from service.gpu_metrics import load_nvml

PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "deeplab-serve.json"
RESET = object()


class ComposeLoader(yaml.SafeLoader):
    """YAML loader that knows Compose's `!reset` merge tag."""


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


REQUIRED = re.compile(r"\$\{(\w+):\?([^}]*)\}")


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} interpolation, with every variable unset (the documented defaults);
    a required ${VAR:?message} becomes its own name, as if the user had set it so."""
    text = REQUIRED.sub(lambda m: m.group(1), text)
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


def load(name: str) -> dict:
    return yaml.load(interpolate((ROOT / name).read_text()), Loader=ComposeLoader)


def merge(base, override):
    """Compose's merge rules for what our override uses: mappings merge, !reset removes, rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            if value is RESET:
                out.pop(key, None)
            else:
                out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


VARIANTS = {
    "gpu": load("docker-compose.yml"),
    "cpu": merge(load("docker-compose.yml"), load("docker-compose.cpu.yml")),
}


def container_port(service: dict, name: str | None = None) -> int:
    """The container port published under ``name`` (long syntax), or the service's only port."""
    if name is None:
        (mapping,) = service["ports"]
        return int(str(mapping).split(":")[-1])
    (port,) = [p["target"] for p in service["ports"] if isinstance(p, dict) and p.get("name") == name]
    return int(port)


@pytest.mark.parametrize("variant", VARIANTS)
def test_compose_file_is_valid_compose_spec(variant):
    from compose_spec import PyCompose

    compose = VARIANTS[variant]
    PyCompose.from_yaml(yaml.safe_dump(compose)).validate()  # ValueError on any spec violation
    declared = set(compose.get("volumes", {}))
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"named volume {source} is not declared"
            elif source != "./models":  # the user's model folder, created on first `up`
                assert (ROOT / source).exists(), f"{source} does not exist"


def test_gpu_reservation_and_cpu_override():
    (device,) = VARIANTS["gpu"]["services"]["deeplab"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    cpu = VARIANTS["cpu"]["services"]["deeplab"]
    assert "deploy" not in cpu, "the CPU override must drop the GPU reservation"
    assert cpu["environment"]["DEEPLAB_DEVICE"] == "cpu"
    _, stages = parse_dockerfile()
    for variant, compose in VARIANTS.items():
        build = compose["services"]["deeplab"]["build"]
        assert build["target"] == variant and build["target"] in stages


@pytest.mark.parametrize("variant", VARIANTS)
def test_server_settings_port_and_drain(variant, monkeypatch):
    server = VARIANTS[variant]["services"]["deeplab"]
    env = server["environment"]
    check_settings(env, monkeypatch)
    assert container_port(server, "http") == int(env["DEEPLAB_PORT"])
    grace = int(server["stop_grace_period"].rstrip("s"))
    # + uvicorn's 5 s graceful close (service/server.py) and the model's shutdown
    assert grace >= float(env["DEEPLAB_DRAIN_TIMEOUT_S"]) + 10, "docker would SIGKILL mid-drain"
    assert server["read_only"] and "/tmp" in server["tmpfs"]
    # the kernel cache survives restarts: a named volume at the image's DEEPLAB_CACHE_DIR
    cache_dir = re.search(r"DEEPLAB_CACHE_DIR=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert f"deeplab-cache:{cache_dir}" in server["volumes"] and "deeplab-cache" in VARIANTS[variant]["volumes"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_server_publishes_named_http_and_grpc_ports_at_the_settings_defaults(variant):
    """Both listeners published on the host at their own numbers; the container's DEEPLAB_PORT and
    DEEPLAB_GRPC_PORT (when set) are the ports published."""
    from service.settings import Settings

    server = VARIANTS[variant]["services"]["deeplab"]
    fields = {"http": "port", "grpc": "grpc_port"}
    ports = {p["name"]: p for p in server["ports"]}
    assert len(ports) == len(server["ports"]) and set(ports) == set(fields), server["ports"]
    for name, field in fields.items():
        default = Settings.model_fields[field].default
        port = ports[name]
        assert (port["target"], int(port["published"]), port["protocol"], port["app_protocol"]) == (
            default, default, "tcp", name
        )
        env = server["environment"].get(f"DEEPLAB_{field.upper()}")
        assert env is None or int(env) == port["target"], f"DEEPLAB_{field.upper()} is not the published port"


def mount_target(service: dict, source: str) -> str:
    (target,) = [v.split(":")[1] for v in service["volumes"] if v.split(":")[0] == source]
    return target


def test_prometheus_config_passes_promtool():
    promtool = require_tool("promtool")
    proc = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_server():
    from service.settings import Settings

    compose = VARIANTS["gpu"]
    prometheus = compose["services"]["prometheus"]
    config_path = mount_target(prometheus, "./deploy/prometheus/prometheus.yml")
    assert f"--config.file={config_path}" in prometheus["command"]
    (job,) = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["metrics_path"] in service_get_paths()
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.split(":")
    assert host == "deeplab" and host in compose["services"]
    assert int(port) == container_port(compose["services"]["deeplab"], "http") == Settings.model_fields["port"].default


def test_grafana_provisioning_points_at_prometheus_and_dashboard():
    compose = VARIANTS["gpu"]
    grafana, prometheus = compose["services"]["grafana"], compose["services"]["prometheus"]
    provisioning = Path(mount_target(grafana, "./deploy/grafana/provisioning"))
    assert provisioning == Path("/etc/grafana/provisioning")
    (source,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{container_port(prometheus)}"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/deeplab-serve.yml").read_text())["providers"]
    assert provider["options"]["path"] == mount_target(grafana, "./deploy/grafana/dashboards")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    # No hard-coded datasource: every query goes to the ${datasource} variable, whose default is
    # Grafana's default Prometheus datasource, the provisioned one here (any one in a cluster).
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == source["type"] and not variable["current"]
    assert source["isDefault"] is True
    for panel in panels:
        for ds in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert ds == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_grafana_needs_a_login_and_has_no_default_password():
    grafana = VARIANTS["gpu"]["services"]["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in grafana and grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    raw = yaml.load((ROOT / "docker-compose.yml").read_text(), Loader=ComposeLoader)["services"]["grafana"]["environment"]
    required = REQUIRED.fullmatch(raw["GF_SECURITY_ADMIN_PASSWORD"])
    assert required, "the admin password must come from a variable compose refuses to run without"
    assert required.group(1) == "GRAFANA_ADMIN_PASSWORD" and "deploy/README.md" in required.group(2)
    assert "GRAFANA_ADMIN_PASSWORD" in (ROOT / "deploy" / "README.md").read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_api_keys_are_off_by_default_and_can_be_turned_on(variant, monkeypatch):
    """Compose is for local use: no key needed unless DEEPLAB_API_KEY_HASHES is set."""
    from service.auth import KeyRing, digest_of
    from service.settings import Settings

    env = VARIANTS[variant]["services"]["deeplab"]["environment"]
    assert env["DEEPLAB_API_KEY_HASHES"] == ""  # the variable, unset
    check_settings(env, monkeypatch)
    assert KeyRing.from_settings(Settings()) is None
    monkeypatch.setenv("DEEPLAB_API_KEY_HASHES", f"alice:{digest_of('k1')},bob:{digest_of('k2')}")
    ring = KeyRing.from_settings(Settings())
    assert ring.identify("k2").name == "bob" and ring.identify("k3") is None


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def test_dashboard_model_variable_lists_and_filters_the_served_models():
    """$model holds the `model` label values of deeplab_model_info (every served model has that
    series), and every query on a per-model series selects `model=~"$model"`."""
    exposed = service_metrics()
    (variable,) = [v for v in json.loads(DASHBOARD.read_text())["templating"]["list"] if v["name"] == "model"]
    assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    query = variable["query"]["query"]
    assert query == variable["definition"]
    series, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", query).groups()
    assert series == "deeplab_model_info" and label in exposed[series]
    assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
    filtered = 0
    for expr in dashboard_queries():
        for name, _ in promql_selectors(expr):
            if "model" in exposed[name]:
                assert re.search(rf'{name}\{{[^}}]*model=~"\$model"', expr), f"{expr}: {name} ignores $model"
                filtered += 1
    assert filtered >= 8


def check_queries_against_service(exprs: list[str]) -> set[str]:
    """Each query parses as PromQL and uses only series and labels the service exposes; returns the
    series used. Target labels that Prometheus itself attaches are allowed too."""
    exposed = service_metrics()
    used = set()
    for expr in exprs:
        for name, labels in promql_selectors(expr):
            assert name in exposed, f"{name} (in {expr}) is not exposed by the service"
            extra = labels - exposed[name] - {"instance", "job", "namespace", "pod"}
            assert not extra, f"{expr}: {name} has no labels {sorted(extra)}"
            used.add(name)
    return used


def test_dashboard_queries_use_the_service_metrics():
    used = check_queries_against_service(dashboard_queries())
    required = {  # what issue 6 asks the dashboard to show
        "request rate / errors by code": "deeplab_requests_total",
        "latency p50/p90/p99": "deeplab_request_duration_seconds_bucket",
        "queue wait": "deeplab_queue_wait_seconds_bucket",
        "batch-size distribution": "deeplab_batch_size_bucket",
        "queue depth": "deeplab_queue_depth",
        "measured fps": "deeplab_measured_fps",
        "reference fps": "deeplab_reference_fps",
        # issue 19: GPU, process and per-model panels
        "GPU utilisation": "deeplab_gpu_utilization_ratio",
        "GPU memory used": "deeplab_gpu_memory_used_bytes",
        "GPU memory total": "deeplab_gpu_memory_total_bytes",
        "GPU temperature": "deeplab_gpu_temperature_celsius",
        "GPU power": "deeplab_gpu_power_watts",
        "process CPU": "process_cpu_seconds_total",
        "process RSS": "process_resident_memory_bytes",
        "inference time per model": "deeplab_inference_duration_seconds_bucket",
        "throughput per model": "deeplab_images_total",
    }
    missing = {what: name for what, name in required.items() if name not in used}
    assert not missing
    exprs = " ".join(dashboard_queries())
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(deeplab_request_duration_seconds_bucket" in exprs
    assert re.search(r"sum by \(code\) \(rate\(deeplab_requests_total\{code!~", exprs)


def exposed_names(exposition: str) -> set[str]:
    """Series names a /metrics page offers, including those of families with no sample yet."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {s.name for s in family.samples} | {family.name + s for s in suffixes.get(family.type, [])}
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpu_compose_settings_boot_a_server_prometheus_can_scrape(tmp_path):
    """The real server with the CPU variant's environment: ready on /readyz, healthy by the image's
    HEALTHCHECK, live and ready over gRPC (the protocol's ServerLive/ServerReady), every series the dashboard and the HPA's adapter rule read on /metrics, exit 0 on
    SIGTERM."""
    import grpc
    import httpx
    import tritonclient.grpc as triton_grpc
    from PIL import Image

    port, grpc_port = free_port(), free_port()
    env = {k: str(v) for k, v in VARIANTS["cpu"]["services"]["deeplab"]["environment"].items() if v is not None}
    env |= {"DEEPLAB_PORT": str(port), "DEEPLAB_GRPC_PORT": str(grpc_port), "DEEPLAB_HOST": "127.0.0.1", "PATH": os.environ["PATH"]}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready within 120 s"
            time.sleep(0.5)
        _, stages = parse_dockerfile()
        (healthcheck,) = [rest for i, rest in stages["cpu"] if i == "HEALTHCHECK"]
        check = json.loads(healthcheck.split(" CMD ", 1)[1])
        assert subprocess.run([sys.executable, *check[1:]], env=env, timeout=10).returncode == 0
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        with triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.is_server_live() and client.is_server_ready()
        image = tmp_path / "street.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(image)
        response = httpx.post(f"{base}/segment", files={"image": image.read_bytes()}, timeout=60)
        assert response.status_code == 200, response.text
        (job,) = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
        exposed = exposed_names(httpx.get(base + job["metrics_path"], timeout=10).text)
        adapter = yaml.safe_load((ROOT / "deploy/k8s/prometheus-adapter/values.yaml").read_text())
        queries = dashboard_queries() + [rule["seriesQuery"] for rule in adapter["rules"]["custom"]]
        missing = {name for q in queries for name, _ in promql_selectors(q)} - exposed
        if load_nvml() is None:  # no GPU here: the GPU series are rightly absent (service.gpu_metrics)
            missing -= set(GPU_SERIES)
        assert not missing, f"not on /metrics: {sorted(missing)}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=float(env["DEEPLAB_DRAIN_TIMEOUT_S"]) + 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
