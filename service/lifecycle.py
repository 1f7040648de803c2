"""Readiness, in-flight counting and graceful drain: the states a Kubernetes pod goes through.

``loading`` -> ``ready`` once the model is loaded and warmed up -> ``draining`` on SIGTERM. While
draining, /readyz answers 503 at once (the load balancer stops sending), new /segment requests get
503, and requests already accepted run to completion unless they could not finish within the drain
timeout (``Runtime.drain`` refuses those with 503 at once); ``wait_idle`` tells the server when the
last one has finished (or the drain timeout passed) so it can exit 0.
"""

from __future__ import annotations

import asyncio

from service.errors import NotReady


class Lifecycle:
    def __init__(self):
        self.loaded = False
        self.draining = False
        self.active = 0  # accepted /segment requests not yet answered
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    @property
    def state(self) -> str:
        return "draining" if self.draining else "ready" if self.loaded else "loading"

    def require_ready(self) -> None:
        if not self.ready:
            raise NotReady(f"service is {self.state}")

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if not self.active:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no accepted request is left; False if ``timeout_s`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
