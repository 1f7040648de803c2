"""Backend registry and selection, precision per backend, the runtime's admission, and the torch
backend's contract (uint8 RGB batch in, uint8 labels out)."""

from __future__ import annotations

import asyncio
import dataclasses
import copy
import hashlib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from helpers import (
    REPO,
    SCALE,
    image_bytes,
    labels_of,
    metric,
    post,
    randomize,
    running_server,
    scene,
    small_net,
)

from export.engines.metadata import ExportMetadata, write_sidecar
from model import DEFAULT_MODEL, build_model, get_config
from model.accel import fp8
from model.accel.fast import Fp8Conv3x3, Fp8Stage
from model.pipeline import Segmenter
from model.pipeline.inference import TTA_RATIOS
from model.pipeline.buckets import InputPolicy
from model.precision import Precision, UnsupportedPrecision
from service.backends import BACKENDS, Backend, create_backend, resolve_backend_name
from service.backends.onnxruntime import OnnxRuntimeBackend
from service.backends import pytorch as pytorch_backend
from service.backends.pytorch import TorchBackend
from service.backends.tensorrt import TensorRTBackend
from service.errors import InsufficientMemory, NotReady, QueueFull
from service.metrics import ServiceMetrics
from model.accel.cuda_graphs import MAX_PADDING
from model.pipeline.buckets import batch_ladder
from service.admission import MemoryBudget
from service.repository import capacity
from service.repository.specs import ModelSpec
from service.runtime import Runtime
from service.settings import Settings, choices_of


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


