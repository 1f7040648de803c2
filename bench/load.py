"""End-to-end load test: concurrent clients post real images to a running service.

For each concurrency level (closed loop: every client sends its next image as soon as the last
answer arrives) or request rate (open loop: Poisson arrivals, whatever the latency), it runs for a
fixed time and reports throughput, p50/p90/p99 latency, errors by status, and the mean batch size
the server formed (from its /metrics). It also reports the backend-alone throughput over the same
batches (images / inference seconds, timed by the server) and the end-to-end throughput as a
fraction of it; with ``--model-bench`` also as a fraction of ``bench.model_bench``'s images/s at the
nearest batch size. With two batches in flight (CUDA graphs) their inference times overlap: the
busy fraction can pass 1 and the backend-alone figure understates the GPU (use `bench.perf`).

    python -m service &                       # or let --serve start one
    python -m bench.load --concurrency 1 4 16 --rate 50 --duration 20
    python -m bench.load --serve "--device cuda --precision fp16 --max-batch-size 16" \\
        --concurrency 1 8 32 64 --processes 4 --model-bench bench/results/model_bench_....json

Clients use httpx (asyncio), spread over ``--processes`` worker processes so the load generator
is not the bottleneck. Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import multiprocessing
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.model_bench import RESULTS, camvid_val, hardware, slug


def load_images(folder: Path, limit: int) -> tuple[list[bytes], str]:
    """Real JPEGs from ``folder``; without any, smooth synthetic 480x360 scenes (said so in the JSON)."""
    files = sorted(folder.glob("*.jpg"))[:limit] if folder.is_dir() else []
    if files:
        return [f.read_bytes() for f in files], f"{len(files)} JPEGs from {folder}"
    from PIL import Image

    rng, out = random.Random(0), []
    for _ in range(limit):
        tiny = Image.frombytes("RGB", (4, 3), bytes(rng.randrange(256) for _ in range(36)))
        buf = io.BytesIO()
        tiny.resize((480, 360), Image.BILINEAR).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    print(f"no .jpg images in {folder}: using {limit} synthetic 480x360 JPEGs", file=sys.stderr)
    return out, f"{limit} synthetic 480x360 JPEGs"


async def _client_loop(client, url, images, stop_at, records, offset, step, fmt):
    i = offset
    while time.monotonic() < stop_at:
        await _one(client, url, images[i % len(images)], records, fmt)
        i += step


async def _one(client, url, data, records, fmt):
    start = time.monotonic()
    try:
        r = await client.post(f"{url}/segment", params={"format": fmt}, content=data, headers={"content-type": "image/jpeg"})
        code, batch = r.status_code, int(r.headers.get("x-batch-size", 0))
    except httpx.HTTPError as exc:
        code, batch = type(exc).__name__, 0
    records.append((start, time.monotonic() - start, code, batch))


async def _drive(url, images, concurrency, rate, duration, fmt, seed):
    records: list = []
    stop_at = time.monotonic() + duration
    limits = httpx.Limits(max_connections=max(concurrency, 1) if not rate else 1000)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        if rate:  # open loop: Poisson arrivals at `rate` per second from this process
            rng, tasks = random.Random(seed), []
            while time.monotonic() < stop_at:
                tasks.append(asyncio.ensure_future(_one(client, url, images[len(tasks) % len(images)], records, fmt)))
                await asyncio.sleep(rng.expovariate(rate))
            await asyncio.gather(*tasks)
        else:
            await asyncio.gather(*(_client_loop(client, url, images, stop_at, records, seed + k, concurrency, fmt) for k in range(concurrency)))
    return records


def _worker(job: tuple) -> list:
    return asyncio.run(_drive(*job))


# histogram bucket lines -> the key prefix their cumulative counts are kept under in a scrape
HISTOGRAMS = {
    'deeplab_request_duration_seconds_bucket{endpoint="/segment",le="': "le:",  # POST /segment latency
    'deeplab_queue_wait_seconds_bucket{le="': "qw:",  # time in the batching queue
}


def scrape(url: str) -> dict[str, float]:
    """The un-labelled and summed samples we need from /metrics, and the buckets of POST
    /segment's latency and of the queue wait as ``le:<bound>`` / ``qw:<bound>`` keys."""
    wanted = ("deeplab_batch_size_sum", "deeplab_batch_size_count", "deeplab_queue_wait_seconds_sum",
              "deeplab_queue_wait_seconds_count", "deeplab_inference_duration_seconds_sum", "deeplab_images_total")
    out = dict.fromkeys(wanted, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
        for head, prefix in HISTOGRAMS.items():
            if line.startswith(head):
                out[prefix + line[len(head) :].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_quantile(delta: dict[str, float], q: float, prefix: str = "le:") -> float | None:
    """Prometheus' histogram_quantile over the ``prefix`` buckets of a scrape delta: linear within
    the bucket that holds the q-th observation (so only as fine as the buckets)."""
    buckets = sorted((float(k[len(prefix) :]), v) for k, v in delta.items() if k.startswith(prefix))
    if not buckets or not buckets[-1][1]:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def run_level(url, images, concurrency, rate, duration, warmup, processes, fmt) -> dict:
    procs = max(1, min(processes, concurrency if not rate else processes))
    jobs = []
    for p in range(procs):
        share = concurrency // procs + (p < concurrency % procs) if not rate else 0
        jobs.append((url, images, share, rate / procs if rate else 0, warmup + duration, fmt, p))
    before = scrape(url)
    begin = time.monotonic()
    if procs == 1:
        parts = [_worker(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            parts = pool.map(_worker, jobs)
    after = scrape(url)
    records = [r for part in parts for r in part]
    t0 = min(r[0] for r in records)
    window = [r for r in records if r[0] >= t0 + warmup]
    ok = [r for r in window if r[2] == 200]
    lat = sorted(r[1] * 1e3 for r in ok)
    span = max(r[0] + r[1] for r in window) - min(r[0] for r in window) if window else 1.0
    errors: dict[str, int] = {}
    for r in window:
        if r[2] != 200:
            errors[str(r[2])] = errors.get(str(r[2]), 0) + 1
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    server_p = lambda q, prefix="le:": round(1e3 * v, 1) if (v := histogram_quantile(delta, q, prefix)) is not None else None  # noqa: E731
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None  # noqa: E731
    return {
        "concurrency": concurrency if not rate else None,
        "rate_rps": rate or None,
        "duration_s": round(span, 2),
        "requests": len(window),
        "ok": len(ok),
        "errors": errors,
        "throughput_rps": round(len(ok) / span, 2),
        "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "mean": round(statistics.fmean(lat), 2) if lat else None},
        "mean_batch_size": round(delta["deeplab_batch_size_sum"] / delta["deeplab_batch_size_count"], 2) if delta["deeplab_batch_size_count"] else None,
        "server_mean_queue_wait_ms": round(1e3 * delta["deeplab_queue_wait_seconds_sum"] / max(delta["deeplab_queue_wait_seconds_count"], 1), 2),
        "server_queue_wait_p99_ms": server_p(0.99, "qw:"),  # is the latency tail the batching queue?
        # Receive to response inside the server (bucket-interpolated): the rest of the client's
        # latency is the HTTP transfer and the load generator itself.
        "server_latency_ms": {"p50": server_p(0.50), "p99": server_p(0.99)},
        "server_busy_fraction": round(delta["deeplab_inference_duration_seconds_sum"] / (time.monotonic() - begin), 3),
        # The backend alone over the very same batches, timed by the server: a model-only figure
        # taken under identical conditions (a shared CPU box drifts between separate runs); with
        # overlapping batches in flight it counts the overlap twice.
        "server_inference_images_per_s": round(delta["deeplab_images_total"] / delta["deeplab_inference_duration_seconds_sum"], 2)
        if delta["deeplab_inference_duration_seconds_sum"] else None,
    }


def image_size(data: bytes) -> str:
    """``"HxW"`` of an encoded image, from its header."""
    from PIL import Image

    w, h = Image.open(io.BytesIO(data)).size
    return f"{h}x{w}"


def measurement(row: dict, served: dict, hw: str, size: str, command: str) -> dict:
    """One load level in the shared results schema of `bench.perf` (mode "e2e")."""
    return {
        "config": served["config"], "backend": served["backend"], "precision": served["precision"],
        "batch": row["mean_batch_size"], "input": size, "mode": "e2e", "img_per_s": row["throughput_rps"],
        "p50_ms": row["latency_ms"]["p50"], "p99_ms": row["latency_ms"]["p99"], "gpu": hw,
        "torch": served["backend_details"].get("torch"), "date": datetime.date.today().isoformat(),
        "command": command, "concurrency": row["concurrency"], "rate_rps": row["rate_rps"],
    }  # fmt: skip


def model_only_fraction(row: dict, model_bench: dict) -> dict | None:
    """End-to-end throughput over the backend-alone throughput at the nearest measured batch size."""
    if not row["mean_batch_size"]:
        return None
    ref = min(model_bench["rows"], key=lambda r: abs(r["batch_size"] - row["mean_batch_size"]))
    return {"batch_size": ref["batch_size"], "model_only_images_per_s": ref["images_per_s"], "fraction": round(row["throughput_rps"] / ref["images_per_s"], 3)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then wait for the drain (a server started by ``start_server``; None: nothing)."""
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def start_server(extra: str) -> tuple[subprocess.Popen, str, float]:
    """The server process, its URL, and seconds from start to ready (load + warm-up)."""
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"deeplab_load_server_{port}.log", "w")  # noqa: SIM115 (lives as long as the server)
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), *shlex.split(extra)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url, round(time.monotonic() - started, 1)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not become ready in 15 minutes")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--serve", metavar="ARGS", help="start `python -m service ARGS` on a free port for the run")
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16], help="closed-loop client counts")
    ap.add_argument("--rate", type=float, nargs="+", default=[], help="open-loop requests/s levels, after the closed-loop ones")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds per level not counted")
    ap.add_argument("--processes", type=int, default=1, help="client processes")
    ap.add_argument("--images", type=Path, default=None, help="JPEG folder (default: CamVid val)")
    ap.add_argument("--max-images", type=int, default=64)
    ap.add_argument("--format", default="png", choices=["png", "raw", "json", "overlay"])
    ap.add_argument("--model-bench", type=Path, help="bench.model_bench JSON of the same backend, for the fraction")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    images, images_text = load_images(args.images or camvid_val(), args.max_images)
    RESULTS.mkdir(parents=True, exist_ok=True)
    proc, url, ready_s = start_server(args.serve) if args.serve else (None, args.url, None)
    try:
        served = httpx.get(f"{url}/v1/models", timeout=30).json()["models"][0]  # the default model
        model_bench = json.loads(args.model_bench.read_text()) if args.model_bench else None
        levels = [(c, 0.0) for c in args.concurrency] + [(0, r) for r in args.rate]
        rows = []
        for concurrency, rate in levels:
            row = run_level(url, images, concurrency, rate, args.duration, args.warmup, args.processes, args.format)
            if model_bench:
                row["vs_model_only"] = model_only_fraction(row, model_bench)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        stop_server(proc)

    hw = hardware(served["device"]) if served["device"].startswith("cuda") or url.startswith("http://127.0.0.1") else "remote"
    command = "python -m bench.load " + shlex.join(sys.argv[1:])
    result = {
        "benchmark": "load",
        "hardware": hw,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": served["config"],
        "backend": served["backend"],
        "device": served["device"],
        "precision": served["precision"],
        "batching": served["batching"],
        "images": images_text,
        "format": args.format,
        "client_processes": args.processes,
        "server_ready_s": ready_s,
        "command": command,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "rows": rows,
        "measurements": [measurement(r, served, hw, image_size(images[0]), command) for r in rows],
    }
    print(f"\n{hw}: {served['config']} via HTTP, {served['backend']} {served['precision']} on {served['device']}, "
          f"max batch {served['batching']['max_batch_size']}, delay {served['batching']['max_queue_delay_ms']} ms")
    print("| load | req/s | p50 ms | p90 ms | p99 ms | server p50 / p99 ms | queue wait mean / p99 ms | mean batch | errors | inference-only img/s (same run) | e2e / inference-only | vs model_bench |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|")
    for r in rows:
        load = f"{r['concurrency']} clients" if r["concurrency"] else f"{r['rate_rps']} req/s offered"
        frac = r.get("vs_model_only")
        frac_text = f"{frac['fraction']:.2f} (b={frac['batch_size']})" if frac else "-"
        lat = r["latency_ms"]
        inf = r["server_inference_images_per_s"]
        same_run = f"{r['throughput_rps'] / inf:.2f}" if inf else "-"
        server = r["server_latency_ms"]
        print(f"| {load} | {r['throughput_rps']:.2f} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {server['p50']} / {server['p99']} | {r['server_mean_queue_wait_ms']} / {r['server_queue_wait_p99_ms']} | {r['mean_batch_size']} | {r['errors'] or '-'} | {inf} | {same_run} | {frac_text} |")
    if any((r.get("vs_model_only") or {}).get("fraction", 0) > 1 for r in rows):
        print(f"note: end to end above --model-bench's figure: that run saw other conditions (load average "
              f"{model_bench['load_avg_1m']} there, {result['load_avg_1m']} here); compare with the same-run inference-only column")
    name = slug(hw if served["device"].startswith("cuda") else "cpu")
    out = args.out or RESULTS / f"load_{name}_{served['backend']}_{served['precision']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
