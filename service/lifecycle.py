"""Readiness and graceful drain: the states a Kubernetes pod goes through.

``loading`` -> ``ready`` once the model is loaded and warmed up -> ``draining`` on SIGTERM. While
draining, /readyz answers 503 at once (the load balancer stops sending), new /segment requests get
503, and requests already accepted run to completion; ``wait_idle`` tells the server when the last
one has finished (or the drain timeout passed) so it can exit 0.
"""

from __future__ import annotations

import asyncio
import time


class Lifecycle:
    def __init__(self):
        self.loaded = False
        self.draining = False
        self.active = 0  # accepted /segment requests not yet answered

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    @property
    def state(self) -> str:
        return "draining" if self.draining else "ready" if self.loaded else "loading"

    async def wait_idle(self, timeout_s: float, poll_s: float = 0.02) -> bool:
        """Wait until no accepted request is left; False if ``timeout_s`` ran out first."""
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
        return not self.active
