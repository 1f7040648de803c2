"""GPU series read from NVML at scrape time, the way Triton and dcgm-exporter read them.

Utilisation, memory used and total, temperature and power per device, labelled ``gpu`` (NVML's
index), plus ``deeplab_gpu_info{gpu,name,uuid}``. Read when Prometheus scrapes, not sampled by a
thread, so the values are as fresh as the scrape and cost nothing between scrapes. Without an
NVIDIA driver, or without nvidia-ml-py, the collector yields no series at all (and raises
nothing): a CPU replica must not export zeros that would read as an idle GPU. A value the device
does not report (power or utilisation on a MIG slice, say) is left out rather than faked.

NVML sees the GPUs of the container (all the host's outside one), not only the one the models
compute on; ``deeplab_model_info{device}`` says which device each model uses.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("service")

# name -> (help, labels); every series this collector can export
SERIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "deeplab_gpu_info": ("GPU seen by NVML (value is always 1)", ("gpu", "name", "uuid")),
    "deeplab_gpu_utilization_ratio": (
        "Fraction of NVML's last sample period (1/6 s to 1 s) during which a kernel ran on the GPU", ("gpu",)
    ),
    "deeplab_gpu_memory_used_bytes": ("Device memory in use, by every process on the GPU", ("gpu",)),
    "deeplab_gpu_memory_total_bytes": ("Device memory of the GPU", ("gpu",)),
    "deeplab_gpu_temperature_celsius": ("GPU core temperature", ("gpu",)),
    "deeplab_gpu_power_watts": ("Power drawn by the GPU board", ("gpu",)),
}

# per-device value readers: series -> f(nvml, handle)
_READERS = {
    "deeplab_gpu_utilization_ratio": lambda nvml, h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100,
    "deeplab_gpu_memory_used_bytes": lambda nvml, h: nvml.nvmlDeviceGetMemoryInfo(h).used,
    "deeplab_gpu_memory_total_bytes": lambda nvml, h: nvml.nvmlDeviceGetMemoryInfo(h).total,
    "deeplab_gpu_temperature_celsius": lambda nvml, h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
    "deeplab_gpu_power_watts": lambda nvml, h: nvml.nvmlDeviceGetPowerUsage(h) / 1000,  # mW
}


@functools.cache
def load_nvml():
    """The initialised ``pynvml`` module, or None without nvidia-ml-py or an NVIDIA driver. NVML is
    initialised once per process (it is process-wide state in the driver library anyway)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("no NVML: no GPU metrics", extra={"reason": str(exc)})
        return None
    return pynvml


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # bytes in old nvidia-ml-py


class GpuCollector(Collector):
    def __init__(self, nvml=None):
        """``nvml``: an initialised NVML binding (default: ``load_nvml()``; None = no GPU)."""
        self.nvml = nvml if nvml is not None else load_nvml()
        self.devices: list[tuple[str, object]] = []  # (NVML index as text, handle)
        if self.nvml is not None:
            try:
                self.devices = [(str(i), self.nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(self.nvml.nvmlDeviceGetCount())]
            except self.nvml.NVMLError as exc:
                log.warning("NVML lists no GPU: no GPU metrics", extra={"reason": str(exc)})

    def describe(self) -> list[GaugeMetricFamily]:
        """The series' names and labels (the registry checks them for clashes; no NVML call)."""
        return [GaugeMetricFamily(name, text, labels=list(labels)) for name, (text, labels) in SERIES.items()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self.devices:
            return
        nvml = self.nvml
        families = {family.name: family for family in self.describe()}
        for gpu, handle in self.devices:
            try:
                families["deeplab_gpu_info"].add_metric(
                    [gpu, _text(nvml.nvmlDeviceGetName(handle)), _text(nvml.nvmlDeviceGetUUID(handle))], 1
                )
            except nvml.NVMLError:
                pass  # the other series still name the GPU by its index
            for name, read in _READERS.items():
                try:
                    families[name].add_metric([gpu], read(nvml, handle))
                except nvml.NVMLError:
                    continue  # not supported on this device, or it failed this once: no sample
        yield from (family for family in families.values() if family.samples)
