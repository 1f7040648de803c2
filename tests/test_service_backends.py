"""Backend selection and the torch backend's contract (uint8 RGB batch in, uint8 labels out)."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from model import build_model, get_config
from model.accel import fp8
from model.pipeline import Segmenter
from model.accel.fast import Fp8Conv3x3
from service.backends import create_backend, resolve_backend_name
from service.backends.pytorch import TorchBackend
from model.pipeline.buckets import InputPolicy
from service.metrics import ServiceMetrics
from service.runtime import Runtime
from service.settings import Settings
from helpers import randomize
from helpers import SCALE, image_bytes, labels_of, post, running_server, scene, small_net


@pytest.mark.parametrize(
    "model,backend,expected",
    [
        (None, "auto", "torch"),
        ("deeplabv3plus_r18-d8_camvid-360x480", "auto", "torch"),
        ("runs/best.pth", "auto", "torch"),
        ("w.safetensors", "auto", "torch"),
        ("/models/m.onnx", "auto", "onnxruntime"),
        ("/models/m.ENGINE", "auto", "tensorrt"),
        ("m.plan", "auto", "tensorrt"),
        ("m.onnx", "tensorrt", "tensorrt"),  # --backend wins
    ],
)
def test_backend_is_chosen_by_extension_unless_given(model, backend, expected):
    assert resolve_backend_name(model, backend) == expected


def test_unknown_backend_is_refused_clearly():
    with pytest.raises(ValueError, match="unknown backend"):
        create_backend(None, "tflite", "cpu", "fp32")


def test_torch_backend_matches_the_model_and_returns_uint8_labels():
    net = small_net(seed=3)
    backend = TorchBackend(net=copy.deepcopy(net))
    cfg = backend.load()
    assert cfg.test_scale == SCALE
    images = [scene(i) for i in range(3)]
    labels = backend.infer(np.stack(images))
    assert labels.dtype == np.uint8 and labels.shape == (3, 48, 64)
    want = Segmenter(copy.deepcopy(net)).predict(images)
    assert all(np.array_equal(a, b) for a, b in zip(labels, want))


def test_torch_backend_bf16_mostly_agrees_with_fp32():
    net = small_net(seed=4)
    fp32, bf16 = TorchBackend(net=copy.deepcopy(net)), TorchBackend(net=copy.deepcopy(net), precision="bf16")
    fp32.load(), bf16.load()
    assert next(bf16.net.parameters()).dtype == torch.bfloat16
    assert bf16.net.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = np.stack([scene(i) for i in range(2)])
    assert (fp32.infer(batch) == bf16.infer(batch)).mean() > 0.8


def test_warm_up_covers_main_buckets_at_every_batch_size_on_cuda():
    settings = Settings(device="cuda", max_batch_size=4)
    runtime = Runtime(settings, ServiceMetrics(), TorchBackend(net=small_net(), device="cuda"))
    runtime.policy = InputPolicy((480, 360), (124, 116, 104))
    tuned, untuned = runtime.warm_up_shapes()
    assert set(tuned) == {(n, 360, 480) for n in range(1, 5)} | {(n, 480, 360) for n in range(1, 5)}
    assert {(h, w) for _, h, w in tuned + untuned} == {(h, w) for w, h in runtime.policy.all_buckets()}
    assert {n for n, _, _ in untuned} == {4}
    runtime.backend.device = "cpu"
    assert runtime.warm_up_shapes() == ([(1, 360, 480), (1, 480, 360)], [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU box)")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_backend_serves_the_optimized_network_with_the_same_labels(cuda_graphs):
    """On CUDA the backend runs model.accel.fast's rewrite and the fused upsample + argmax kernel,
    replayed as a CUDA graph for warmed-up shapes; in fp32 its labels must be the CPU
    reference's (up to summation-order ties), also for an uncaptured batch size and for two
    threads calling at once (the batcher's two batches in flight) with inputs staged from other
    threads (the codec threads)."""
    net = small_net(seed=5)
    images = np.stack([scene(i) for i in range(3)])
    cpu = TorchBackend(net=copy.deepcopy(net))
    cpu.load()
    expected = cpu.infer(images)
    torch.backends.cudnn.allow_tf32 = False
    try:
        cuda = TorchBackend(net=copy.deepcopy(net), device="cuda", cuda_graphs=cuda_graphs)
        cuda.load()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in cuda.net.modules())
        cuda.warm_up([(3, *images.shape[1:3])])
        assert cuda.describe()["cuda_graphs"] == (1 if cuda_graphs else None)
        assert cuda.concurrent_batches == (2 if cuda_graphs else 1)
        assert (cuda.infer(images) == expected).mean() > 0.999
        assert (cuda.infer(images[:1]) == expected[:1]).mean() > 0.999  # not captured: eager
        with ThreadPoolExecutor(4) as pool:  # staged from other threads, as the codec threads do
            staged = list(pool.map(cuda.stage, [*images, *images[::-1]]))
            forward, backward = pool.map(cuda.infer_images, [staged[:3], staged[3:]])
        assert (forward == expected).mean() > 0.999 and (backward == expected[::-1]).mean() > 0.999
        assert (cuda.infer_images(staged[:3]) == forward).all()  # staged inputs can be run again (batch retries)
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_fp8_is_refused_clearly_without_a_hopper_gpu():
    backend = TorchBackend(net=small_net(), precision="fp8")
    with pytest.raises(ValueError, match="fp8 needs a Hopper"):
        backend.load()


@pytest.mark.skipif(not (torch.cuda.is_available() and fp8.supported("cuda")), reason="needs a Hopper GPU (run on the GPU box)")
def test_fp8_backend_quantizes_the_bottleneck_and_keeps_the_fp16_labels():
    net = build_model(get_config("deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024"), with_auxiliary=False).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=6))
    images = np.stack([scene(i, size=(260, 129)) for i in range(3)])
    fp16 = TorchBackend(net=copy.deepcopy(net), device="cuda", precision="fp16")
    quantized = TorchBackend(net=copy.deepcopy(net), device="cuda", precision="fp8")
    fp16.load(), quantized.load()
    assert isinstance(quantized.net.decode_head.bottleneck, Fp8Conv3x3)
    quantized.warm_up([(3, 129, 260)])
    assert quantized.describe()["cuda_graphs"] == 1
    # random weights leave many pixels near a tie between classes (0.99875 with the trained model)
    assert (quantized.infer(images) == fp16.infer(images)).mean() > 0.95


class StagingRecorder(TorchBackend):
    """The CPU torch backend, recording the thread that stages each image and giving its batches
    staged objects of its own, as a GPU backend's are."""

    def __init__(self, net):
        super().__init__(net=net)
        self.stage_threads: list[str] = []

    def stage(self, pixels):
        self.stage_threads.append(threading.current_thread().name)
        return ("staged", pixels.copy())

    def infer_images(self, staged):
        assert all(tag == "staged" for tag, _ in staged)
        return super().infer_images([pixels for _, pixels in staged])


def test_runtime_stages_each_image_in_a_codec_thread_and_batches_the_staged_items():
    backend = StagingRecorder(small_net(seed=3))
    images = [scene(40 + i) for i in range(6)]
    with running_server(backend, max_batch_size=4, max_queue_delay_ms=50) as url:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda im: post(url, image_bytes(im)), images))
    assert all(r.status_code == 200 for r in responses)
    assert len(backend.stage_threads) == 6 and all(name.startswith("codec") for name in backend.stage_threads)
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1
    for image, response in zip(images, responses):
        assert np.array_equal(labels_of(response), backend.infer(image[None].copy())[0])
