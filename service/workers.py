"""Several server processes on one port (``workers`` > 1): one Python process's request handling
caps a small-image workload well below what a GPU computes (bench/RESULTS.md), so the front
scales by processes.

The supervisor claims the HTTP port and spawns ``workers`` processes that each listen on it with
SO_REUSEPORT (the kernel spreads new connections evenly over their sockets; one shared socket
would let whichever process wakes first take most of them), each with its own copy of every
model, batcher and budget share (``memory_budget_*`` divided among them); gRPC shares its port
the same way. What a
client or a platform reads stays one server's:

- readiness: a worker is ready only when every worker is (``ready-<i>`` marks in a shared
  run directory), and none is while any drains;
- metrics: each worker writes its exposition to the run directory every second; ``/metrics`` on
  any worker answers every worker's series, each with a ``worker`` label (``sum by`` adds them);
- SIGTERM: forwarded to every worker, each drains as a single server does; the supervisor exits
  0 when all have, else with the first failure's status.

- model control: a load or unload received by one worker is applied by every worker, in order
  (``service.worker_control``), and answered when all have.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from service.backends import visible_gpus
from service.settings import Settings
from service.worker_control import ControlLog

log = logging.getLogger("service")
PUBLISH_INTERVAL_S = 1.0


@dataclasses.dataclass
class Peers:
    """This worker's view of the group: its index, their count and the shared run directory."""

    index: int
    count: int
    run_dir: Path

    @functools.cached_property
    def control(self) -> ControlLog:
        """The group's log of load/unload operations (``service.worker_control``)."""
        return ControlLog(self.run_dir / "control", self.index, self.count)

    def mark(self, ready: bool) -> None:
        path = self.run_dir / f"ready-{self.index}"
        if ready:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def all_ready(self) -> bool:
        return all((self.run_dir / f"ready-{i}").exists() for i in range(self.count))

    def publish(self, text: bytes) -> None:
        """This worker's exposition, replaced atomically (readers never see half a file)."""
        tmp = self.run_dir / f".metrics-{self.index}.tmp"
        tmp.write_bytes(text)
        tmp.replace(self.run_dir / f"metrics-{self.index}.prom")

    def merged(self, own: bytes) -> bytes:
        """Every worker's series (this one's live, the others' last published), labelled ``worker``."""
        texts = {self.index: own.decode()}
        for i in range(self.count):
            path = self.run_dir / f"metrics-{i}.prom"
            if i != self.index and path.exists():
                texts[i] = path.read_text()
        return merge_expositions(texts)


def merge_expositions(texts: dict[int, str]) -> bytes:
    """Prometheus text expositions of several workers as one, each sample labelled ``worker``."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            _, _, lines = families.setdefault(family.name, (family.type, family.documentation, []))
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(worker)}
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{sample.name}{{{label_text}}} {floatToGoString(sample.value)}")
    out = []
    for name, (kind, doc, lines) in families.items():
        out += [f"# HELP {name} {_escape(doc)}", f"# TYPE {name} {kind}", *lines]
    return ("\n".join(out) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def publish_metrics(peers: Peers, render, stop: threading.Event) -> None:
    """A worker's thread: its exposition into the run directory every second until ``stop``."""
    while not stop.wait(PUBLISH_INTERVAL_S):
        try:
            peers.publish(render())
        except OSError as exc:  # a full or vanished run directory must not stop the worker
            log.warning("metrics publish failed", extra={"error": str(exc)})


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that other sockets of this user may bind too (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_settings(settings: Settings, index: int, gpus: int) -> Settings:
    """Worker ``index``'s share of the memory budget and of the queued work, and its device: with
    ``device=cuda`` and several GPUs, worker i serves from GPU i mod their number (each GPU its
    own front processes, rather than every worker a copy on every GPU)."""
    share = {"memory_budget_fraction": settings.memory_budget_fraction / settings.workers}
    if settings.device == "cuda" and gpus > 1:
        share["device"] = f"cuda:{index % gpus}"
    if settings.memory_budget_bytes is not None:
        share["memory_budget_bytes"] = max(1, settings.memory_budget_bytes // settings.workers)
    if settings.queue_capacity_pixels is not None:
        share["queue_capacity_pixels"] = max(1, settings.queue_capacity_pixels // settings.workers)
    return settings.model_copy(update=share)


def supervise(settings: Settings, worker: Callable[[Settings, int, Peers], None]) -> None:
    """Claim the port, spawn the workers (``worker(settings, port, peers)`` in each), forward
    SIGTERM/SIGINT, exit with the first failure's status."""
    try:  # claimed, not listened on: connections go to the workers' sockets only
        sock = reuse_port_socket(settings.host, settings.port)
    except OSError as exc:
        raise SystemExit(f"deeplab-serve: cannot start: cannot listen on {settings.host}:{settings.port}: {exc}") from None
    port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")  # no fork: torch and threads do not survive one
    with tempfile.TemporaryDirectory(prefix="deeplab-workers-") as run_dir:
        gpus = visible_gpus() if settings.device == "cuda" else 0
        procs = [
            context.Process(target=worker, args=(worker_settings(settings, i, gpus), port, Peers(i, settings.workers, Path(run_dir))), name=f"worker-{i}")
            for i in range(settings.workers)
        ]
        for proc in procs:
            proc.start()
        log.info("workers started", extra={"workers": settings.workers, "port": port, "pids": [p.pid for p in procs]})

        def forward(sig, frame):
            for proc in procs:
                if proc.is_alive():
                    os.kill(proc.pid, sig)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        status = _wait(procs)
    sock.close()
    if status:
        raise SystemExit(status)


def _wait(procs: list) -> int:
    """Until every worker has exited; a worker failing stops the others. The first non-zero status."""
    status = 0
    alive = list(procs)
    while alive:
        for proc in list(alive):
            proc.join(0.2)
            if proc.exitcode is None:
                continue
            alive.remove(proc)
            if proc.exitcode and not status:
                status = proc.exitcode if proc.exitcode > 0 else 128 - proc.exitcode
                for other in alive:
                    os.kill(other.pid, signal.SIGTERM)
    return status
