"""service.logs: every line a process writes is one JSON object with no ANSI escape codes (issue 19),
checked on the real ``python -m service`` (HTTP and gRPC traffic, drain, exit) and on a process
that only calls ``configure`` and then writes what bypasses loggers: warnings, uncaught exceptions."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading

import grpc
import httpx
import pytest
import tritonclient.grpc as triton
from helpers import REPO, free_port
from tritonclient.utils import InferenceServerException

from service.logs import JsonFormatter, TextFormatter, plain

ESC = "\x1b"


def strings(value):
    """Every string in a parsed JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)


def records(lines: list[str]) -> list[dict]:
    """Each line parsed: one JSON object, no ESC in the bytes nor in any decoded string."""
    out = []
    for line in lines:
        assert ESC not in line, line
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert not [s for s in strings(record) if ESC in s], line
        out.append(record)
    return out


def record(name: str, msg: str, *args, **extra) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_formatters_strip_ansi_sequences_and_drop_uvicorns_coloured_copy():
    coloured = record(
        "uvicorn.error",
        "Uvicorn running on %s \x1b]8;;http://x\x07link\x1b]8;;\x07 \x1bMup",
        "\x1b[1mhttp://127.0.0.1:8000\x1b[0m",
        color_message="Uvicorn running on \x1b[1m%s\x1b[0m",
        path=["/\x1b[31;1mred\x1b[0m", {"k\x1b[2J": "\x1b"}],
    )
    line = JsonFormatter().format(coloured)
    (parsed,) = records([line])
    assert parsed["msg"] == "Uvicorn running on http://127.0.0.1:8000 link up"
    assert "color_message" not in parsed and parsed["path"] == ["/red", {"k": ""}]
    text = TextFormatter("%(name)s [%(request_id)s] %(message)s").format(coloured)
    assert text == "uvicorn.error [-] Uvicorn running on http://127.0.0.1:8000 link up"
    assert plain("no escapes: [1m stays") == "no escapes: [1m stays"


def test_a_multi_line_message_and_its_traceback_stay_one_line():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        failed = logging.LogRecord("service", logging.ERROR, __file__, 1, "first\nsecond", (), sys.exc_info())
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    (parsed,) = records([line])
    assert parsed["msg"] == "first\nsecond" and "ValueError: bad\nvalue" in parsed["exc"]


# Writes what reaches stderr without a logger call of ours: uvicorn's coloured message, a warning,
# a thread's uncaught exception, then the main thread's (exit status 1, as without the hook).
BYPASSES = """
import logging, threading, warnings
from service.logs import configure
configure("info", "json")
logging.getLogger("uvicorn.error").info("Started server process [%d]", 7, extra={"color_message": "\\x1b[36m%d\\x1b[0m"})
warnings.warn("deprecated \\x1b[33mthing\\x1b[0m", DeprecationWarning)
worker = threading.Thread(target=lambda: 1 / 0, name="worker")
worker.start()
worker.join()
raise RuntimeError("main thread fails")
"""


def test_warnings_and_uncaught_exceptions_become_json_lines():
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", BYPASSES], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and proc.stdout == ""
    logged = records(proc.stderr.splitlines())
    assert [(r["logger"], r["level"]) for r in logged] == [
        ("uvicorn.error", "info"),
        ("py.warnings", "warning"),
        ("service", "critical"),
        ("service", "critical"),
    ], proc.stderr
    assert "deprecated thing" in logged[1]["msg"]
    assert logged[2]["msg"] == "uncaught exception in thread worker" and "ZeroDivisionError" in logged[2]["exc"]
    assert "RuntimeError: main thread fails" in logged[3]["exc"]


class Lines:
    """The lines a process writes, read by a thread as they come, so the test can wait on one."""

    def __init__(self, stream):
        self.all: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # end of output: the process has closed it

    def wait_for(self, wanted: str, timeout_s: float = 120) -> None:
        """Until a line containing ``wanted`` (each line checked on the way); fails at EOF or timeout."""
        while (line := self._queue.get(timeout=timeout_s)) is not None:
            self.all.append(line)
            records([line])
            if wanted in line:
                return
        raise AssertionError(f"no {wanted!r} line before the output ended:\n" + "\n".join(self.all))

    def rest(self) -> list[str]:
        """Every remaining line (the process has exited)."""
        self._reader.join(30)
        while (line := self._queue.get_nowait()) is not None:
            self.all.append(line)
        return self.all


def test_every_line_the_real_server_writes_is_a_json_object_without_ansi_codes():
    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLAB_")}
    args = ["--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port), "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", *args, "--log-format", "json", "--log-level", "debug"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = Lines(proc.stdout)
    url = f"http://127.0.0.1:{http_port}"
    try:
        lines.wait_for("Uvicorn running on")  # the line uvicorn colours
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.is_server_live() and client.is_server_ready()
            with pytest.raises(InferenceServerException, match="NOT_FOUND"):
                client.is_model_ready("no-such-model")  # refused: logged by the gRPC layer
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/%1B[31mred%1B[0m").status_code == 404  # ESC from the client, in the access log
        refused = httpx.post(url + "/segment", content=b"not an image", headers={"content-type": "image/png"})
        assert 400 <= refused.status_code < 500  # logged as refused
        with socket.create_connection(("127.0.0.1", http_port)) as raw:
            raw.sendall(b"\x1b[2J NOT HTTP\r\n\r\n")
            assert raw.recv(12) == b"HTTP/1.1 400"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logged = records(lines.rest())
    loggers = {r["logger"] for r in logged}
    assert {"uvicorn.error", "service", "service.access"} <= loggers, loggers
    assert any(name.startswith("grpc") for name in loggers), loggers  # grpc's debug lines, same formatter
    paths = [r.get("path") for r in logged if r["logger"] == "service.access"]
    assert "/[31mred[0m" not in paths and "/red" in paths, paths
    assert any(r["msg"] == f"Finished server process [{proc.pid}]" for r in logged)
