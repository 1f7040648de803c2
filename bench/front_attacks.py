"""The HTTP front under attack: /healthz latency while hostile clients hit a real server.

Each attack runs for ``--duration`` seconds from threads of this process against a server in its
own process, while a prober requests /healthz on a fresh connection every ``--probe-every-ms``
(as a kubelet liveness probe does); we report the probe latency p50/p99/max, the answers the
attackers got and the server's resident memory before and after. The limits themselves are
asserted in tests/test_front_limits.py; this measures what they cost.

    python -m bench.front_attacks [--serve "--device cpu --model ckpt.pth"] [--duration 12]

Without --serve it writes a random-weight checkpoint of the default model and serves that on the
CPU with the default settings. Prints a table and writes bench/results/front_attacks_cpu.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.load import start_server
from service.front import FrontLimits
from service.settings import Settings

OUT = Path(__file__).resolve().parent / "results" / "front_attacks_cpu.json"


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _status_of(sock: socket.socket) -> str:
    """The status code the server answered with, or how the connection ended."""
    try:
        data = sock.recv(64)
    except (ConnectionResetError, TimeoutError) as exc:
        return type(exc).__name__
    return data.split(b" ")[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"


def _send_endlessly(sock: socket.socket, head: bytes, chunk: bytes, limit: int) -> str:
    """Send ``head`` then ``chunk`` over and over until the server stops us."""
    try:
        sock.sendall(head)
        for _ in range(limit // len(chunk)):
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return _status_of(sock)


def header_flood(url: str, stop: threading.Event, tally: collections.Counter) -> None:
    """Endless 100 MB header values, one connection after another."""
    while not stop.is_set():
        with _connect(url) as sock:
            tally[_send_endlessly(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: ", b"a" * 65536, 100 << 20)] += 1


def endless_chunked(url: str, stop: threading.Event, tally: collections.Counter) -> None:
    head = b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    while not stop.is_set():
        with _connect(url) as sock:
            tally[_send_endlessly(sock, head, b"%x\r\n%s\r\n" % (65536, b"a" * 65536), 1 << 30)] += 1


def invalid_http(url: str, stop: threading.Event, tally: collections.Counter) -> None:
    while not stop.is_set():
        with _connect(url) as sock:
            sock.sendall(b"GARBAGE\x00\r\n\r\n")
            tally[_status_of(sock)] += 1


def _trickle(url: str, stop: threading.Event, tally: collections.Counter, head: bytes, n: int, every_s: float) -> None:
    """``n`` connections sending ``head`` then one byte per ``every_s``; each one the server ends is
    counted and replaced."""
    socks = {}
    try:
        while not stop.is_set():
            while len(socks) < n:
                sock = _connect(url)
                sock.sendall(head)
                sock.setblocking(False)
                socks[sock.fileno()] = sock
            for fd, sock in list(socks.items()):
                try:
                    answer = sock.recv(64)
                except BlockingIOError:
                    try:
                        sock.send(b"X")
                        continue
                    except OSError:
                        answer = b""
                except OSError:
                    answer = b""
                tally[answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"] += 1
                sock.close()
                del socks[fd]
            stop.wait(every_s)
    finally:
        for sock in socks.values():
            sock.close()


def slowloris(n: int):
    def attack(url, stop, tally):
        _trickle(url, stop, tally, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", n, 1.0)

    return attack


def slow_body(n: int):
    def attack(url, stop, tally):
        head = b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000000\r\n\r\n"
        _trickle(url, stop, tally, head, n, 1.0)

    return attack


def connection_flood(n: int):
    """``n`` idle keep-alive connections, each after one request, plus one more request per
    connection beyond: what the connection cap answers."""

    def attack(url, stop, tally):
        held = []
        try:
            while len(held) < n and not stop.is_set():
                sock = _connect(url)
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                tally[_status_of(sock)] += 1
                held.append(sock)
            stop.wait()
        finally:
            for sock in held:
                sock.close()

    return attack


def probe(url: str) -> None:
    """GET /healthz on a fresh connection, as a kubelet's liveness probe does (a raw socket: an
    HTTP client's own set-up would dwarf the server's time)."""
    with _connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"/healthz failed: {answer[:200]!r}")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return round(kib / 1024, 1)


def run_attack(url: str, pid: int, name: str, attack, threads: int, duration: float, probe_every_s: float) -> dict:
    stop, tally = threading.Event(), collections.Counter()
    before = rss_mb(pid)
    workers = [threading.Thread(target=attack, args=(url, stop, tally), daemon=True) for _ in range(threads if attack else 0)]
    for w in workers:
        w.start()
    latencies = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        started = time.perf_counter()
        probe(url)
        latencies.append((time.perf_counter() - started) * 1e3)
        time.sleep(max(0.0, probe_every_s - (time.perf_counter() - started)))
    after = rss_mb(pid)
    stop.set()
    for w in workers:
        w.join(60)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    row = {
        "attack": name,
        "attacker_threads": len(workers),
        "probes": len(latencies),
        "healthz_ms": {"p50": round(q[49], 2), "p99": round(q[98], 2), "max": round(max(latencies), 2)},
        "answers": dict(sorted(tally.items())),
        "server_rss_mb": {"before": before, "after": after},
    }
    print(f"{name:18} p50 {row['healthz_ms']['p50']:8.2f} ms  p99 {row['healthz_ms']['p99']:8.2f} ms  max {row['healthz_ms']['max']:8.2f} ms"
          f"  rss {before}->{after} MB  answers {row['answers']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", metavar="ARGS", help="arguments of `python -m service` (default: a random-weight default model on CPU)")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per attack (above header_timeout_s, so slow connections are ended)")
    ap.add_argument("--probe-every-ms", type=float, default=20.0)
    ap.add_argument("--slow-connections", type=int, default=300, help="connections of the slowloris and slow-body attacks")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    serve = args.serve
    if serve is None:
        from bench.synthetic_checkpoint import main as synthetic
        from model import DEFAULT_MODEL

        ckpt = Path(tempfile.mkdtemp()) / "front_attacks.pth"
        synthetic([DEFAULT_MODEL, str(ckpt)])
        serve = f"--device cpu --log-level warning --model {ckpt}"
    proc, url, _ = start_server(serve)
    attacks = [
        ("none", None, 0),
        ("header_flood", header_flood, 2),
        ("slowloris", slowloris(args.slow_connections), 1),
        ("slow_body", slow_body(args.slow_connections), 1),
        ("endless_chunked", endless_chunked, 2),
        ("invalid_http", invalid_http, 2),
        ("connection_flood", connection_flood(1100), 1),
    ]
    try:
        settings = httpx.get(url + "/v1/models").json()["models"][0]
        rows = [run_attack(url, proc.pid, name, attack, threads, args.duration, args.probe_every_ms / 1e3) for name, attack, threads in attacks]
    finally:
        proc.terminate()
        proc.wait(60)
    result = {
        "bench": "front_attacks",
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "cpus": len(os.sched_getaffinity(0)),
        "command": "python -m bench.front_attacks " + shlex.join(sys.argv[1:] if argv is None else argv),
        "served": {k: settings.get(k) for k in ("config", "backend", "device", "precision")},
        "serve_args": serve if args.serve else "--device cpu --log-level warning --model <random-weight checkpoint>",
        "front_settings": {k: v for k, v in Settings().model_dump().items() if k in FrontLimits.__dataclass_fields__ or k == "keepalive_timeout_s"},
        "duration_s": args.duration,
        "probe_every_ms": args.probe_every_ms,
        "attacks": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
