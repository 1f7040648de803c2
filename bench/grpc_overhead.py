"""What the gRPC front costs per request beside HTTP /v2: one server, the same images, the same
load tool, in the same run.

    python -m bench.grpc_overhead --label after [--concurrency 8 32] [--rounds 3]

The server runs in a child process (HTTP and gRPC on 127.0.0.1) with a tiny network (the default
config at a 64x48 test scale, random weights), so the model costs little and what differs
between the transports is the front: parsing, copies of the label maps, sockets. The images are
2048x1024 JPEGs (``--images``, default ``.devdata/city2048``; synthetic ones when that is
missing), as in the H200 run where gRPC was 31% slower, so the payloads have that run's sizes:
each answer carries a 2 MB ``LABELS`` map and its PNG (perf_analyzer asks for every output).
Triton's perf_analyzer (``bench.perf_analyzer``) drives both protocols alternately, ``--rounds``
times, so a neighbour's load on a shared machine hits both alike.

Besides req/s and p50/p99 it reads the server's CPU time per request from /proc: the event-loop
thread (both fronts run there, so it is the serial part that caps throughput on a many-core GPU
machine) and the whole process; also perf_analyzer's own. Prints a table and merges the runs into
``--out`` under ``--label`` (e.g. ``before`` and ``after`` a change).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench import perf_analyzer
from bench.load import free_port, load_images
from bench.model_bench import hardware

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "grpc_overhead_cpu.json"
TINY_SCALE = (64, 48)  # width, height the tiny network runs at
_TICK = os.sysconf("SC_CLK_TCK")
_GRPC_THREADS = ("event_engine", "grpc_global_tim", "lifeguard")  # grpc's C-core threads


def serve_tiny(port: int, grpc_port: int) -> None:
    """The child: the service on a tiny network, HTTP on ``port``, gRPC on ``grpc_port``."""
    import torch

    from model import DEFAULT_MODEL, build_model, get_config
    from service.backends.pytorch import TorchBackend
    from service.server import serve
    from service.settings import Settings

    torch.manual_seed(0)
    net = build_model(dataclasses.replace(get_config(DEFAULT_MODEL), test_scale=TINY_SCALE)).eval()
    settings = Settings(host="127.0.0.1", port=port, grpc_port=grpc_port, device="cpu", log_level="warning")
    serve(settings, TorchBackend(net=net))


def start_tiny() -> tuple[subprocess.Popen, str, str]:
    """The child server, its HTTP URL and its gRPC host:port, once /readyz answers 200."""
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.grpc_overhead", "--child", str(port), str(grpc_port)], cwd=ROOT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url, f"127.0.0.1:{grpc_port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a child process's readiness: there is no event to wait on
    proc.kill()
    raise SystemExit("the tiny server did not become ready")


def synthetic_jpegs(count: int, size=(2048, 1024)) -> list[bytes]:
    """Smooth random scenes at ``size`` (width, height), JPEG quality 90."""
    from PIL import Image

    rng, out = np.random.default_rng(0), []
    for _ in range(count):
        small = Image.fromarray(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8))
        buf = io.BytesIO()
        small.resize(size, Image.BILINEAR).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread's name and CPU seconds (user + system) so far."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (stat[stat.index("(") + 1 : stat.rindex(")")], (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def images_done(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("deeplab_images_total"))


def _per_image(seconds: float, images: float) -> float:
    return round(seconds / images * 1e3, 2)


def measure(protocol: str, address: str, url: str, pid: int, model: str, data: Path, concurrency: int, interval_ms: int, stability_pct: float, env) -> dict:
    """One perf_analyzer run and the server's (and perf_analyzer's) CPU milliseconds per image."""
    before, done_before, client_before = thread_cpu(pid), images_done(url), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = perf_analyzer.run(protocol, address, model, data, concurrency, interval_ms, stability_pct, env=env)
    after, images, client_after = thread_cpu(pid), images_done(url) - done_before, resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0 or not images:
        raise SystemExit(f"perf_analyzer over {protocol} exited {result.returncode}:\n{result.output[-2000:]}")
    spent = {tid: cpu - before.get(tid, (name, 0.0))[1] for tid, (name, cpu) in after.items()}
    grpc_core = sum(s for tid, s in spent.items() if after[tid][0] in _GRPC_THREADS)
    client = client_after.ru_utime + client_after.ru_stime - client_before.ru_utime - client_before.ru_stime
    return {
        "protocol": protocol, "concurrency": concurrency, "req_per_s": result.throughput,
        "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "images": int(images),
        "loop_cpu_ms": _per_image(spent.get(pid, 0.0), images), "grpc_core_cpu_ms": _per_image(grpc_core, images),
        "process_cpu_ms": _per_image(sum(spent.values()), images), "client_cpu_ms": _per_image(client, images),
    }  # fmt: skip


def summary(rows: list[dict]) -> list[dict]:
    """Per concurrency: each protocol's medians over the rounds, and gRPC / HTTP."""
    out = []
    for concurrency in sorted({r["concurrency"] for r in rows}):
        med = {}
        for protocol in ("http", "grpc"):
            picked = [r for r in rows if r["concurrency"] == concurrency and r["protocol"] == protocol]
            med[protocol] = {k: round(statistics.median(r[k] for r in picked), 2) for k in ("req_per_s", "p50_ms", "p99_ms", "loop_cpu_ms", "process_cpu_ms")}
        ratio = {k: round(med["grpc"][k] / med["http"][k], 3) for k in med["http"] if med["http"][k]}
        out.append({"concurrency": concurrency, **med, "grpc_over_http": ratio})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", default="run", help="the key these runs are stored under in --out (e.g. before, after)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--rounds", type=int, default=3, help="HTTP then gRPC, this many times per concurrency")
    ap.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer's measurement window")
    ap.add_argument("--stability-pct", type=float, default=30.0, help="perf_analyzer's spread allowed between 3 windows (shared machines are noisy)")
    ap.add_argument("--images", type=Path, default=ROOT / ".devdata" / "city2048", help="JPEG folder (else synthetic 2048x1024)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", nargs=2, type=int, metavar=("PORT", "GRPC_PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        serve_tiny(*args.child)
        return {}

    env = perf_analyzer.environment()
    if missing := perf_analyzer.missing_libraries(env):
        raise SystemExit(f"perf_analyzer cannot load {missing}; see bench/perf_analyzer.py")
    found = args.images.is_dir() and any(args.images.glob("*.jpg"))
    images, source = load_images(args.images, 16) if found else (synthetic_jpegs(8), "8 synthetic 2048x1024 JPEGs")
    data = perf_analyzer.write_input_data(Path(tempfile.mkdtemp()) / "images.json", images)
    proc, url, grpc_address = start_tiny()
    rows = []
    try:
        model = httpx.get(f"{url}/v1/models").json()["default"]
        for concurrency in args.concurrency:
            for _ in range(args.rounds):
                for protocol, address in (("http", url.removeprefix("http://")), ("grpc", grpc_address)):
                    rows.append(measure(protocol, address, url, proc.pid, model, data, concurrency, args.interval_ms, args.stability_pct, env))
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    run = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": hardware("cpu"), "load_avg_1m": round(os.getloadavg()[0], 2),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip(),
        "command": "python -m bench.grpc_overhead " + shlex.join(sys.argv[1:] if argv is None else argv),
        "server": f"the default config at a {TINY_SCALE[0]}x{TINY_SCALE[1]} test scale, random weights; device cpu, default batching", "images": source,
        "summary": summary(rows), "rows": rows,
    }  # fmt: skip
    print("| concurrency | protocol | req/s | p50 ms | p99 ms | event-loop CPU ms/req | process CPU ms/req |")
    print("|--:|---|--:|--:|--:|--:|--:|")
    for s in run["summary"]:
        for protocol in ("http", "grpc"):
            m = s[protocol]
            print(f"| {s['concurrency']} | {protocol} | {m['req_per_s']} | {m['p50_ms']} | {m['p99_ms']} | {m['loop_cpu_ms']} | {m['process_cpu_ms']} |")
        print(f"| {s['concurrency']} | grpc/http | {s['grpc_over_http']['req_per_s']} | | | {s['grpc_over_http']['loop_cpu_ms']} | {s['grpc_over_http']['process_cpu_ms']} |")
    stored = json.loads(args.out.read_text()) if args.out.exists() else {"benchmark": "grpc_overhead", "runs": {}}
    stored["runs"][args.label] = run
    args.out.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"wrote {args.out} (runs: {', '.join(stored['runs'])})")
    return run


if __name__ == "__main__":
    main()
