"""Model control across worker processes: an ordered log of load/unload operations in the
workers' shared run directory.

The worker that receives ``POST /v2/repository/models/NAME/load`` (or unload) appends the
operation (``op-<seq>.json``, created exclusively, so two workers appending at once get two
numbers); every worker, the receiving one included, applies the operations in order and writes its
outcome (``done-<seq>-<worker>.json``); the receiving worker answers once every worker has. Each
worker keeps its own copy of the models, so after a failed load on some workers the others have
loaded it: the answer names the workers that failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

POLL_S = 0.1


class ControlLog:
    def __init__(self, directory: Path, index: int, count: int):
        self.dir, self.index, self.count = directory, index, count
        self.dir.mkdir(exist_ok=True)

    def _write(self, name: str, doc: dict, exclusive: bool = False) -> bool:
        """``doc`` as ``name``, complete before it appears; False if ``exclusive`` and it exists."""
        tmp = self.dir / f".{name}.{self.index}.tmp"
        tmp.write_text(json.dumps(doc))
        try:
            if exclusive:
                os.link(tmp, self.dir / name)  # fails if taken: one writer wins the number
            else:
                tmp.replace(self.dir / name)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def submit(self, op: dict) -> int:
        """Append ``op``; its sequence number."""
        seq = len(self.ops_after(0)) + 1
        while not self._write(f"op-{seq}.json", op, exclusive=True):
            seq += 1
        return seq

    def ops_after(self, seq: int) -> list[tuple[int, dict]]:
        """The operations numbered above ``seq``, in order."""
        found = sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("op-*.json"))
        return [(n, json.loads((self.dir / f"op-{n}.json").read_text())) for n in found if n > seq]

    def report(self, seq: int, outcome: dict) -> None:
        self._write(f"done-{seq}-{self.index}.json", outcome)

    async def outcomes(self, seq: int, timeout_s: float) -> dict[int, dict]:
        """Every worker's outcome of operation ``seq``; those that did not answer in time are missing."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = {i: self.dir / f"done-{seq}-{i}.json" for i in range(self.count)}
            if all(p.exists() for p in done.values()) or time.monotonic() > deadline:
                return {i: json.loads(p.read_text()) for i, p in done.items() if p.exists()}
            await asyncio.sleep(POLL_S)
