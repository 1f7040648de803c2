"""Triton's perf_analyzer against the service's Open Inference Protocol (HTTP /v2 and gRPC) with
JPEGs as the ``IMAGE`` input: the load tool Triton users already run, beside `bench.load`.

    python -m bench.perf_analyzer --serve "--config NAME --device cuda" --concurrency 1 8 32
    python -m bench.perf_analyzer --url http://HOST:8000 --grpc HOST:8001 --model NAME
    python -m bench.perf_analyzer --serve "--device cuda" --serve-variants "--workers 6" "--workers 10" --concurrency 256

perf_analyzer ships in the tritonclient wheel (``bin/perf_analyzer``). It needs ``libb64.so.0d``
(Debian's libb64-0d: .ci/run unpacks it into ``<venv>/lib/perf_analyzer``; or name folders in
``PERF_ANALYZER_LIBS``) and ``libcudart.so.12`` (the nvidia-cuda-runtime-cu12 wheel), also on a
machine without a GPU. perf_analyzer sends a ``b64`` value as-is, so each image is stored in the
serialized form of a BYTES element: 4-byte little-endian length, then the file.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.load import free_port, load_images, start_server, stop_server
from bench.model_bench import camvid_val


def binary() -> Path:
    """The perf_analyzer of this environment (installed next to the interpreter by tritonclient)."""
    beside = Path(sys.executable).parent / "perf_analyzer"
    found = beside if beside.exists() else shutil.which("perf_analyzer")
    if not found:
        raise FileNotFoundError("perf_analyzer not found: install tritonclient==2.45.0 (its wheel ships bin/perf_analyzer)")
    return Path(found)


def library_dirs() -> list[str]:
    """Folders holding perf_analyzer's libraries: PERF_ANALYZER_LIBS, <venv>/lib/perf_analyzer, the CUDA runtime wheel."""
    dirs = [d for d in os.environ.get("PERF_ANALYZER_LIBS", "").split(os.pathsep) if d]
    dirs.append(str(Path(sys.prefix) / "lib" / "perf_analyzer"))
    try:
        from nvidia import cuda_runtime  # the wheel's package: lib/libcudart.so.12
    except ImportError:
        return dirs
    return [*dirs, *(str(Path(p) / "lib") for p in cuda_runtime.__path__)]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*library_dirs(), env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env


def missing_libraries(env: dict[str, str]) -> list[str]:
    """Shared libraries the dynamic loader cannot find for perf_analyzer under ``env`` (via ldd)."""
    out = subprocess.run(["ldd", str(binary())], env=env, capture_output=True, text=True, check=False).stdout
    return [line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line]


def write_input_data(path: Path, images: list[bytes]) -> Path:
    """perf_analyzer's --input-data JSON: one step per image, each a length-prefixed BYTES element."""
    steps = [{"IMAGE": {"b64": base64.b64encode(struct.pack("<I", len(data)) + data).decode()}} for data in images]
    path.write_text(json.dumps({"data": steps}))
    return path


@dataclasses.dataclass
class Result:
    protocol: str
    concurrency: int | None  # closed loop: requests in flight
    rate: float | None  # open loop: requests/s offered (Poisson arrivals)
    returncode: int
    seconds: float
    request_count: int | None
    throughput: float | None  # infer/s = images/s (one image per request)
    p50_ms: float | None
    p99_ms: float | None
    output: str = dataclasses.field(repr=False)


def _number(pattern: str, text: str) -> float | None:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else None


def run(protocol: str, address: str, model: str, data: Path, concurrency: int = 1, interval_ms: int = 5000,
        stability_pct: float = 10.0, timeout_s: float = 600.0, env: dict[str, str] | None = None,
        rate: float | None = None) -> Result:
    """One perf_analyzer run at one concurrency, or (``rate``) open loop: Poisson arrivals at
    ``rate`` requests/s whatever the latency, as real traffic comes. ``address`` is host:port of
    the protocol's port. perf_analyzer measures windows of ``interval_ms`` (it sleeps 1.2x that
    each) until 3 in a row are within ``stability_pct``; a failed request ends it with a nonzero
    exit code."""
    load = (["--request-rate-range", f"{rate:g}", "--request-distribution", "poisson", "--max-threads", "64"]
            if rate else ["--concurrency-range", str(concurrency)])  # fmt: skip
    cmd = [str(binary()), "-m", model, "-i", protocol, "-u", address, "--input-data", str(data), "--shape", "IMAGE:1",
           *load, "--measurement-interval", str(interval_ms),
           "--stability-percentage", str(stability_pct)]  # stabilizes on the mean latency; p50..p99 are printed
    started = time.monotonic()
    done = subprocess.run(cmd, env=env or environment(), capture_output=True, text=True, timeout=timeout_s, check=False)
    seconds = time.monotonic() - started
    text = done.stdout + done.stderr
    count = _number(r"Request count: (\d+)", text)
    p50, p99 = _number(r"p50 latency: (\d+) usec", text), _number(r"p99 latency: (\d+) usec", text)
    return Result(protocol, None if rate else concurrency, rate, done.returncode, round(seconds, 1), int(count) if count is not None else None,
                  _number(r"Throughput: ([\d.]+) infer/sec", text), p50 and p50 / 1e3, p99 and p99 / 1e3, text)


