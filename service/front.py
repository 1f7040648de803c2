"""Limits at the HTTP front, enforced by the connection's protocol before any application work.

uvicorn (httptools) has no header-size limit, no header or body read timeout and answers its own
refusals in plain text: a 100 MB header was buffered (quadratically) and stalled every other
connection, and slow clients held connections open forever. ``FrontProtocol`` subclasses
uvicorn's ``HttpToolsProtocol`` (served via ``uvicorn.Config(http=...)``) and adds:

- header bytes: the request line and headers may take ``max_header_bytes``; the parser is never
  fed more than that, so an endless header costs nothing (431). The same budget bounds bytes that
  bring no body progress (chunk framing, trailers). At most ``max_header_count`` headers (431).
- ``header_timeout_s`` from a request's first byte (or the connection's start) to the end of its
  headers; a body that stalls ``body_timeout_s`` while we are reading, or that trickles in slower
  than ``body_min_rate_bytes_s`` on average beyond its first ``body_timeout_s``: 408.
- ``max_connections``: a request on a connection beyond the cap gets 503 (``/healthz`` excepted:
  a liveness probe must not restart a pod that is only busy).
- invalid HTTP gets the service's JSON 400; a non-WebSocket ``Upgrade`` (e.g. ``h2c``) is
  ignored as RFC 9110 allows, by re-parsing the request without it (httptools would drop its body).

Every refusal is ``{"error", "detail"}`` JSON with ``Connection: close``. The connection then
lingers: we stop writing and discard what the client still sends for ``LINGER_S``, because closing
a socket with unread data resets it and the client would lose the answer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from enum import Enum

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.errors import BadRequest, HeadersTooLarge, MethodNotAllowed, RequestTimeout, ServiceError, TooManyConnections
from service.settings import Settings

log = logging.getLogger("service.front")

LINGER_S = 2.0  # how long a refused connection drains the client's bytes before closing
CAP_EXEMPT_PATHS = frozenset({b"/healthz"})


@dataclasses.dataclass(frozen=True)
class FrontLimits:
    max_header_bytes: int
    max_header_count: int
    header_timeout_s: float
    body_timeout_s: float
    body_min_rate_bytes_s: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FrontLimits:
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


class Phase(Enum):
    HEADERS = "headers"  # waiting for the request line and headers
    BODY = "body"  # headers done, the body still arriving


def error_response(error: ServiceError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete HTTP/1.1 response carrying the service's JSON error body, closing the connection."""
    body = json.dumps({"error": error.code, "detail": error.detail}).encode()
    head = [STATUS_LINE[error.status]]
    headers = [*default_headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    head += [name + b": " + value + b"\r\n" for name, value in [*headers, (b"connection", b"close")]]
    return b"".join([*head, b"\r\n", body])


class FrontProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (``limits`` is set by ``protocol_for``)."""

    limits: FrontLimits

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._phase: Phase | None = None
        self._phase_started = self._progress_at = 0.0
        self._body_bytes = 0  # received in this body phase, for the minimum rate
        self._deadline = None  # asyncio.TimerHandle checking the current phase's timeout
        self._lingering = None  # asyncio.TimerHandle closing a refused connection
        self._header_bytes = 0  # bytes fed while reading headers (or since the last body progress)
        self._header_count = 0
        self._closing = False  # refused or lingering: input is discarded
        self._upgrade_pending = False  # headers asked for an Upgrade: the request is parsed again
        self._replayed = False

    # -- connection ---------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._enter(Phase.HEADERS)

    def connection_lost(self, exc) -> None:
        self._enter(None)
        if self._lingering is not None:
            self._lingering.cancel()  # the client closed first: free this protocol now
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, never more header bytes than the limit allows (a pipelined request that
        starts inside a body's read is counted from the next read: at most one read more)."""
        self._unset_keepalive_if_required()
        if self._closing:
            return
        if self._phase is None and (self.cycle is None or self.cycle.response_complete):
            self._enter(Phase.HEADERS)  # a new request on an idle keep-alive connection
        view = memoryview(data)
        while view and not self._closing:
            if self._phase is Phase.HEADERS:
                room = self.limits.max_header_bytes - self._header_bytes
                if room <= 0:
                    return self._refuse(HeadersTooLarge(f"request line and headers are over {self.limits.max_header_bytes} bytes"))
                piece, view = view[:room], view[room:]
            else:
                piece, view = view, view[:0]
            self._header_bytes += len(piece)
            self._feed(piece)
            if self._phase is Phase.BODY and self._header_bytes > self.limits.max_header_bytes:
                return self._refuse(HeadersTooLarge(f"over {self.limits.max_header_bytes} bytes of chunk framing or trailers"))

    def _feed(self, data) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._replay_without_upgrade(bytes(data[upgrade.args[0] :]))
        except httptools.HttpParserError as exc:
            refusal = exc.__context__ if isinstance(exc.__context__, ServiceError) else None
            self._refuse(refusal or BadRequest(f"invalid HTTP request: {exc}"))

    def _replay_without_upgrade(self, rest: bytes) -> None:
        """Parse the request again without its Upgrade (we speak HTTP/1.1 only), body included."""
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/", self.parser.get_http_version().encode(), b"\r\n"]
        for name, value in self.headers:
            if name == b"connection":
                value = b",".join(t for t in value.split(b",") if t.strip().lower() != b"upgrade")
            if name != b"upgrade" and value.strip():
                head += [name, b": ", value, b"\r\n"]
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._upgrade_pending, self._replayed = False, True
        self._feed(b"".join([*head, b"\r\n", rest]))

    # -- parser callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        if self._phase is None:
            self._enter(Phase.HEADERS)  # a pipelined request

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            raise HeadersTooLarge(f"more than {self.limits.max_header_count} headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.parser.get_method() == b"CONNECT":
            raise MethodNotAllowed("CONNECT is not supported")
        if self.parser.should_upgrade():
            if self._replayed:
                raise BadRequest("protocol upgrades are not supported")
            self._upgrade_pending = True  # _feed sees HttpParserUpgrade and replays the request
            return
        self._replayed = False
        cap = self.limits.max_connections
        if len(self.connections) > cap and self.url.split(b"?")[0] not in CAP_EXEMPT_PATHS:
            raise TooManyConnections(f"the server holds its maximum of {cap} connections; retry")
        super().on_headers_complete()
        self._enter(Phase.BODY)

    def on_body(self, body: bytes) -> None:
        self._progress_at = self.loop.time()
        self._body_bytes += len(body)
        self._header_bytes = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._upgrade_pending:
            return  # the parser skipped the body: it is parsed when the request is replayed
        self._enter(None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # answered before its body was read (e.g. 413): the rest of the body is not worth reading
        unread = not self.pipeline and self.cycle is not None and self.cycle.more_body
        super().on_response_complete()
        if unread and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self._closing = True
            self._enter(None)
            self._linger()

    # -- timeouts -------------------------------------------------------------------------------
    def _enter(self, phase: Phase | None) -> None:
        """Start ``phase`` now (None: not reading a request) with a fresh timer for its timeout."""
        self._phase = phase
        self._phase_started = self._progress_at = self.loop.time()
        self._header_bytes = self._body_bytes = 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if phase is not None and not self._closing:
            self._deadline = self.loop.call_later(self._due() - self._phase_started, self._check_deadline)

    def _check_deadline(self) -> None:
        self._deadline = None
        if self._phase is None or self._closing:
            return
        now = self.loop.time()
        if self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue):
            # we are not reading (the app has not asked for more): not the client's fault
            self._phase_started = self._progress_at = now
            self._body_bytes = 0
        if (left := self._due() - now) > 0:
            self._deadline = self.loop.call_later(left, self._check_deadline)
        elif self._phase is Phase.HEADERS:
            self._refuse(RequestTimeout(f"request headers not received within {self.limits.header_timeout_s} s"))
        else:
            self._refuse(RequestTimeout(
                f"request body stalled for {self.limits.body_timeout_s} s, or arrived slower than "
                f"{self.limits.body_min_rate_bytes_s} bytes/s"
            ))

    def _due(self) -> float:
        """When the phase times out: headers at a fixed time; a body once it stalls for
        ``body_timeout_s``, or once it has taken that long plus its size at the minimum rate."""
        if self._phase is Phase.HEADERS:
            return self._phase_started + self.limits.header_timeout_s
        stalled = self._progress_at + self.limits.body_timeout_s
        if self.limits.body_min_rate_bytes_s <= 0:
            return stalled
        return min(stalled, self._phase_started + self.limits.body_timeout_s + self._body_bytes / self.limits.body_min_rate_bytes_s)

    # -- refusing -------------------------------------------------------------------------------
    def _refuse(self, error: ServiceError) -> None:
        """Answer ``error`` as JSON and close, unless an earlier response on this connection is
        still being written: then the connection just ends after it."""
        phase = self._phase
        self._closing = True
        self._enter(None)
        if self.transport.is_closing():
            return
        cycle = self.cycle
        log.info("refused at the front", extra={"status": error.status, "error": error.code, "detail": error.detail, "client": self.client})
        if cycle is not None and not cycle.response_complete:
            if phase is not Phase.BODY or cycle.response_started:
                cycle.keep_alive = False  # an earlier request is still answered: end after it
                self.pipeline.clear()
                return
            cycle.disconnected = True  # the app waiting for this body sees a disconnect
            cycle.message_event.set()
        self.transport.write(error_response(error, self.server_state.default_headers))
        self._linger()

    def _linger(self) -> None:
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._lingering = self.loop.call_later(LINGER_S, self.transport.close)


def protocol_for(settings: Settings) -> type[FrontProtocol]:
    """The protocol class uvicorn instantiates per connection, carrying these settings' limits."""
    return type("FrontProtocol", (FrontProtocol,), {"limits": FrontLimits.from_settings(settings)})
