"""The HTTP front under hostile clients (issue 18, findings 1, 5 and 8): a real server on 127.0.0.1,
raw sockets for traffic no well-behaved client library would send.

Limits are set small (1 s timeouts, 20 headers, a 256 KiB body) so every attack ends in seconds;
waits are bounded by deadlines that fail loudly, never by sleeps that assume something happened.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from helpers import image_bytes, labels_of, post, running_server, scene, small_net

from service.backends.pytorch import TorchBackend
from service.front import LINGER_S

TIMEOUT_S = 1.0  # header and body timeouts of the shared server
MARGIN_S = 4.0  # slack on a loaded 2-core CI machine
MAX_HEADERS = 20
MAX_UPLOAD = 256 * 1024
HEADER_BYTES = 16 * 1024  # the default max_header_bytes


@pytest.fixture(scope="module")
def server():
    overrides = dict(header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S, max_header_count=MAX_HEADERS, max_upload_bytes=MAX_UPLOAD)
    with running_server(TorchBackend(net=small_net()), **overrides) as url:
        yield url


def connect(url: str, timeout_s: float = 10.0) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framed, as all of ours are): status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response; got {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def assert_json_error(status: int, headers: dict, body: bytes, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == code
    assert set(json.loads(body)) == {"error", "detail"}


def assert_closed(sock: socket.socket, within_s: float) -> None:
    """The server ends the connection: EOF (or a reset) within ``within_s``."""
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open after {within_s} s")


def healthz_s(url: str) -> float:
    started = time.perf_counter()
    assert httpx.get(url + "/healthz", timeout=30).status_code == 200
    return time.perf_counter() - started


def _readable(sock: socket.socket, wait_s: float = 0.0) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(wait_s))


def send_until_answered(sock: socket.socket, stream: bytes, total: int) -> int:
    """Send ``stream`` over and over (partial sends resumed, so framing stays intact) until the
    server answers or ``total`` bytes are sent; returns the bytes sent."""
    sock.setblocking(False)
    sent, pending = 0, memoryview(stream)
    while sent < total and not _readable(sock):
        try:
            n = sock.send(pending)
        except BlockingIOError:
            _readable(sock, 0.05)
            continue
        sent, pending = sent + n, pending[n:] or memoryview(stream)
    sock.settimeout(10)
    return sent


def flood(url: str, head: bytes, filler: bytes, total: int) -> tuple[int, dict, bytes, int]:
    """Send ``head`` then ``filler`` up to ``total`` bytes, until the server answers; returns the
    answer and how many bytes had been sent when it came."""
    with connect(url) as sock:
        sock.sendall(head)
        sent = len(head) + send_until_answered(sock, filler, total - len(head))
        return (*read_response(sock), sent)


def rss_bytes() -> int:
    """This process's resident size: the server under test runs in a thread of it."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


# -- findings 1: header size and count -----------------------------------------------------------


