"""The service end to end: a real uvicorn server on 127.0.0.1 driven with httpx.

The served network is the default CamVid DeepLabV3+ with random weights (random BN statistics
too, so its label maps are varied) and a 64x48 test scale to keep CPU inference fast; results
are compared with the same network run directly through ``model.Segmenter``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import io
import socket
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from helpers import (
    REPO,
    SCALE,
    free_port,
    image_bytes,
    labels_of,
    metric,
    post,
    running_server,
    scene,
    small_net,
)
from PIL import Image

from model import DEFAULT_MODEL, get_config, save_checkpoint
from model.pipeline import Segmenter
from service.backends.pytorch import TorchBackend
from service.settings import Settings, markdown_table
from model.version import package_version


@pytest.fixture(scope="module")
def net():
    return small_net()


@pytest.fixture(scope="module")
def reference(net):
    """The same weights run directly, outside the service."""
    return Segmenter(copy.deepcopy(net))


@pytest.fixture(scope="module")
def server(net):
    with running_server(TorchBackend(net=copy.deepcopy(net), precision="fp32"), max_batch_size=8, max_queue_delay_ms=50) as url:
        yield url




def test_png_label_map_matches_the_model_run_directly(server, reference):
    rgb = scene(1)
    r = post(server, image_bytes(rgb))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = labels_of(r)
    want = reference.predict([rgb])[0]
    assert got.shape == (48, 64)
    assert np.array_equal(got, want)
    assert len(np.unique(want)) > 1  # the comparison means something
    palette = Image.open(io.BytesIO(r.content)).getpalette()[:33]
    assert palette == [c for rgb_ in get_config(DEFAULT_MODEL).dataset.palette for c in rgb_]
    for header in ("x-request-id", "x-batch-size", "x-queue-ms", "x-inference-ms", "x-total-ms"):
        assert header in r.headers


def test_multipart_upload_and_original_size(server, reference):
    rgb = scene(2, size=(200, 120))  # resized to 64x38, padded into the 64x48 bucket
    r = httpx.post(f"{server}/segment", files={"image": ("x.jpg", image_bytes(rgb, "JPEG", quality=95), "image/jpeg")}, timeout=60)
    assert r.status_code == 200
    got = labels_of(r)
    assert got.shape == (120, 200)
    decoded = np.asarray(Image.open(io.BytesIO(image_bytes(rgb, "JPEG", quality=95))).convert("RGB"))
    want = reference.predict([decoded])[0]
    # Padding and nearest-neighbour upsampling (vs bilinear logits) only move class boundaries.
    assert (got == want).mean() > 0.9


def test_json_format_with_rle_mask(server, reference):
    rgb = scene(3)
    r = post(server, image_bytes(rgb), fmt="json", mask="rle")
    assert r.status_code == 200
    body = r.json()
    want = reference.predict([rgb])[0]
    assert (body["model"], body["width"], body["height"]) == (DEFAULT_MODEL, 64, 48)
    assert {c["id"]: c["pixels"] for c in body["classes"]} == {int(k): int(v) for k, v in zip(*np.unique(want, return_counts=True))}
    assert abs(sum(c["fraction"] for c in body["classes"]) - 1) < 1e-9
    assert body["classes"][0]["name"] == get_config(DEFAULT_MODEL).dataset.classes[body["classes"][0]["id"]]
    assert set(body["timing"]) == {"queue_ms", "inference_ms", "total_ms"}
    mask = body["mask"]
    decoded = np.repeat(np.array(mask["values"], np.uint8), mask["counts"]).reshape(mask["size"])
    assert np.array_equal(decoded, want)
    assert "mask" not in post(server, image_bytes(rgb), fmt="json").json()


def test_raw_format_is_the_label_bytes_row_major(server, reference):
    rgb = scene(5, size=(200, 120))
    r = post(server, image_bytes(rgb, "PNG"), fmt="raw")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert (r.headers["x-height"], r.headers["x-width"]) == ("120", "200")
    raw = np.frombuffer(r.content, np.uint8).reshape(120, 200)
    assert np.array_equal(raw, labels_of(post(server, image_bytes(rgb, "PNG"))))
    assert len(np.unique(raw)) > 1


def test_overlay_format(server):
    rgb = scene(4)
    r = post(server, image_bytes(rgb), fmt="overlay")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    overlay = Image.open(io.BytesIO(r.content))
    assert overlay.format == "JPEG" and overlay.size == (64, 48)
    assert not np.array_equal(np.asarray(overlay), rgb)


def test_concurrent_distinct_images_each_get_their_own_result_in_real_batches(server):
    images = [scene(100 + i) for i in range(16)]
    singles = [labels_of(post(server, image_bytes(im))) for im in images]
    assert len({s.tobytes() for s in singles}) > 8  # distinct images, distinct answers
    before = metric(httpx.get(server + "/metrics").text, "deeplab_batch_size_count")
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda im: post(server, image_bytes(im)), images))
    assert all(r.status_code == 200 for r in responses)
    for single, r in zip(singles, responses):
        assert np.array_equal(labels_of(r), single)
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1
    text = httpx.get(server + "/metrics").text
    batches = metric(text, "deeplab_batch_size_count") - before
    assert batches < 16  # some requests shared a batch
    assert metric(text, "deeplab_batch_size_bucket", le="1.0") < metric(text, "deeplab_batch_size_count")


def test_models_endpoint(server):
    r = httpx.get(server + "/v1/models")
    assert r.status_code == 200
    listing = r.json()
    assert listing["default"] == DEFAULT_MODEL and len(listing["models"]) == 1
    body = listing["models"][0]
    assert httpx.get(f"{server}/v1/models/{DEFAULT_MODEL}").json() == body
    assert httpx.get(f"{server}/v1/models/nope").status_code == 404
    cfg = get_config(DEFAULT_MODEL)
    assert (body["name"], body["version"], body["config"]) == (DEFAULT_MODEL, "1", DEFAULT_MODEL)
    assert body["classes"] == list(cfg.dataset.classes)
    assert body["palette"] == [list(p) for p in cfg.dataset.palette]
    # what is reported is the precision the engine runs (this server's fp32: its labels are compared
    # with the fp32 model's; what auto picks is tests/test_service_backends.py's)
    assert Settings.model_fields["precision"].default == "auto"
    assert (body["backend"], body["device"], body["precision"]) == ("torch", "cpu", "fp32")
    assert body["batching"]["max_batch_size"] == 8
    assert body["input_policy"]["test_scale"] == list(SCALE)
    assert [64, 48] in body["input_policy"]["buckets"]


def test_health_and_readiness(server):
    assert httpx.get(server + "/healthz").json() == {"status": "alive"}
    assert httpx.get(server + "/readyz").json() == {"status": "ready"}


def test_metrics_content(server):
    post(server, image_bytes(scene(5)))
    post(server, b"not an image", content_type="image/png")
    r = httpx.get(server + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "deeplab_requests_total", "deeplab_request_duration_seconds_bucket", "deeplab_queue_wait_seconds_bucket",
        "deeplab_inference_duration_seconds_bucket", "deeplab_batch_size_bucket", "deeplab_queue_depth",
        "deeplab_inflight_requests", "deeplab_images_total", "deeplab_measured_fps", "deeplab_model_info", "deeplab_ready",
    ):
        assert f"\n{name}" in text, name
    assert metric(text, "deeplab_requests_total", endpoint="/segment", code="200") >= 1
    assert metric(text, "deeplab_requests_total", endpoint="/segment", code="415") >= 1
    assert metric(text, "deeplab_model_info", model=DEFAULT_MODEL, version="1", config=DEFAULT_MODEL, backend="torch", device="cpu", precision="fp32") == 1
    assert metric(text, "deeplab_ready") == 1
    assert metric(text, "deeplab_images_total", model=DEFAULT_MODEL, version="1") >= 1
    assert metric(text, "deeplab_measured_fps") > 0
    assert 'le="0.001"' in text and 'le="10.0"' in text  # latency buckets resolve 1 ms .. 10 s


def test_openapi_describes_endpoints_and_errors(server):
    spec = httpx.get(server + "/openapi.json").json()
    seg = spec["paths"]["/segment"]["post"]
    assert set(seg["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    assert {"200", "400", "413", "415", "422", "429", "503", "504"} <= set(seg["responses"])
    assert set(seg["responses"]["200"]["content"]) == {"image/png", "application/octet-stream", "image/jpeg", "application/json"}
    assert {p["name"] for p in seg["parameters"]} == {"format", "mask", "model", "version"}
    for path in ("/v1/models", "/healthz", "/readyz", "/metrics"):
        assert "get" in spec["paths"][path]
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    assert httpx.get(server + "/docs").status_code == 200


def test_models_endpoint_publishes_provenance_but_not_the_training_command_or_data(tmp_path):
    secret = "/home/trainer/private-data/camvid"
    meta = {"command": f"python -m model.training.train --data {secret}", "data": secret,
            "recipe": {"data": secret, "work_dir": "/home/trainer/runs", "train_split": "train+val"},
            "val": {"mIoU": 61.5, "aAcc": 90.1}, "iterations": 1000}  # fmt: skip
    checkpoint = save_checkpoint(small_net(seed=7), tmp_path / "trained.pth", meta=meta)
    with running_server(None, model=str(checkpoint), precision="bf16") as url:
        body = httpx.get(url + "/v1/models").json()["models"][0]
        info = metric(httpx.get(url + "/metrics").text, "deeplab_model_info", backend="torch", precision="bf16")
    text = str(body)
    assert "/home/trainer" not in text and "python -m" not in text and "command" not in text
    assert body["weights"] == {
        "file": "trained.pth", "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "val_miou": 61.5, "val_aacc": 90.1, "iterations": 1000, "train_split": "train+val",
    }  # fmt: skip
    assert body["precision"] == "bf16" and info == 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_cli_help_shows_every_flag_with_its_default_and_choices():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text and f"(env DEEPLAB_{name.upper()})" in text
    assert "--precision {auto,fp32,fp16,bf16,fp8}" in text and "default: auto" in text
    assert "--backend {auto,torch,onnxruntime,tensorrt}" in text
    assert "default: 64 (env DEEPLAB_QUEUE_CAPACITY)" in text and "default: the built-in model" in text


def test_cli_version_prints_the_package_version():
    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert out.stdout.strip() == f"deeplab-serve {pyproject}" == f"deeplab-serve {package_version()}"


def exit_line(out: subprocess.CompletedProcess) -> str:
    """The reason a server gave up: its last stderr line, one JSON log object like every other."""
    record = json.loads(out.stderr.splitlines()[-1])
    assert record["level"] == "error" and out.returncode == 1
    return record["msg"]


def test_cli_exits_with_one_clear_line_when_the_backend_cannot_run_the_precision():
    out = run_cli("--precision", "fp8", "--device", "cpu", "--host", "127.0.0.1", "--port", str(free_port()))
    assert out.returncode != 0
    assert "cannot start: the torch backend on cpu runs fp32, fp16, bf16, not fp8" in exit_line(out)
    assert "Traceback" not in out.stderr + out.stdout


def test_cli_exits_with_one_clear_line_on_a_bad_api_keys_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("not-a-digest-line\n")
    out = run_cli("--api-keys-file", str(keys), "--device", "cpu", "--host", "127.0.0.1", "--port", str(free_port()))
    assert out.returncode != 0
    assert exit_line(out).startswith("deeplab-serve: cannot start:") and "line 1" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_a_taken_grpc_port_stops_the_start_with_json_lines_only():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_cli("--grpc-port", str(port), "--device", "cpu", "--host", "127.0.0.1", "--port", str(free_port()))
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in exit_line(out)
    assert all(json.loads(line) for line in out.stderr.splitlines()), out.stderr  # grpc's C core prints nothing of its own


def test_readme_settings_table_is_the_settings_table():
    readme = (REPO / "service" / "README.md").read_text()
    assert markdown_table() in readme, "regenerate the table: python -c 'from service.settings import markdown_table; print(markdown_table())'"
    assert "`auto`, `fp32`, `fp16`, `bf16`, `fp8`" in markdown_table()