def test_backends_are_registered_by_class_and_settings_offer_exactly_those():
    assert BACKENDS == {"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend, "tensorrt": TensorRTBackend}
    assert all(issubclass(cls, Backend) and cls.extensions for cls in BACKENDS.values())
    suffixes = [ext for cls in BACKENDS.values() for ext in cls.extensions]
    assert len(suffixes) == len(set(suffixes))  # each extension selects one backend
    for name, cls in BACKENDS.items():
        for ext in cls.extensions:
            assert resolve_backend_name(f"model{ext.upper()}") == name
    assert choices_of("backend") == ["auto", *BACKENDS]
    with pytest.raises(ValueError, match="backend"):
        Settings(backend="tflite")


def test_registry_imports_no_engine_package():
    """An image without onnxruntime or tensorrt must still import the registry (engines load lazily)."""
    code = "import sys, service.backends; print(sorted({'onnxruntime', 'tensorrt'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_options_reach_only_the_backends_that_declare_them():
    torch_backend = create_backend(None, "torch", "cpu", cuda_graphs=False)
    assert torch_backend.cuda_graphs is False
    onnx_backend = create_backend("m.onnx", cuda_graphs=False)  # not an option of onnxruntime: ignored
    assert type(onnx_backend) is OnnxRuntimeBackend and not hasattr(onnx_backend, "cuda_graphs")


@pytest.mark.parametrize("native_bf16,expected", [(False, Precision.FP32), (True, Precision.BF16)])
def test_torch_backend_auto_precision_on_cpu_is_bf16_where_the_cpu_has_it_and_explicit_ones_are_kept(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(pytorch_backend, "cpu_has_native_bf16", lambda: native_bf16)
    auto = TorchBackend(net=small_net())
    assert auto.precision is None  # nothing runs before load
    auto.load()
    assert auto.precision is expected and next(auto.net.parameters()).dtype == expected.dtype
    fp32 = TorchBackend(net=small_net(), precision="fp32")
    fp32.load()
    assert fp32.precision is Precision.FP32
    bf16 = TorchBackend(net=small_net(), precision="bf16")
    bf16.load()
    assert bf16.precision is Precision.BF16


@pytest.mark.parametrize(
    "flags,native",
    [
        ("fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
        ("fpu sse2 avx2 avx512f avx512bw amx_bf16 amx_tile", True),  # Intel Sapphire Rapids
        ("fpu sse2 avx2 avx512f avx512bw avx512dq avx512vl", False),  # AVX-512 without bf16: emulated, slower
        (None, False),  # no /proc/cpuinfo (not Linux)
    ],
)
def test_native_bf16_is_read_from_the_cpus_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert pytorch_backend.cpu_has_native_bf16(cpuinfo) is native


@pytest.mark.parametrize(
    "backend,message",
    [
        (lambda: TorchBackend(net=small_net(), precision="fp8"), r"torch backend on cpu runs fp32, fp16, bf16, not fp8 \(fp8 needs a Hopper"),
        (lambda: TorchBackend(net=small_net(), precision="fp64"), r"unknown precision 'fp64'; choose from fp32, fp16, bf16, fp8"),
        (lambda: OnnxRuntimeBackend("m.onnx", precision="fp16"), r"onnxruntime backend on cpu runs fp32, not fp16"),
        (lambda: OnnxRuntimeBackend("m.onnx", precision="bf16"), r"runs fp32, not bf16"),
    ],
)
def test_unsupported_precision_is_refused_at_load_naming_the_supported_ones(backend, message):
    with pytest.raises(UnsupportedPrecision, match=message):
        backend().load()


class SidecarOnlyRunner:
    """Stands in for TensorRT's EngineRunner where TensorRT cannot run (no GPU here): it reads the
    real sidecar the way the runner does and nothing else."""

    def __init__(self, engine_path, device):
        from export.engines.metadata import read_sidecar

        self.meta, self.build = read_sidecar(engine_path)


@pytest.fixture
def engine_file(tmp_path, monkeypatch):
    """An engine file with a sidecar written by the same function build_engine uses."""
    monkeypatch.setattr("service.backends.tensorrt.EngineRunner", SidecarOnlyRunner)
    net = small_net()
    net.meta = {"command": "python -m model.training.train --data /secret/camvid", "val": {"mIoU": 61.5}}
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized engine")

    def write(**build):
        write_sidecar(engine, ExportMetadata.from_model(net, "labels"), profile={}, **build)
        return str(engine)

    return write


@pytest.mark.parametrize("requested", ["auto", "fp16"])
def test_tensorrt_backend_runs_the_precision_its_engine_was_built_with(engine_file, requested):
    backend = create_backend(engine_file(precision="fp16"), "auto", "cuda", requested)
    backend.load()
    assert backend.precision is Precision.FP16
    assert backend.provenance == {"file": "m.engine", "sha256": hashlib.sha256(b"serialized engine").hexdigest(), "val_miou": 61.5}


def test_tensorrt_backend_refuses_another_precision_than_its_engine(engine_file):
    with pytest.raises(UnsupportedPrecision, match="tensorrt backend on cuda runs fp16, not fp32.*rebuild"):
        create_backend(engine_file(precision="fp16"), "auto", "cuda", "fp32").load()
    with pytest.raises(UnsupportedPrecision, match="does not record the engine's precision"):
        create_backend(engine_file(), "auto", "cuda", "auto").load()


def test_torch_backend_matches_the_model_and_returns_uint8_labels():
    net = small_net(seed=3)
    backend = TorchBackend(net=copy.deepcopy(net), precision="fp32")
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


def runtime_for(settings: Settings, backend) -> Runtime:
    """One model's runtime as the repository builds it, with its own codec threads and budget."""
    return Runtime(ModelSpec(None), settings, ServiceMetrics(), ThreadPoolExecutor(2), MemoryBudget(1 << 30), backend)


def test_batch_ladder_keeps_padding_under_half_and_start_up_logarithmic():
    for top in (1, 5, 8, 32, 48, 100, 256):
        ladder = batch_ladder(top)
        assert ladder[0] == 1 and ladder[-1] == top and ladder == sorted(set(ladder))
        assert all(b <= MAX_PADDING * (a + 1) for a, b in zip(ladder, ladder[1:]))  # a batch of a+1 pads to b
    assert batch_ladder(32) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32] and len(batch_ladder(256)) == 16


def test_warm_up_covers_the_main_buckets_at_the_ladders_batch_sizes_on_cuda():
    policy = InputPolicy((480, 360), (124, 116, 104))
    main, rest = policy.warm_up_shapes(4, per_batch_size=True)
    assert main == [(4, 360, 480), (4, 480, 360)]  # tuned: what a loaded server runs
    assert set(rest) == {(n, 360, 480) for n in range(1, 4)} | {(n, 480, 360) for n in range(1, 4)}
    assert len(policy.warm_up_shapes(256, per_batch_size=True)[1]) == 2 * 15  # the ladder, not 255 sizes
    assert policy.warm_up_shapes(4, per_batch_size=False) == ([(1, 360, 480), (1, 480, 360)], [])
    # the runtime only decides by device whether shapes are specialised per batch size
    runtime = runtime_for(Settings(device="cuda", max_batch_size=4), TorchBackend(net=small_net(), device="cuda"))
    runtime.policy = policy
    assert runtime.warm_up_shapes() == (main, rest)
    runtime.backend.device = "cpu"
    assert runtime.warm_up_shapes() == ([(1, 360, 480), (1, 480, 360)], [])


class GatedBackend(TorchBackend):
    """The CPU torch backend whose batches, once ``gated``, wait for ``gate`` (signalling
    ``computing`` first): a batch held in flight for as long as the test needs."""

    def __init__(self, net):
        super().__init__(net=net)
        self.gated = False
        self.computing, self.gate = threading.Event(), threading.Event()

    def infer(self, batch):
        if self.gated:
            self.computing.set()
            self.gate.wait(60)
        return super().infer(batch)


def test_admit_refuses_while_loading_when_full_and_while_draining_and_counts_in_flight():
    async def admitted(runtime, data):
        async with runtime.admit():
            with runtime.reserve(data, "png") as reservation:
                return await runtime.segment(data, reservation)

    async def queued(runtime, depth):
        while metric(runtime.service_metrics.render().decode(), "deeplab_queue_depth") < depth:
            await asyncio.sleep(0.01)  # waits on the queue-depth metric, not for a time

    async def scenario():
        backend = GatedBackend(small_net())
        settings = Settings(device="cpu", max_batch_size=1, queue_capacity=1, max_queue_delay_ms=0)
        runtime = runtime_for(settings, backend)
        with pytest.raises(NotReady, match="loading"):
            async with runtime.admit():
                pass
        await runtime.start()
        runtime.open()
        backend.gated = True
        data = image_bytes(scene(1))
        first = asyncio.ensure_future(admitted(runtime, data))
        await asyncio.to_thread(backend.computing.wait, 60)  # the first batch is computing
        second = asyncio.ensure_future(admitted(runtime, data))
        await queued(runtime, 1)  # the second waits in the queue, which is now at capacity
        assert runtime.in_flight == 2
        with pytest.raises(QueueFull):
            async with runtime.admit():
                pass
        assert runtime.in_flight == 2  # a refused request is never counted
        runtime.begin_drain()
        with pytest.raises(NotReady, match="draining"):
            async with runtime.admit():
                pass
        assert not await runtime.wait_idle(0.05)  # two still in flight
        backend.gate.set()
        results = await asyncio.gather(first, second)
        assert await runtime.wait_idle(5) and runtime.in_flight == 0
        await runtime.stop()
        return results

    first, second = asyncio.run(scenario())
    assert np.array_equal(first.labels, second.labels) and first.labels.shape == (48, 64)


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
        auto = TorchBackend(net=copy.deepcopy(net), device="cuda")
        auto.load()
        assert auto.precision is Precision.FP16  # auto on CUDA
        cuda = TorchBackend(net=copy.deepcopy(net), device="cuda", precision="fp32", cuda_graphs=cuda_graphs)
        cuda.load()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in cuda.net.modules())
        cuda.warm_up([(3, *images.shape[1:3])])
        assert cuda.describe()["cuda_graphs"] == (1 if cuda_graphs else None)
        assert cuda.concurrent_batches == (2 if cuda_graphs else 1)
        assert (cuda.infer(images) == expected).mean() > 0.999
        assert (cuda.infer(images[1:]) == expected[1:]).mean() > 0.999  # padded into the graph of 3
        assert cuda.describe()["cuda_graphs"] == (1 if cuda_graphs else None)
        assert (cuda.infer(images[:1]) == expected[:1]).mean() > 0.999  # 3 > 1.5 x 1: its own graph, on first use
        other = np.stack([scene(10 + i, size=(40, 32)) for i in range(2)])  # an image shape first seen while serving
        assert (cuda.infer(other) == cpu.infer(other)).mean() > 0.999
        assert cuda.describe()["cuda_graphs"] == (3 if cuda_graphs else None)  # (3 and 1, 48, 64), (3, 32, 40)
        with ThreadPoolExecutor(4) as pool:  # staged from other threads, as the codec threads do
            staged = list(pool.map(cuda.stage, [*images, *images[::-1]]))
            forward, backward = pool.map(cuda.infer_images, [staged[:3], staged[3:]])
        assert (forward == expected).mean() > 0.999 and (backward == expected[::-1]).mean() > 0.999
        assert (cuda.infer_images(staged[:3]) == forward).all()  # staged inputs can be run again (batch retries)
    finally:
        torch.backends.cudnn.allow_tf32 = True


@pytest.mark.skipif(not (torch.cuda.is_available() and fp8.supported("cuda")), reason="needs a Hopper GPU (run on the GPU box)")
def test_fp8_backend_quantizes_the_bottleneck_and_layer4_and_keeps_most_fp16_labels():
    net = build_model(get_config("deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024"), with_auxiliary=False).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=6))
    images = np.stack([scene(i, size=(260, 129)) for i in range(3)])
    fp16 = TorchBackend(net=copy.deepcopy(net), device="cuda", precision="fp16")
    quantized = TorchBackend(net=copy.deepcopy(net), device="cuda", precision="fp8")
    fp16.load(), quantized.load()
    assert isinstance(quantized.net.decode_head.bottleneck, Fp8Conv3x3)
    assert isinstance(quantized.net.backbone.stages[3], Fp8Stage)
    quantized.warm_up([(3, 129, 260)])
    assert quantized.describe()["cuda_graphs"] == 1
    # random weights leave many pixels near a tie between classes: 0.903 here on an H200, where
    # a wrong kernel agrees on few; the trained model keeps 99.722% of its fp32 labels with its
    # bottleneck and layer4 in FP8 (bench/results/perf_r50_fp8_layer4_h200.json)
    assert (quantized.infer(images) == fp16.infer(images)).mean() > 0.85


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU box)")
def test_load_memory_check_on_a_gpu_reads_its_free_memory():
    """On CUDA the room for a new model is the device's free memory plus torch's unused cache: a
    model whose full batch cannot fit is refused (507) before warm-up, the same model at a batch
    that fits passes."""
    backend = TorchBackend(net=small_net(seed=1), device="cuda")
    backend.load()
    policy, budget = InputPolicy.for_config(backend.config), MemoryBudget(1 << 30)
    free = capacity.free_bytes("cuda:0", budget)
    assert 0 < free <= torch.cuda.get_device_properties(0).total_memory
    capacity.require_room(backend, policy, 1, budget, "model 'small'")
    per_image = capacity.needed_bytes(backend, policy, 2) - capacity.needed_bytes(backend, policy, 1)
    with pytest.raises(InsufficientMemory, match=r"model 'small' needs about \d+ MB on cuda.* MB is free"):
        capacity.require_room(backend, policy, free // per_image + 1, budget, "model 'small'")


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


def test_tta_serves_mmsegs_multi_scale_and_flip_test():
    """The backend's tta (on the test-scale bucket) agrees with the Segmenter's (mmseg's aug test
    on the image) where the two see the same pixels: an image already at the test scale."""
    net = small_net(seed=12)
    images = np.stack([scene(30 + i) for i in range(2)])  # 64 x 48: the test scale, one bucket, no padding
    reference = Segmenter(copy.deepcopy(net), tta=True).predict(list(images))
    tta = TorchBackend(net=copy.deepcopy(net), tta=True)
    tta.load()
    plain = TorchBackend(net=copy.deepcopy(net))
    plain.load()
    labels = tta.infer(images)
    assert all((labels[i] == reference[i]).mean() > 0.97 for i in range(2))  # resized floats vs uint8: rare ties
    assert (labels != plain.infer(images)).any()  # the augmentation changed something
    assert tta.describe()["tta"] == list(TTA_RATIOS)


def test_tta_is_refused_where_it_is_not_offered(tmp_path):
    with pytest.raises(ValueError, match="does not offer tta"):
        create_backend(str(tmp_path / "model.onnx"), tta=True)
    slide = TorchBackend(net=build_model(get_config("deeplabv3plus_r18-d8_4xb2-80k_cityscapes-769x769")).eval(), tta=True)
    with pytest.raises(ValueError, match="sliding windows"):
        slide.load()


def test_test_scale_setting_replaces_the_inference_box_and_is_torch_only(tmp_path):
    """``test_scale`` "WxH": the backend's config, and so the runtime's buckets, use that box."""
    backend = TorchBackend(net=small_net(seed=13), test_scale="128x96")
    backend.load()
    assert backend.config.test_scale == (128, 96) and InputPolicy.for_config(backend.config).full_buckets() == [(128, 96), (96, 128)]
    with pytest.raises(ValueError, match="does not offer test_scale"):
        create_backend(str(tmp_path / "model.onnx"), test_scale="128x96")
    with pytest.raises(ValueError, match="test_scale"):
        Settings(test_scale="128 by 96")


def test_built_in_model_serves_at_its_recorded_scale_unless_told_otherwise():
    """The built-in checkpoint records 480x360 (its photos' size); ``--test-scale 840x630`` serves
    the same weights at 1.75x. Either way the labels come back at the photo's size."""
    photo = image_bytes(scene(3, size=(480, 360)))
    for overrides, box in (({}, [480, 360]), ({"test_scale": "840x630"}, [840, 630])):
        with running_server(None, **overrides) as url:
            described = httpx.get(f"{url}/v1/models/{DEFAULT_MODEL}", timeout=30).json()
            assert described["input_policy"]["test_scale"] == box
            answer = post(url, photo, "json")
            assert answer.status_code == 200 and (answer.json()["width"], answer.json()["height"]) == (480, 360)