def test_header_flood_gets_431_unbuffered_and_healthz_keeps_answering(server):
    filler = b"a" * 65536
    flood(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: ", filler, 4 << 20)  # warm-up
    before = rss_bytes()
    results, slowest = [], 0.0
    flooding = threading.Thread(
        target=lambda: results.extend(flood(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: ", filler, 16 << 20) for _ in range(4))
    )
    flooding.start()
    while flooding.is_alive():
        slowest = max(slowest, healthz_s(server))
    flooding.join()
    assert len(results) == 4
    for status, headers, body, sent in results:
        assert_json_error(status, headers, body, 431, "headers_too_large")
        assert headers["connection"] == "close"
        assert sent < 8 << 20, f"the 431 came only after {sent} bytes"
    assert rss_bytes() - before < 8 << 20, "the server buffered the flood"
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s during the flood"


def test_header_block_at_the_limit_is_served_and_one_byte_more_is_431(server):
    def request(size: int) -> bytes:
        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
        return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"

    for size, expected in ((HEADER_BYTES, 200), (HEADER_BYTES + 1, 431)):
        with connect(server) as sock:
            sock.sendall(request(size))
            status, _, body = read_response(sock)
            assert status == expected, (size, body)


def test_too_many_headers_get_431(server):
    def request(n: int) -> bytes:
        return b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(n - 1)) + b"\r\n"

    with connect(server) as sock:
        sock.sendall(request(MAX_HEADERS))
        assert read_response(sock)[0] == 200
    with connect(server) as sock:
        sock.sendall(request(MAX_HEADERS + 1))
        assert_json_error(*read_response(sock), 431, "headers_too_large")
        assert_closed(sock, MARGIN_S)


def test_chunked_trailer_flood_gets_431(server):
    head = b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: "
    status, headers, body, sent = flood(server, head, b"a" * 65536, 16 << 20)
    assert_json_error(status, headers, body, 431, "headers_too_large")
    assert sent < 8 << 20


# -- finding 5: read timeouts, keep-alive, connection cap ----------------------------------------


def test_slowloris_connections_get_408_and_healthz_keeps_answering(server):
    """Each connection trickles its headers slower than they may take; each is answered 408 and
    closed about the timeout after its first byte, and /healthz is served all along."""
    n, trickle_every_s = 20, 0.2
    started = time.monotonic()  # before the connections: none can time out earlier than this + the timeout
    socks = [connect(server) for _ in range(n)]
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
    answered: dict[socket.socket, float] = {}
    slowest = 0.0
    try:
        while len(answered) < n:
            assert time.monotonic() - started < TIMEOUT_S + MARGIN_S, f"only {len(answered)} of {n} answered"
            for sock in socks:
                if sock in answered:
                    continue
                try:
                    assert sock.recv(1, socket.MSG_PEEK), "closed without an answer"
                    answered[sock] = time.monotonic() - started
                    continue
                except BlockingIOError:
                    pass
                try:
                    sock.send(b"X")  # a header name that never ends
                except (BrokenPipeError, ConnectionResetError):
                    pytest.fail("closed without an answer")
            slowest = max(slowest, healthz_s(server))
            time.sleep(trickle_every_s)  # the attacker's pace, not a wait for the server
        for sock in socks:
            sock.settimeout(10)
            assert_json_error(*read_response(sock), 408, "request_timeout")
            assert_closed(sock, MARGIN_S)
    finally:
        for sock in socks:
            sock.close()
    assert min(answered.values()) >= TIMEOUT_S * 0.9, "answered before the timeout"
    assert slowest < 1.0, f"/healthz took {slowest:.2f} s during the attack"


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server):
    started = time.monotonic()
    with connect(server) as sock:
        assert_json_error(*read_response(sock), 408, "request_timeout")
        assert TIMEOUT_S * 0.9 <= time.monotonic() - started < TIMEOUT_S + MARGIN_S


def test_stalled_body_gets_408_and_closed(server):
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 10000\r\n\r\n" + b"x" * 100)
        assert_json_error(*read_response(sock), 408, "request_timeout")
        assert TIMEOUT_S * 0.9 <= time.monotonic() - started < TIMEOUT_S + MARGIN_S
        assert_closed(sock, MARGIN_S)
    assert healthz_s(server) < 1.0


def test_trickling_body_gets_408_once_under_the_minimum_rate(server):
    """A byte every 0.2 s is progress, but far under body_min_rate_bytes_s (1024 by default)."""
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 10000\r\n\r\n")
        sock.setblocking(False)
        while not _readable(sock, 0.2):  # the attacker's pace
            assert time.monotonic() - started < TIMEOUT_S + MARGIN_S, "a trickling body was never refused"
            sock.send(b"x")
        sock.settimeout(10)
        assert_json_error(*read_response(sock), 408, "request_timeout")
        assert time.monotonic() - started >= TIMEOUT_S * 0.9


def test_endless_chunked_body_gets_413_and_the_connection_ends(server):
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    head = b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(head)
        sent = send_until_answered(sock, chunk, 1 << 40)
        assert_json_error(*read_response(sock), 413, "upload_too_large")
        assert sent < MAX_UPLOAD + (8 << 20)
        # the server ends the connection: it lingers, discarding, then closes and sending fails
        assert_closed(sock, MARGIN_S)
        sock.setblocking(False)
        deadline = time.monotonic() + LINGER_S + MARGIN_S
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() < deadline:
                try:
                    sock.send(chunk)
                except BlockingIOError:
                    _readable(sock, 0.05)


def test_idle_keep_alive_connection_is_closed():
    with running_server(TorchBackend(net=small_net()), keepalive_timeout_s=0.5) as url:
        with connect(url) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
            started = time.monotonic()
            assert_closed(sock, 0.5 + MARGIN_S)
            assert time.monotonic() - started >= 0.4


def test_connections_beyond_the_cap_get_503_json_except_healthz():
    cap = 4
    with running_server(TorchBackend(net=small_net()), max_connections=cap, keepalive_timeout_s=60) as url:
        held = [_held_connection(url) for _ in range(cap)]
        try:
            with connect(url) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                status, headers, body = read_response(sock)
                assert_json_error(status, headers, body, 503, "too_many_connections")
                assert headers["retry-after"] == "1"
            assert healthz_s(url) < 1.0  # the liveness probe is not capped
        finally:
            held.pop().close()
        try:
            _held_connection(url).close()  # a slot freed: served again
        finally:
            for sock in held:
                sock.close()


def _held_connection(url: str) -> socket.socket:
    """A keep-alive connection the server has served (so it surely counts), retried until a slot is
    free: connections of earlier requests may still be closing."""
    deadline = time.monotonic() + 10
    while True:
        sock = connect(url)
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(sock)
        if status == 200:
            return sock
        sock.close()
        assert json.loads(body)["error"] == "too_many_connections" and time.monotonic() < deadline, body
        time.sleep(0.05)


# -- finding 8: the front's own answers are JSON; Upgrade; slash redirects ----------------------


@pytest.mark.parametrize("request_bytes", [b"GARBAGE\x00\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"])
def test_invalid_http_gets_400_json(server, request_bytes):
    with connect(server) as sock:
        sock.sendall(request_bytes)
        status, headers, body = read_response(sock)
        assert_json_error(status, headers, body, 400, "bad_request")
        assert_closed(sock, MARGIN_S)


def test_connect_gets_405_json(server):
    with connect(server) as sock:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert_json_error(*read_response(sock), 405, "method_not_allowed")


def test_a_request_asking_for_an_upgrade_is_served_with_its_body(server):
    image = image_bytes(scene(3))
    plain = post(server, image)
    assert plain.status_code == 200
    with connect(server) as sock:
        sock.sendall(
            b"POST /segment?format=png HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(image) + image
        )
        status, headers, body = read_response(sock)
        assert status == 200, body
        assert body == plain.content
        # the connection is still plain HTTP/1.1 and keeps serving
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        assert read_response(sock)[0] == 200
    assert np.array_equal(labels_of(plain), labels_of(httpx.Response(200, content=body)))


def test_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(server):
    response = httpx.post(server + "/segment/", headers={"Host": "evil.example"}, content=b"x")
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"] == "not_found"
