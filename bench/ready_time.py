"""Seconds from ``python -m service`` to a 200 from /readyz, with a cold and a warm kernel cache.

Each server command runs twice against one fresh kernel cache (``--cache-dir``, set here through
TRITON_CACHE_DIR so older trees run the same way): the first
start compiles every Triton kernel (cold), the second finds them compiled (warm, what a restarted
pod with a cache volume sees). cuDNN's per-shape tuning is not cacheable and is paid both times.

    python -m bench.ready_time --serve camvid='--device cuda --max-batch-size 32' \
        --serve r50='--model /tmp/r50.pth --device cuda --precision fp8 --max-batch-size 8'

Prints a table and writes bench/results/ready_time_<hardware>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.load import free_port
from bench.model_bench import hardware, slug

RESULTS = Path(__file__).resolve().parent / "results"


def time_to_ready(args: list[str], cache: Path, cwd: Path | None = None, timeout_s: float = 300) -> dict:
    """Start the server, poll /readyz, stop it; the seconds and the model's own load/warm-up times."""
    port = free_port()
    command = [sys.executable, "-m", "service", *args, "--port", str(port)]
    # what --cache-dir sets; gRPC off. As variables: older trees lack the flags and ignore these
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache), "DEEPLAB_GRPC_PORT": "0"}
    started, started_wall = time.perf_counter(), time.time()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - started < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        ready_s = time.perf_counter() - started
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    loaded = [line for line in lines if line.get("msg") == "loaded"]
    stages = {k: loaded[0].get(k) for k in ("load_s", "warm_up_s")} if loaded else {}
    if lines and "ts" in lines[0]:  # imports, CUDA and the app before the first log line
        first = datetime.datetime.fromisoformat(lines[0]["ts"]).timestamp()
        stages["first_log_s"] = round(first - started_wall, 2)
    return {"ready_s": round(ready_s, 2), **stages}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", action="append", required=True, help="LABEL='server flags' (repeatable)")
    ap.add_argument("--tree", type=Path, help="run the server of this source tree (a same-run A/B: bench.compare_trees)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for entry in args.serve:
        label, _, flags = entry.partition("=")
        with tempfile.TemporaryDirectory() as cache:
            cold = time_to_ready([*shlex.split(flags), "--log-level", "info"], Path(cache), args.tree)
            warm = time_to_ready([*shlex.split(flags), "--log-level", "info"], Path(cache), args.tree)
        rows.append({"label": label, "flags": flags, "cold": cold, "warm": warm})
        print(f"{label:10s} cold {cold['ready_s']:6.1f} s (warm-up {cold.get('warm_up_s')} s)   "
              f"warm {warm['ready_s']:6.1f} s (warm-up {warm.get('warm_up_s')} s)   {flags}")  # fmt: skip
    hw = hardware("cuda")
    doc = {
        "benchmark": "ready_time", "hardware": hw, "date": datetime.date.today().isoformat(),
        "command": "python -m bench.ready_time " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "tree": str(args.tree or "."), "rows": rows,
    }  # fmt: skip
    out = args.out or RESULTS / f"ready_time_{slug(hw)}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
