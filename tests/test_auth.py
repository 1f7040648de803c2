"""API keys against a real server: 401 without or with a wrong key, both header forms accepted,
probes exempt, the per-key rate limit, keys made and hashed by ``python -m service.auth``."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import threading

import httpx
import pytest
from helpers import REPO, image_bytes, labels_of, metric, running_server, scene, small_net

from service import auth
from service.backends.pytorch import TorchBackend
from service.settings import Settings


def new_key(name: str) -> tuple[str, str]:
    """(key, keys-file line) made the documented way: ``python -m service.auth new NAME``."""
    out = subprocess.run([sys.executable, "-m", "service.auth", "new", name], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key, line = out.stdout.split()
    return key, line


@pytest.fixture(scope="module")
def keys():
    return {"alice": new_key("alice"), "bob": new_key("bob"), "root": new_key("root")}


@pytest.fixture(scope="module")
def keys_file(keys, tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "api-keys"
    path.write_text(f"# issued keys\n{keys['alice'][1]}\n\n{keys['bob'][1]}\n")
    return path


@pytest.fixture(scope="module")
def server(keys, keys_file):
    admin_digest = keys["root"][1].split(":")[1]
    with running_server(TorchBackend(net=small_net()), api_keys_file=keys_file, admin_key_hashes=[f"root:{admin_digest}"]) as url:
        yield url


def bearer(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


def assert_unauthorized(response: httpx.Response, challenge: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith(challenge)


def test_no_key_gets_401_before_the_body_is_looked_at(server):
    # not even an image: without a key the request is refused before the body is read or decoded
    r = httpx.post(f"{server}/segment", content=b"not an image", headers={"content-type": "image/png"})
    assert_unauthorized(r, "Bearer")
    assert "X-API-Key" in r.json()["detail"]
    assert_unauthorized(httpx.get(f"{server}/v1/models"), "Bearer")
    assert_unauthorized(httpx.get(f"{server}/v1/models", headers={"authorization": "Basic YWxpY2U6eA=="}), "Bearer")


def test_wrong_key_gets_401(server, keys):
    alice = keys["alice"][0]
    for headers in (bearer("not-a-key"), {"x-api-key": "not-a-key"}, bearer(alice[:-1]), {"x-api-key": alice + "x"}):
        assert_unauthorized(httpx.get(f"{server}/v1/models", headers=headers), 'Bearer error="invalid_token"')
    digest = keys["alice"][1].split(":")[1]
    assert_unauthorized(httpx.get(f"{server}/v1/models", headers=bearer(digest)), "Bearer")  # the stored digest is no key


def test_right_key_in_either_header_form_is_served(server, keys):
    data = image_bytes(scene(1), "PNG")
    alice, bob, root = (keys[n][0] for n in ("alice", "bob", "root"))
    for headers in (bearer(alice), {"x-api-key": bob}, {"authorization": f"bearer {root}"}):
        r = httpx.post(f"{server}/segment", content=data, headers={"content-type": "image/png", **headers}, timeout=60)
        assert r.status_code == 200, r.text
        assert labels_of(r).shape == scene(1).shape[:2]
    assert httpx.get(f"{server}/v1/models", headers={"x-api-key": root}).status_code == 200


def test_exempt_paths_need_no_key(server):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(server + path).status_code == 200, path
    assert_unauthorized(httpx.get(f"{server}/healthzz"), "Bearer")  # exact paths, not prefixes
    assert_unauthorized(httpx.get(f"{server}/docs"), "Bearer")  # not exempt unless configured
    assert metric(httpx.get(f"{server}/metrics").text, "deeplab_requests_total", code="401") >= 2


def test_access_log_names_the_key_never_the_key_itself(server, keys, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    # The access line is written just after the response is sent. This handler keeps the records it
    # sees and then sets the event: caplog's handler, on the root logger, gets each record only after
    # the logger's own handlers, so waking on an event and then reading caplog would race it.
    seen: list[logging.LogRecord] = []
    logged = threading.Event()
    handler = logging.Handler()

    def emit(record: logging.LogRecord) -> None:
        seen.append(record)
        if getattr(record, "path", "") == "/v1/models":
            logged.set()

    handler.emit = emit
    logging.getLogger("service.access").addHandler(handler)
    try:
        key = keys["bob"][0]
        assert httpx.get(f"{server}/v1/models", headers=bearer(key), params={"probe": "log"}).status_code == 200
        assert logged.wait(30), "no access log line for the request"
    finally:
        logging.getLogger("service.access").removeHandler(handler)
    (record,) = [r for r in seen if getattr(r, "path", "") == "/v1/models"]
    assert record.api_key == "bob"
    assert all(key not in r.getMessage() and key not in str(vars(r)) for r in [*seen, *caplog.records])


def test_openapi_declares_the_key_schemes(server, keys):
    spec = httpx.get(f"{server}/openapi.json", headers=bearer(keys["alice"][0])).json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert spec["components"]["securitySchemes"]["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert "401" in spec["paths"]["/segment"]["post"]["responses"]


def test_rate_limit_per_key_gives_429_with_retry_after(keys, keys_file):
    """0.01 requests/s: a bucket of one, refilled after 100 s, so the second request is always over,
    however slow the machine."""
    with running_server(TorchBackend(net=small_net()), api_keys_file=keys_file, rate_limit_per_key=0.01) as url:
        alice, bob = keys["alice"][0], keys["bob"][0]
        assert httpx.get(f"{url}/v1/models", headers=bearer(alice)).status_code == 200
        r = httpx.get(f"{url}/v1/models", headers={"x-api-key": alice})  # same key, other header
        assert r.status_code == 429, r.text
        assert r.json()["error"] == "rate_limited" and "alice" in r.json()["detail"]
        assert 90 <= int(r.headers["retry-after"]) <= 100  # until the one token refills: ~100 s, not a default
        assert httpx.get(f"{url}/v1/models", headers=bearer(bob)).status_code == 200  # each key has its own bucket
        assert all(httpx.get(f"{url}/healthz").status_code == 200 for _ in range(3))  # exempt: no bucket
        assert_unauthorized(httpx.get(f"{url}/v1/models", headers=bearer("wrong")), "Bearer")  # 401, not 429


def test_token_bucket_refills_at_the_rate():
    now = [0.0]
    bucket = auth.TokenBucket(rate=2.0, burst=2.0, clock=lambda: now[0])
    assert bucket.take() == 0 and bucket.take() == 0
    assert bucket.take() == pytest.approx(0.5)  # one token comes every 1/2 s
    now[0] = 0.5
    assert bucket.take() == 0 and bucket.take() == pytest.approx(0.5)
    now[0] = 100.0  # a long pause refills to the burst, not beyond
    assert [bucket.take() for _ in range(3)][:2] == [0, 0] and bucket.tokens < 1


def test_every_digest_is_compared_in_constant_time(monkeypatch):
    """The code path, not timing: the presented key's hash goes through hmac.compare_digest against
    every stored digest, also after a match, so neither early exits nor == leak which came close."""
    keys = [auth.parse_entry(f"k{i}:{hashlib.sha256(f'key-{i}'.encode()).hexdigest()}") for i in range(5)]
    ring = auth.KeyRing(keys)
    compared = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert ring.identify("key-0").name == "k0"
    assert compared == [k.digest for k in keys]
    compared.clear()
    assert ring.identify("key-9") is None and len(compared) == len(keys)


def test_keys_file_errors_name_the_line_not_the_content(tmp_path):
    bad = tmp_path / "keys"
    bad.write_text("# comment\nalice:" + "ab" * 32 + "\nsecret-key-in-clear\n")
    with pytest.raises(ValueError, match=r"line 3: expected NAME:SHA256HEX") as refused:
        auth.read_keys_file(bad)
    assert "secret-key-in-clear" not in str(refused.value)
    empty = tmp_path / "empty"
    empty.write_text("# nothing issued yet\n")
    with pytest.raises(ValueError, match="holds no keys"):
        auth.KeyRing.from_settings(Settings(api_keys_file=empty))
    with pytest.raises(ValueError, match="cannot be read"):
        auth.KeyRing.from_settings(Settings(api_keys_file=tmp_path / "missing"))
    assert auth.KeyRing.from_settings(Settings()) is None, "auth is off by default"


def test_hash_command_reads_the_key_from_stdin_too():
    digest = hashlib.sha256(b"s3cret").hexdigest()
    argv = [sys.executable, "-m", "service.auth", "hash"]
    assert subprocess.run([*argv, "s3cret"], cwd=REPO, capture_output=True, text=True, timeout=60).stdout.strip() == digest
    piped = subprocess.run(argv, cwd=REPO, input="s3cret\n", capture_output=True, text=True, timeout=60)
    assert piped.stdout.strip() == digest
