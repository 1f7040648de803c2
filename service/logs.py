"""Logging set-up: one JSON object per line (or plain text), each carrying the request id.

The request id lives in a context variable set by the HTTP middleware, so any log line written
while handling a request (including from the error handler) is tied to the ``X-Request-ID`` the
client sees, without threading the id through every call.

Everything that would otherwise reach stderr on its own goes through the same handler: uvicorn's
loggers, Python warnings and uncaught exceptions (in any thread); grpc's and asyncio's loggers
propagate to it already. ANSI escape sequences are removed from every line: uvicorn puts a coloured
copy of some messages in ``color_message`` (dropped), and a client can put ESC in a URL path, which
a log viewer decoding the JSON would otherwise replay on a terminal.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}
# CSI (colours, cursor moves), OSC (titles, links), two-byte escapes, and a stray ESC.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])?")


def plain(value):
    """``value`` with every ANSI escape sequence removed from its strings (also inside lists and dicts)."""
    if isinstance(value, str):
        return _ANSI.sub("", value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(plain(out), default=lambda v: plain(str(v)))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id.get()
        return plain(super().format(record))


def _log_uncaught(exc_type, exc, tb, thread: str = "MainThread") -> None:
    """``sys.excepthook``: the traceback as one log line instead of raw text on stderr."""
    logging.getLogger("service").critical("uncaught exception in thread %s", thread, exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback, getattr(args.thread, "name", "?"))


def configure(level: str, fmt: str) -> None:
    """Route our logs, uvicorn's, warnings and uncaught exceptions through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []  # what uvicorn's own log config would attach
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the middleware logs each request itself
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
