"""The model repository (issue 16, part 4): several models and versions from one server, chosen
per request, each with its own batcher and metrics; load, replace and unload at run time over HTTP
and gRPC, behind --enable-model-control and the admin key; a load that does not fit is refused and
leaves the served models untouched; unload waits for the model's accepted requests."""

from __future__ import annotations

import hashlib
import json
import threading

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from helpers import REPO, SlowBackend, free_port, image_bytes, labels_of, metric, running_server, scene, small_net
from tritonclient.utils import InferenceServerException

from model import DEFAULT_MODEL, build_model, get_config, save_checkpoint
from model.pipeline.buckets import InputPolicy
from model.precision import Precision
from service.backends.pytorch import TorchBackend
from service.repository.capacity import needed_bytes
from service.__main__ import parse_args
from service.repository.specs import parse_entry
from service.settings import Settings

ADMIN, USER = "admin-secret-key", "user-secret-key"
IMAGE = image_bytes(scene(3, (480, 360)))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def checkpoint(path, seed: int, config: str = DEFAULT_MODEL, half: bool = False):
    """A random network of ``config`` (different weights per seed) saved in our format."""
    net = small_net(seed) if config == DEFAULT_MODEL else build_model(get_config(config)).eval()
    return save_checkpoint(net, path, half=half)


def segment(url: str, headers: dict | None = None, **params) -> httpx.Response:
    r = httpx.post(f"{url}/segment", params=params, content=IMAGE, headers={"content-type": "image/png", **(headers or {})}, timeout=120)
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """alpha: one file; beta: versions 1..3 of which the latest two are served, max batch 2."""
    root = tmp_path_factory.mktemp("models")
    checkpoint(root / "alpha" / "alpha.pth", seed=1)
    for version, seed in ((1, 2), (2, 3), (3, 4)):
        checkpoint(root / "beta" / str(version) / "model.pth", seed=seed)
    (root / "beta" / "config.toml").write_text("latest_versions = 2\nmax_batch_size = 2\ninstances = 2\n")
    return root


def test_entries_name_models_or_take_the_configs_name():
    assert parse_entry("city=/models/city.onnx") == parse_entry("city=/models/city.onnx")
    assert (parse_entry("city=/m/c.onnx").name, parse_entry("city=/m/c.onnx").source) == ("city", "/m/c.onnx")
    assert (parse_entry(DEFAULT_MODEL).name, parse_entry(DEFAULT_MODEL).source) == (None, DEFAULT_MODEL)
    assert Settings(model="a=x.pth,b").model == ["a=x.pth", "b"]
    assert parse_args(["--model", "a=x.pth", "--model", "b", "--enable-model-control"]).model == ["a=x.pth", "b"]
    assert parse_args(["--enable-model-control"]).enable_model_control  # a switch: true without a value


def test_models_and_versions_side_by_side(repository):
    with running_server(None, model_repository=str(repository)) as url:
        listing = httpx.get(f"{url}/v1/models").json()
        assert listing["default"] == "alpha"
        served = {(m["name"], m["version"]): m for m in listing["models"]}
        assert set(served) == {("alpha", "1"), ("beta", "3"), ("beta", "2")}  # beta 1 is past latest_versions
        assert (served["beta", "3"]["batching"]["max_batch_size"], served["beta", "3"]["batching"]["instances"]) == (2, 2)
        assert (served["alpha", "1"]["batching"]["max_batch_size"], served["alpha", "1"]["batching"]["instances"]) == (8, 1)

        alpha, beta3, beta2 = (labels_of(segment(url, model=m, version=v)) for m, v in (("alpha", "1"), ("beta", "3"), ("beta", "2")))
        assert np.array_equal(labels_of(segment(url)), alpha)  # the default model
        assert np.array_equal(labels_of(segment(url, model="beta")), beta3)  # the highest version
        assert not np.array_equal(alpha, beta3) and not np.array_equal(beta3, beta2)  # different weights served
        assert segment(url, model="beta", version="2").headers["x-model"] == "beta"

        r = httpx.post(f"{url}/segment", params={"model": "gamma"}, content=IMAGE, headers={"content-type": "image/png"})
        assert r.status_code == 404 and "gamma" in r.json()["detail"]
        assert httpx.post(f"{url}/segment", params={"model": "beta", "version": "1"}, content=IMAGE, headers={"content-type": "image/png"}).status_code == 404

        client = triton_http.InferenceServerClient(url.removeprefix("http://"))
        assert client.get_model_metadata("beta")["versions"] == ["3", "2"]
        inp = triton_http.InferInput("IMAGE", [1], "BYTES")
        inp.set_data_from_numpy(np.array([IMAGE], dtype=object))
        result = client.infer("beta", [inp], model_version="2")
        assert result.get_response()["model_version"] == "2"
        assert np.array_equal(result.as_numpy("LABELS")[0], beta2)

        text = httpx.get(f"{url}/metrics").text  # each model its own series
        assert metric(text, "deeplab_images_total", model="beta", version="2") == 3
        assert metric(text, "deeplab_images_total", model="alpha", version="1") == 2
        assert metric(text, "deeplab_model_info", model="beta", version="3", config=DEFAULT_MODEL) == 1