def _hardware(url: str) -> str:
    """The served device's name when the server runs here (bench.model_bench.hardware), else remote."""
    from bench.model_bench import hardware

    served = httpx.get(f"{url}/v1/models", timeout=30).json()["models"][0]["device"].split(",")[0]
    return hardware(served) if url.split("://", 1)[-1].startswith("127.0.0.1") else "remote"


def measure(args: argparse.Namespace, data: Path, env: dict[str, str], serve: str | None) -> tuple[list[dict], str, str]:
    """Every protocol x load against one server (started with ``serve``'s arguments, or the one at
    ``args.url``): its rows, the model name and the hardware."""
    proc, url, grpc_address = None, args.url, args.grpc
    if serve:
        grpc_port = free_port()
        proc, url, _ = start_server(f"{serve} --grpc-port {grpc_port}")
        grpc_address = f"127.0.0.1:{grpc_port}"
    rows = []
    try:
        model = args.model or httpx.get(f"{url}/v1/models", timeout=30).json()["default"]
        hw = _hardware(url)
        for protocol in args.protocols:
            address = grpc_address if protocol == "grpc" else url.split("://", 1)[-1]
            for concurrency, rate in [(c, None) for c in args.concurrency] + [(1, r) for r in args.rate]:
                result = run(protocol, address, model, data, concurrency, args.interval_ms, args.stability_pct, env=env, rate=rate)
                row = {k: v for k, v in dataclasses.asdict(result).items() if k != "output"}
                if result.returncode != 0:
                    row["error"] = result.output[-2000:]
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        stop_server(proc)
    return rows, model, hw


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the service's HTTP base URL")
    ap.add_argument("--grpc", default="127.0.0.1:8001", help="host:port of its gRPC port")
    ap.add_argument("--serve", metavar="ARGS", help="start `python -m service ARGS --grpc-port FREE` for the run")
    ap.add_argument("--serve-variants", nargs="+", metavar="EXTRA", default=[],
                    help="with --serve: one server start per EXTRA, appended to ARGS (e.g. '--workers 6' '--workers 10'); "
                         "each row names its EXTRA as `serve_variant`")  # fmt: skip
    ap.add_argument("--model", help="model name (default: the served config)")
    ap.add_argument("--protocols", nargs="+", default=["grpc", "http"], choices=["grpc", "http"])
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32])
    ap.add_argument("--rate", type=float, nargs="*", default=[], help="open-loop requests/s levels (Poisson), after the closed-loop ones")
    ap.add_argument("--interval-ms", type=int, default=5000, help="perf_analyzer's measurement window")
    ap.add_argument("--stability-pct", type=float, default=10.0, help="largest spread between 3 windows in a row")
    ap.add_argument("--images", type=Path, default=None, help="JPEG folder (default: CamVid val)")
    ap.add_argument("--max-images", type=int, default=16)
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.serve_variants and not args.serve:
        ap.error("--serve-variants needs --serve")

    env = environment()
    if missing := missing_libraries(env):
        raise SystemExit(f"perf_analyzer cannot load {missing}; see this module's docstring")
    images, _ = load_images(args.images or camvid_val(), args.max_images)
    data = write_input_data(Path(tempfile.mkdtemp()) / "images.json", images)
    rows = []
    for variant in args.serve_variants or [None]:
        serve = f"{args.serve} {variant}" if variant else args.serve
        variant_rows, model, hw = measure(args, data, env, serve)
        rows += [{"serve_variant": variant, **r} if variant else r for r in variant_rows]
    print("| server | protocol | load | infer/s | p50 ms | p99 ms | exit |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for r in rows:
        load = f"{r['rate']:g} req/s offered" if r["rate"] else f"{r['concurrency']} in flight"
        print(f"| {r.get('serve_variant') or '-'} | {r['protocol']} | {load} | {r['throughput']} | {r['p50_ms']} | {r['p99_ms']} | {r['returncode']} |")
    if args.out:
        command = "python -m bench.perf_analyzer " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        doc = {"benchmark": "perf_analyzer", "hardware": hw, "date": datetime.date.today().isoformat(), "command": command, "model": model, "rows": rows}
        args.out.write_text(json.dumps(doc, indent=1))
    return rows


if __name__ == "__main__":
    main()
