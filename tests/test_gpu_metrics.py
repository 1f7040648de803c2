"""The GPU collector: no series (and no error) without NVML; the series' format with devices."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest
from deploy_support import require_tool
from prometheus_client import CollectorRegistry, generate_latest

from service.gpu_metrics import SERIES, GpuCollector, load_nvml
from helpers import metric


def test_without_nvml_there_are_no_gpu_series_and_no_error():
    """On this machine for real: no NVIDIA driver (or no GPU), so the real collector, NVML loaded the
    way the service loads it, yields nothing; where a GPU is present it yields every device."""
    registry = CollectorRegistry()
    registry.register(GpuCollector())
    text = generate_latest(registry).decode()
    nvml = load_nvml()
    if nvml is None:
        assert text == ""
    else:
        assert metric(text, "deeplab_gpu_info") == nvml.nvmlDeviceGetCount() > 0


class FakeNvml:
    """Stands in for pynvml ONLY to check the exposition format: NVML cannot run on this machine,
    which has no NVIDIA GPU (the real binding is exercised by the test above wherever one is).
    Device 1 reports no power and no utilisation, as a MIG slice does."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    DEVICES = [
        {"name": "NVIDIA H200", "uuid": "GPU-0000", "util": 87, "used": 3 << 30, "total": 141 << 30, "temp": 61, "power_mw": 412_500},
        {"name": b"NVIDIA A100", "uuid": b"GPU-1111", "util": None, "used": 1 << 30, "total": 40 << 30, "temp": 44, "power_mw": None},
    ]

    def nvmlDeviceGetCount(self):
        return len(self.DEVICES)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.DEVICES[index]

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetUUID(self, handle):
        return handle["uuid"]

    def _supported(self, value):
        if value is None:
            raise self.NVMLError("Not Supported")
        return value

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self._supported(handle["util"]), memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=handle["used"], total=handle["total"], free=handle["total"] - handle["used"])

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return handle["temp"]

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._supported(handle["power_mw"])


@pytest.fixture
def exposition() -> str:
    registry = CollectorRegistry()
    registry.register(GpuCollector(FakeNvml()))
    return generate_latest(registry).decode()


def test_series_names_labels_and_units(exposition):
    assert 'deeplab_gpu_info{gpu="0",name="NVIDIA H200",uuid="GPU-0000"} 1.0' in exposition
    assert 'deeplab_gpu_info{gpu="1",name="NVIDIA A100",uuid="GPU-1111"} 1.0' in exposition  # bytes decoded
    assert metric(exposition, "deeplab_gpu_utilization_ratio", gpu="0") == 0.87
    assert metric(exposition, "deeplab_gpu_memory_used_bytes", gpu="0") == 3 << 30
    assert metric(exposition, "deeplab_gpu_memory_total_bytes", gpu="1") == 40 << 30
    assert metric(exposition, "deeplab_gpu_temperature_celsius", gpu="1") == 44
    assert metric(exposition, "deeplab_gpu_power_watts", gpu="0") == 412.5
    names = {line.split("{")[0] for line in exposition.splitlines() if not line.startswith("#")}
    assert names == set(SERIES)


def test_a_value_the_device_does_not_report_is_left_out(exposition):
    lines = [line for line in exposition.splitlines() if 'gpu="1"' in line]
    assert not [line for line in lines if line.startswith(("deeplab_gpu_power_watts", "deeplab_gpu_utilization_ratio"))]
    assert len(lines) == 4  # info, memory used and total, temperature


def test_exposition_passes_promtool(exposition):
    promtool = require_tool("promtool")
    proc = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