def test_model_control_is_off_by_default(repository):
    with running_server(None, model_repository=str(repository)) as url:
        for path in ("/v2/repository/index", "/v2/repository/models/alpha/unload"):
            r = httpx.post(url + path)
            assert r.status_code == 403 and "--enable-model-control" in r.json()["error"]
        assert segment(url, model="alpha")


def _in_thread(fn) -> tuple[threading.Thread, list]:
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_load_replace_unload_over_http(tmp_path):
    root = tmp_path / "models"
    checkpoint(root / "alpha" / "1" / "model.pth", seed=1)
    slow = SlowBackend(net=small_net(5))
    admin, user = {"x-api-key": ADMIN}, {"x-api-key": USER}
    settings = {"model": ["slow=" + DEFAULT_MODEL], "model_repository": str(root), "enable_model_control": True,
                "api_key_hashes": [digest(USER)], "admin_key_hashes": [digest(ADMIN)]}  # fmt: skip
    with running_server(slow, **settings) as url:
        index = httpx.post(f"{url}/v2/repository/index", headers=admin).json()
        assert {(r["name"], r["state"]) for r in index} == {("alpha", "READY"), ("slow", "READY")}
        assert httpx.post(f"{url}/v2/repository/index", headers=user).status_code == 403  # not an admin key
        assert httpx.post(f"{url}/v2/repository/index").status_code == 401

        # a folder dropped into the repository: listed, then loaded without a restart
        checkpoint(root / "gamma" / "model.pth", seed=6)
        index = httpx.post(f"{url}/v2/repository/index", headers=admin).json()
        assert {"name": "gamma", "state": "UNAVAILABLE", "reason": "unloaded"} in index
        assert httpx.post(f"{url}/v2/repository/index", headers=admin, json={"ready": True}).json() == [
            r for r in index if r["state"] == "READY"
        ]
        r = httpx.post(f"{url}/v2/repository/models/gamma/load", headers=admin, json={"parameters": {"config": '{"max_batch_size": 3}'}}, timeout=120)
        assert r.status_code == 200, r.text
        gamma = labels_of(segment(url, user, model="gamma"))
        assert httpx.get(f"{url}/v1/models/gamma", headers=user).json()["batching"]["max_batch_size"] == 3

        # replace alpha by a new version: served from the new weights, same name, still not the default
        before = labels_of(segment(url, user, model="alpha"))
        checkpoint(root / "alpha" / "2" / "model.pth", seed=7)
        assert httpx.post(f"{url}/v2/repository/models/alpha/load", headers=admin, timeout=120).status_code == 200
        listing = httpx.get(f"{url}/v1/models", headers=user).json()
        assert listing["default"] == "slow" and [m["version"] for m in listing["models"] if m["name"] == "alpha"] == ["2"]
        after = labels_of(segment(url, user, model="alpha"))
        assert not np.array_equal(before, after)

        # broken folders are refused with the reason and change nothing
        checkpoint(root / "twice" / "a.pth", seed=1)
        checkpoint(root / "twice" / "b.pth", seed=2)
        r = httpx.post(f"{url}/v2/repository/models/twice/load", headers=admin)
        assert r.status_code == 400 and "expected one model file" in r.json()["error"]
        assert {"name": "twice", "state": "UNAVAILABLE", "reason": r.json()["error"]} in httpx.post(f"{url}/v2/repository/index", headers=admin).json()
        r = httpx.post(f"{url}/v2/repository/models/gamma/load", headers=admin, json={"parameters": {"config": '{"max_batch_sise": 3}'}})
        assert r.status_code == 400 and "max_batch_sise" in r.json()["error"]
        assert httpx.post(f"{url}/v2/repository/models/nope/load", headers=admin).status_code == 404
        assert np.array_equal(labels_of(segment(url, user, model="gamma")), gamma)

        # unload waits for the model's accepted requests: taken out of the table at once, freed after
        with slow.holding():
            held, answer = _in_thread(lambda: httpx.post(f"{url}/segment", params={"model": "slow"}, content=IMAGE,
                                                         headers={"content-type": "image/png", **user}, timeout=120))  # fmt: skip
            slow.wait_until(lambda b: b.images_held == 1, "the request computes")
            unloading, unloaded = _in_thread(lambda: httpx.post(f"{url}/v2/repository/models/slow/unload", headers=admin, timeout=120))
            while httpx.get(f"{url}/v1/models/slow", headers=user).status_code != 404:
                assert unloading.is_alive()
            assert unloading.is_alive() and held.is_alive()  # still waiting for the held request
        held.join(60)
        unloading.join(60)
        assert answer[0].status_code == 200 and unloaded[0].status_code == 200
        assert httpx.get(f"{url}/v1/models", headers=user).json()["default"] == "alpha"
        assert metric(httpx.get(f"{url}/metrics").text, "deeplab_images_total", model="slow") == 0  # its series are gone
        assert httpx.post(f"{url}/v2/repository/models/slow/unload", headers=admin).status_code == 404


