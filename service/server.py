"""Running the app under uvicorn, with a graceful drain on SIGTERM.

uvicorn's own SIGTERM handling stops listening at once, so a pod would refuse connections while
Kubernetes still routes traffic to it. Instead the first SIGTERM only starts draining: /readyz
turns 503 and new /segment requests get 503 while accepted ones finish, except queued ones that
cannot finish within ``drain_timeout_s`` (refused at once with 503 + Retry-After, see
``Runtime.drain``); when none is left (or the window has closed and what was still queued has
been refused) uvicorn shuts down normally and the process exits 0. A second
SIGTERM or a SIGINT falls back to uvicorn's immediate shutdown. If the model cannot be loaded
(e.g. a precision its backend cannot run) the server shuts down at once and ``serve`` exits
non-zero with the one-line reason (a traceback would bury it in a pod's log).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import logging
import signal
import threading

import uvicorn
from fastapi import FastAPI

from service import workers
from service.app import create_app
from service.backends import Backend
from service.front import protocol_for
from service.logs import configure
from service.oip import grpc as oip_grpc
from service.repository.registry import Repository
from service.settings import Settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, repository: Repository):
        super().__init__(config)
        self.repository = repository
        self.grpc = None  # the Open Inference Protocol's gRPC server, when grpc_port is set
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.repository.start_error is None and self.repository.settings.grpc_port:
            try:  # gRPC on this loop, beside HTTP: the same runtime, batcher and drain
                self.grpc = await oip_grpc.start(self.config.app, self.repository.settings)
            except OSError as exc:
                self.repository.start_error = exc
        if self.repository.start_error is not None:
            self.should_exit = True  # the main loop ends at its first tick, then a normal shutdown

    async def shutdown(self, sockets=None) -> None:
        """gRPC stops first (the drain has already let its requests finish), then HTTP and the runtime."""
        if self.grpc is not None:
            await self.grpc.stop(self.config.timeout_graceful_shutdown)
        await super().shutdown(sockets)

    def handle_exit(self, sig, frame) -> None:
        if sig != signal.SIGTERM or self.repository.draining or self._loop is None:
            return super().handle_exit(sig, frame)
        self.repository.begin_drain()
        self._loop.call_soon_threadsafe(self._loop.create_task, self._drain_then_exit(), context=contextvars.Context())  # not the last request's id

    async def _drain_then_exit(self) -> None:
        timeout = self.repository.settings.drain_timeout_s
        log.info("draining", extra={"active": self.repository.in_flight, "timeout_s": timeout})
        finished = await self.repository.drain(timeout)  # refuses what cannot finish in time (503)
        log.info("drained" if finished else "drain timeout: shutting down, batches computing get the close's grace")
        self.should_exit = True


def build_server(settings: Settings, backend: Backend | None = None) -> DrainingServer:
    app: FastAPI = create_app(settings, backend)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # logging is configured by service.logs
        access_log=False,
        timeout_graceful_shutdown=5,  # connections are idle by then: the drain already waited
        lifespan="on",
        http=protocol_for(settings),  # header/body limits and timeouts, connection cap (service.front)
        ws="none",  # no WebSocket routes: an Upgrade is ignored rather than handed to a ws library
        timeout_keep_alive=settings.keepalive_timeout_s,
    )
    return DrainingServer(config, app.state.repository)


def prepare(settings: Settings) -> None:
    """Logging, and the kernel cache's place before any kernel compiles (an explicit TRITON_CACHE_DIR wins)."""
    configure(settings.log_level, settings.log_format)
    if settings.cache_dir is not None:
        os.environ.setdefault("TRITON_CACHE_DIR", str(settings.cache_dir / "triton"))


def exit_if_failed(server: DrainingServer) -> None:
    if server.repository.start_error is not None:
        raise SystemExit(f"deeplab-serve: cannot start: {server.repository.start_error}")


def serve(settings: Settings, backend: Backend | None = None) -> None:
    """Run until shut down; ``SystemExit`` with the one-line reason when the configuration (e.g. a
    bad API keys file) or the model cannot be loaded. ``workers`` > 1: ``service.workers``."""
    prepare(settings)
    if settings.workers > 1 and backend is None:
        return workers.supervise(settings, serve_worker)
    try:
        server = build_server(settings, backend)
    except ValueError as exc:
        raise SystemExit(f"deeplab-serve: cannot start: {exc}") from None
    server.run()
    exit_if_failed(server)


def serve_worker(settings: Settings, port: int, peers: workers.Peers) -> None:
    """One of ``workers`` processes: the single-process server on its own socket of the port,
    ready and drained with the group, publishing its metrics for the others."""
    prepare(settings)
    try:
        server = build_server(settings)
    except ValueError as exc:
        raise SystemExit(f"deeplab-serve: cannot start: {exc}") from None
    server.repository.peers = peers
    stop = threading.Event()
    publisher = threading.Thread(target=workers.publish_metrics, args=(peers, server.repository.metrics.render, stop), daemon=True)
    publisher.start()
    sock = workers.reuse_port_socket(settings.host, port)
    sock.listen(2048)
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        peers.mark(False)
    exit_if_failed(server)
