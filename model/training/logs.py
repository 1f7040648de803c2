"""Run logs: one JSON object per line in work_dir/log.jsonl, mirrored to TensorBoard if installed."""

from __future__ import annotations

import json
import time
from pathlib import Path


class RunLog:
    def __init__(self, work_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = work_dir / "log.jsonl"
        self._tb = None
        if enabled:
            work_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(work_dir / "tb"))

    def write(self, kind: str, iteration: int, **values) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "iter": iteration, "time": round(time.time(), 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{kind}/{k}", v, iteration)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
