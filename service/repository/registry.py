"""The models one server serves, by name and version, and the model-control operations on them.

Start-up loads every ``--model`` and every ``--model-repository`` folder, then sets the requests'
memory budget (``default_budget`` after warm-up, so it counts the models) and opens them all at
once: the server is ready when all start-up models are. At run time (``--enable-model-control``)
``load`` reads a repository folder again and starts its versions beside the served ones, swapping
them in only once they are warmed up; ``unload`` takes a model out of the table (new requests get
404), lets its accepted requests finish (up to ``drain_timeout_s``), then frees it. A load that
fails, or does not fit (``capacity``), leaves the served models as they were. One control
operation runs at a time.

The default model of ``/segment`` (no ``model=``) is the first served in start-up order.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import torch

from model.safe_load import CheckpointError
from service.admission import MemoryBudget, default_budget
from service.backends import Backend
from service.errors import (
    InsufficientMemory,
    ModelLoadFailed,
    ModelNotFound,
    NotReady,
    ServiceError,
)
from service.metrics import ServiceMetrics
from service.repository import specs
from service.repository.specs import ModelSpec
from service.runtime import Runtime
from service.settings import Settings

log = logging.getLogger("service")
CONTROL_POLL_S = 0.1  # workers: how often each looks for the group's control operations
CONTROL_TIMEOUT_S = 600.0  # workers: a load's warm-up on every worker, beyond the drain window


class Repository:
    def __init__(self, settings: Settings, metrics: ServiceMetrics, backend: Backend | None = None):
        """``backend``: an already built backend for the first model (tests inject small ones)."""
        self.settings = settings
        self.metrics = metrics
        self.memory = MemoryBudget()
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="codec")
        self.served: dict[str, dict[str, Runtime]] = {}  # name -> version -> runtime, in start-up order
        self.loading: list[Runtime] = []  # start-up models not loaded yet (their names may be unknown)
        self.failed: dict[str, str] = {}  # name -> why its last load failed (repository index)
        self.started = False  # the start-up models are open
        self.peers = None  # service.workers.Peers when this is one of several worker processes
        self.draining = False
        self.start_error: Exception | None = None  # set by the app when ``start`` failed
        self._control = asyncio.Lock()
        self._follower: asyncio.Future | None = None  # applies the other workers' control operations
        self._injected = backend

    # start-up and shutdown

    def _start_specs(self) -> list[ModelSpec]:
        s = self.settings
        entries = [specs.parse_entry(e) for e in s.model]
        if s.model_repository is not None:
            for name in specs.repository_names(s.model_repository):
                entries += specs.read_model(s.model_repository, name)
        return entries or [ModelSpec(None)]

    def _runtime(self, spec: ModelSpec, backend: Backend | None = None) -> Runtime:
        return Runtime(spec, spec.settings(self.settings), self.metrics, self.pool, self.memory, backend)

    async def start(self) -> None:
        """Load and warm up every start-up model, one after the other, then open them together."""
        first, *rest = self._start_specs()
        self.loading = [self._runtime(first, self._injected), *(self._runtime(spec) for spec in rest)]
        for runtime in list(self.loading):
            await runtime.start()
            if runtime.version in self.served.get(runtime.name, {}):
                raise ValueError(f"two models are named {runtime.name!r}: name them with --model NAME=PATH")
            self.served.setdefault(runtime.name, {})[runtime.version] = runtime
            self.loading.remove(runtime)
        s = self.settings
        self.memory.budget_bytes = s.memory_budget_bytes or default_budget(s.memory_budget_fraction)
        if self.memory.budget_bytes < 64 << 20:
            log.warning("memory budget under 64 MB: large images will get 413; raise the memory limit or set memory_budget_bytes")
        self.metrics.track_memory(self.memory)
        for runtime in self.runtimes():
            runtime.open()
        self.started = True
        self.metrics.ready.set(1)
        if self.peers is not None:
            self.peers.mark(True)
            self._follower = asyncio.ensure_future(self._follow_control())
        log.info("ready", extra={"models": self.names(), "memory_budget_bytes": self.memory.budget_bytes})

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        for runtime in self.runtimes():
            await runtime.stop()
        self.pool.shutdown(wait=True)

    # lookups

    def runtimes(self) -> list[Runtime]:
        return [r for versions in self.served.values() for r in versions.values()]

    def names(self) -> list[str]:
        return list(self.served)

    def versions(self, name: str) -> list[str]:
        """Served versions of ``name``, highest first."""
        return sorted(self.served.get(name, {}), key=int, reverse=True)

    def get(self, name: str | None = None, version: str | None = None) -> Runtime:
        """The runtime for ``name`` (None: the default model) at ``version`` (None: the highest
        served): 404 for an unknown model or version, 503 while start-up models are loading."""
        if name is None:
            if not self.served:
                raise NotReady("the models are still loading") if self.loading else ModelNotFound("no model is served")
            name = next(iter(self.served))
        if name not in self.served:
            if self.loading:
                raise NotReady("a model is still loading")
            raise ModelNotFound(f"unknown model {name!r}; this server serves {self.names()}")
        if version in (None, ""):
            return self.served[name][self.versions(name)[0]]
        if version not in self.served[name]:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; its versions: {self.versions(name)}")
        return self.served[name][version]

    @property
    def ready(self) -> bool:
        """Start-up models loaded and warmed up, and not draining."""
        return self.started and not self.draining and (self.peers is None or self.peers.all_ready())

    # drain (SIGTERM)

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.runtimes())

    def begin_drain(self) -> None:
        """Stop admitting everywhere (plain attribute writes: safe inside a signal handler)."""
        self.draining = True
        self.metrics.ready.set(0)
        if self.peers is not None:
            self.peers.mark(False)
        for runtime in self.runtimes():
            runtime.begin_drain()

    async def drain(self, timeout_s: float) -> bool:
        """Every model's ``Runtime.drain`` at once; True if everything finished."""
        return all(await asyncio.gather(*(r.drain(timeout_s) for r in self.runtimes())))

    # model control

    def index(self) -> list[dict]:
        """Every model known here: served, failed, or a repository folder not loaded."""
        rows = {}
        if self.settings.model_repository is not None and self.settings.model_repository.is_dir():
            for name in specs.repository_names(self.settings.model_repository):
                rows[name] = [{"name": name, "state": "UNAVAILABLE", "reason": self.failed.get(name, "unloaded")}]
        for name in self.served:
            rows[name] = [{"name": name, "version": v, "state": "READY", "reason": ""} for v in self.versions(name)]
        for runtime in self.loading:
            if runtime.name is not None:
                rows[runtime.name] = [{"name": runtime.name, "version": runtime.version, "state": "LOADING", "reason": ""}]
        return [row for name in sorted(rows) for row in rows[name]]

    def _specs_for(self, name: str, config: dict | None) -> list[ModelSpec]:
        root = self.settings.model_repository
        if root is not None and (root / name).is_dir():
            return specs.read_model(root, name, config)
        started = [specs.parse_entry(e) for e in self.settings.model]
        named = [s for s in started if s.name == name or (s.name is None and s.source == name)]
        if not named:
            where = f"the model repository {root}" if root is not None else "the start-up --model list (no --model-repository)"
            raise ModelNotFound(f"no model {name!r} in {where}")
        extra = specs.model_file(config or {}, name).overrides()
        return [ModelSpec(s.source, name, s.version, extra) for s in named]

    async def control(self, op: str, name: str, config: dict | None = None) -> None:
        """``load`` or ``unload``; in one of several workers, on every worker, answered once all
        have applied it (the first failure is raised, naming the workers that failed)."""
        if self.peers is None:
            return await (self.load(name, config) if op == "load" else self.unload(name))
        ops = self.peers.control
        seq = ops.submit({"op": op, "name": name, "config": config})
        outcomes = await ops.outcomes(seq, self.settings.drain_timeout_s + CONTROL_TIMEOUT_S)
        failed = {i: o for i, o in outcomes.items() if o["status"] != 200}
        missing = sorted(set(range(ops.count)) - set(outcomes))
        if missing:
            raise NotReady(f"workers {missing} did not apply the {op} of {name!r} in time")
        if failed:
            first = next(iter(failed.values()))
            error = ServiceError(f"{op} of {name!r} failed on workers {sorted(failed)} of {ops.count}: {first['detail']}")
            error.status, error.code = first["status"], first["code"]
            raise error

    async def _follow_control(self) -> None:
        """Apply the group's control operations in order, this worker's own included."""
        ops, seen = self.peers.control, 0
        while True:
            for seq, op in ops.ops_after(seen):
                seen = seq
                try:
                    await (self.load(op["name"], op["config"]) if op["op"] == "load" else self.unload(op["name"]))
                    ops.report(seq, {"status": 200})
                except ServiceError as exc:
                    ops.report(seq, {"status": exc.status, "code": exc.code, "detail": exc.detail})
                except Exception as exc:  # answered, so the receiving worker is not left waiting
                    log.exception("control operation failed", extra={"op": op})
                    ops.report(seq, {"status": 500, "code": "internal_error", "detail": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(CONTROL_POLL_S)

    async def load(self, name: str, config: dict | None = None) -> None:
        """Load (or replace) ``name``: its new versions start beside the served models and are
        swapped in when warmed up; the versions they replace are then unloaded."""
        async with self._control:
            if self.draining:
                raise NotReady("the server is draining")
            try:
                new = [self._runtime(spec) for spec in self._specs_for(name, config)]
            except ModelLoadFailed as exc:
                self.failed[name] = exc.detail
                raise
            started = []
            try:
                for runtime in new:
                    started.append(runtime)
                    await runtime.start()
            except BaseException as exc:
                for runtime in started:
                    await runtime.stop()
                    await runtime.release()
                error = _load_error(name, exc)
                self.failed[name] = error.detail
                raise error from None
            old = self.served.get(name, {})
            self.served[name] = {r.version: r for r in new}  # a replaced model keeps its place
            self.failed.pop(name, None)
            for runtime in new:
                runtime.open()
            log.info("model loaded", extra={"model": name, "versions": self.versions(name)})
            await self._retire(name, list(old.values()))

    async def unload(self, name: str) -> None:
        """Take ``name`` out of service and free it once its accepted requests are answered."""
        async with self._control:
            if name not in self.served:
                raise ModelNotFound(f"model {name!r} is not loaded")
            await self._retire(name, list(self.served.pop(name).values()))
            log.info("model unloaded", extra={"model": name})

    async def _retire(self, name: str, runtimes: list[Runtime]) -> None:
        for runtime in runtimes:
            runtime.begin_drain()
        if not all(await asyncio.gather(*(r.drain(self.settings.drain_timeout_s) for r in runtimes))):
            log.warning("unload: drain window closed", extra={"model": name})
        for runtime in runtimes:
            await runtime.stop()
            await runtime.release()


def _load_error(name: str, exc: BaseException) -> ServiceError:
    """A failed load as the client's error: 507 when the device ran out of memory."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError):
        return InsufficientMemory(f"model {name!r} ran out of device memory while loading: {str(exc).splitlines()[0]}")
    if isinstance(exc, (CheckpointError, ValueError, OSError, RuntimeError)):
        return ModelLoadFailed(f"cannot load model {name!r}: {exc}")
    raise exc
