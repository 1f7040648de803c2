"""Service backends for exported models: ONNX Runtime (CPU here) and TensorRT (load paths only),
and the service itself serving an exported model next to the same weights on the torch backend."""

from __future__ import annotations

import importlib.util

import httpx
import numpy as np
import pytest
import torch
from helpers import randomize
from helpers import labels_of, post, running_server

from export.onnx_export import export_onnx
from export.engines.tensorrt_import import TensorRTUnavailable
from model import DEFAULT_MODEL, build_model, get_config, save_checkpoint
from model.pipeline.decode import load_image
from model.pipeline.normalize import normalize
from service.backends import create_backend, resolve_backend_name
from service.backends.onnxruntime import OnnxRuntimeBackend
from service.backends.pytorch import TorchBackend
from model.pipeline.buckets import InputPolicy

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def r18():
    net = build_model(get_config(DEFAULT_MODEL), with_auxiliary=False)
    net.load_state_dict(randomize(net.state_dict(), seed=5))
    net.meta = {"source": "random seed 5"}
    return net.eval()


@pytest.fixture(scope="module")
def default_onnx(r18, tmp_path_factory):
    """What `python -m export.onnx_export --out m.onnx` writes: dynamic batch and size, logits."""
    path = tmp_path_factory.mktemp("onnx") / "r18.onnx"
    export_onnx(r18, path, trace_hw=(64, 96))
    return path


def test_onnxruntime_backend_matches_torch_backend_on_camvid(r18, default_onnx, camvid_dir):
    ort_backend = OnnxRuntimeBackend(str(default_onnx))
    torch_backend = TorchBackend(net=r18, precision="fp32")
    cfg = ort_backend.load()
    assert cfg.name == torch_backend.load().name and cfg.dataset.classes == r18.config.dataset.classes
    policy = InputPolicy.for_config(cfg)
    images = sorted((camvid_dir / "images" / "val").glob("*.jpg"))[:2]
    batch = np.stack([policy.prepare(load_image(p)).pixels for p in images])
    assert batch.shape == (2, 360, 480, 3)
    labels = ort_backend.infer(batch)
    assert labels.dtype == np.uint8 and labels.shape == (2, 360, 480)
    np.testing.assert_array_equal(labels, torch_backend.infer(batch))
    assert ort_backend.describe()["providers"] == ["CPUExecutionProvider"]


def test_service_answers_with_the_same_png_as_the_torch_backend(r18, default_onnx, camvid_dir, tmp_path):
    """`python -m export.onnx_export --out m.onnx` then `python -m service --model m.onnx`, in one test."""
    image = min((camvid_dir / "images" / "val").glob("*.jpg")).read_bytes()
    checkpoint = save_checkpoint(r18, tmp_path / "r18.pth")
    served = {}
    for model in (checkpoint, default_onnx):
        with running_server(None, model=str(model), precision="fp32") as url:
            response = post(url, image, content_type="image/jpeg")
            assert response.status_code == 200, response.text
            described = httpx.get(url + "/v1/models").json()["models"][0]
            assert described["precision"] == "fp32"
            served[described["backend"]] = response
    assert set(served) == {"torch", "onnxruntime"}
    assert served["onnxruntime"].content == served["torch"].content
    assert labels_of(served["torch"]).shape == (360, 480)
    assert len(np.unique(labels_of(served["torch"]))) > 1  # the comparison means something


def test_fixed_batch_labels_graph_is_run_in_padded_chunks(r18, tmp_path):
    path = tmp_path / "b2.onnx"
    export_onnx(r18, path, batch=2, shape=(48, 80), with_argmax=True)
    backend = OnnxRuntimeBackend(str(path))
    cfg = backend.load()
    pixels = np.random.default_rng(0).integers(0, 256, (3, 48, 80, 3), dtype=np.uint8)
    with torch.inference_mode():
        expected = r18(normalize(torch.from_numpy(pixels), cfg)).argmax(1).numpy()
    labels = backend.infer(pixels)
    assert labels.shape == (3, 48, 80)
    assert (labels == expected).mean() >= 0.999


def test_backend_follows_the_model_file():
    assert resolve_backend_name("m.onnx") == "onnxruntime"
    assert resolve_backend_name("m.engine") == resolve_backend_name("m.plan") == "tensorrt"
    assert type(create_backend("m.onnx", "auto", "cpu", "fp32")).__name__ == "OnnxRuntimeBackend"
    assert type(create_backend("m.plan", "auto", "cpu", "fp32")).__name__ == "TensorRTBackend"


def test_onnxruntime_backend_rejects_what_it_cannot_serve(default_onnx):
    with pytest.raises(ValueError, match="serves .onnx files"):
        OnnxRuntimeBackend("model.pth").load()
    with pytest.raises(ValueError, match="not fp16"):
        OnnxRuntimeBackend(str(default_onnx), precision="fp16").load()


def test_tensorrt_backend_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="CUDA devices only"):
        create_backend(str(tmp_path / "m.engine"), "auto", "cpu", "fp32").load()


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: the missing-library path does not run")
def test_tensorrt_backend_without_tensorrt_says_so(tmp_path):
    with pytest.raises(TensorRTUnavailable, match="not installed"):
        create_backend(str(tmp_path / "m.engine"), "tensorrt", "cuda", "fp32").load()


@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not installed (needs TensorRT 10 and a GPU): never run by this project")
def test_tensorrt_backend_agrees_with_onnxruntime_and_splits_big_batches(r18, tmp_path):
    from export.build_engine import main as build_engine

    onnx_path, engine = tmp_path / "r18.onnx", tmp_path / "r18.engine"
    export_onnx(r18, onnx_path, shape=(48, 80), with_argmax=True)
    assert build_engine(["--model", str(onnx_path), "--out", str(engine), "--opt-batch", "2", "--max-batch", "2"]) == 0
    trt_backend = create_backend(str(engine), "auto", "cuda", "auto")  # the engine's own fp16
    ort_backend = OnnxRuntimeBackend(str(onnx_path))
    assert trt_backend.load().name == ort_backend.load().name
    pixels = np.random.default_rng(1).integers(0, 256, (5, 48, 80, 3), dtype=np.uint8)  # 5 > max batch 2
    labels = trt_backend.infer(pixels)
    assert labels.dtype == np.uint8 and labels.shape == (5, 48, 80)
    assert (labels == ort_backend.infer(pixels)).mean() >= 0.995