def test_a_load_that_does_not_fit_is_refused_and_changes_nothing(tmp_path):
    root = tmp_path / "models"
    checkpoint(root / "camvid" / "model.pth", seed=1)
    with running_server(None, model_repository=str(root), enable_model_control=True) as url:
        before = labels_of(segment(url))
        city = root / "city"  # 256 x 2048x1024 images of activations at once: no machine has that
        checkpoint(city / "model.pth", seed=0, config="deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024", half=True)
        (city / "config.toml").write_text("max_batch_size = 256\n")
        r = httpx.post(f"{url}/v2/repository/models/city/load", timeout=120)
        assert r.status_code == 507 and "lower max_batch_size or unload a model" in r.json()["error"], r.text
        assert np.array_equal(labels_of(segment(url)), before)
        assert [m["name"] for m in httpx.get(f"{url}/v1/models").json()["models"]] == ["camvid"]
        assert {"name": "city", "state": "UNAVAILABLE", "reason": r.json()["error"]} in httpx.post(f"{url}/v2/repository/index").json()
        # the same settings, loadable: the refusal was the size, not the model
        (city / "config.toml").write_text("max_batch_size = 1\n")
        assert httpx.post(f"{url}/v2/repository/models/city/load", timeout=300).status_code == 200


def test_model_control_over_grpc(tmp_path):
    root = tmp_path / "models"
    checkpoint(root / "alpha" / "model.pth", seed=1)
    grpc_port = free_port()
    with running_server(None, model_repository=str(root), enable_model_control=True, grpc_port=grpc_port,
                        admin_key_hashes=[digest(ADMIN)]) as url:  # fmt: skip
        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        admin = {"x-api-key": ADMIN}
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_repository_index(headers={"x-api-key": "wrong"})
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        checkpoint(root / "beta" / "model.pth", seed=2)
        index = client.get_model_repository_index(headers=admin, as_json=True)["models"]
        assert {(m["name"], m["state"]) for m in index} == {("alpha", "READY"), ("beta", "UNAVAILABLE")}
        client.load_model("beta", headers=admin)
        assert client.is_model_ready("beta", headers=admin)
        inp = triton.InferInput("IMAGE", [1], "BYTES")
        inp.set_data_from_numpy(np.array([IMAGE], dtype=object))
        beta = client.infer("beta", [inp], headers=admin).as_numpy("LABELS")[0]
        assert np.array_equal(beta, labels_of(httpx.post(f"{url}/segment", params={"model": "beta"}, content=IMAGE,
                                                         headers={"content-type": "image/png", **admin})))  # fmt: skip
        client.unload_model("alpha", headers=admin)
        with pytest.raises(InferenceServerException) as gone:
            client.get_model_metadata("alpha", headers=admin)
        assert gone.value.status() == "StatusCode.NOT_FOUND"


def test_the_memory_check_bounds_every_measured_peak():
    """The load check's coefficients are at least the peaks measured on the GPU (bench.model_memory)."""
    measured = json.loads((REPO / "bench" / "results" / "model_memory.json").read_text())["rows"]
    assert len(measured) >= 4
    for row in measured:
        cfg = get_config(row["config"])
        backend = TorchBackend(net=build_model(cfg).eval())
        backend.load()
        backend.precision = Precision(row["precision"])  # the measured run's (fp16 on the GPU)
        estimate = needed_bytes(backend, InputPolicy.for_config(cfg), row["max_batch"])
        assert row["peak_reserved_bytes"] <= estimate <= 1.25 * row["peak_reserved_bytes"], row["config"]
