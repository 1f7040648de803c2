"""What browsers see, against a real server: security headers on every response, /docs and /redoc
from packaged assets only (no CDN), CORS off by default and exact when configured."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest
from helpers import image_bytes, post, running_server, scene, small_net

from service.auth import digest_of
from service.backends.pytorch import TorchBackend

ORIGIN = "https://app.example.com"
KEY = "test-key-for-cors"


@pytest.fixture(scope="module")
def server():
    with running_server(TorchBackend(net=small_net())) as url:
        yield url


@pytest.fixture(scope="module")
def cors_server():
    with running_server(TorchBackend(net=small_net()), cors_origins=[ORIGIN], api_key_hashes=[f"web:{digest_of(KEY)}"]) as url:
        yield url


def directives(csp: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}


def assert_security_headers(response: httpx.Response) -> None:
    h = response.headers
    assert h["x-content-type-options"] == "nosniff", response.url
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    csp = directives(h["content-security-policy"])
    assert csp["frame-ancestors"] == ["'none'"] and csp["default-src"] == ["'none'"], csp


def test_every_kind_of_response_carries_the_security_headers(server):
    png = image_bytes(scene(2), "PNG")
    responses = [
        httpx.get(f"{server}/healthz"),
        httpx.get(f"{server}/metrics"),
        httpx.get(f"{server}/openapi.json"),
        httpx.get(f"{server}/v1/models"),
        post(server, png),  # 200 image
        post(server, png, fmt="json"),
        post(server, b"not an image"),  # 415 from the image pipeline
        post(server, png, fmt="bogus"),  # 422 from validation
        httpx.get(f"{server}/no-such-path"),  # 404 from the router
        httpx.delete(f"{server}/segment"),  # 405
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 200, 200, 415, 422, 404, 405]
    for r in responses:
        assert_security_headers(r)
    assert directives(responses[4].headers["content-security-policy"])["default-src"] == ["'none'"]


def page_references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"""url:\s*'([^']+)'""", html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_packaged_assets(server, page):
    r = httpx.get(server + page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    refs = page_references(html) + re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", html)
    assert refs, "the page references no assets: the pattern above is out of date"
    assert not re.search(r"(https?:)?//[\w.-]+\.\w", html.replace("http://www.w3.org", "")), "the page names an external host"
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        asset = httpx.get(server + ref)
        assert asset.status_code == 200, ref
        assert_security_headers(asset)
    kinds = {httpx.get(server + ref).headers["content-type"].split(";")[0] for ref in refs}
    assert "text/javascript" in kinds or "application/javascript" in kinds
    if page == "/docs":
        assert "text/css" in kinds and '"validatorUrl": null' in html


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_allow_only_their_own_scripts(server, page):
    r = httpx.get(server + page)
    csp = directives(r.headers["content-security-policy"])
    assert csp["default-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"] and "'unsafe-inline'" not in csp["script-src"]
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    for script in inline:  # each inline script is allowed by its hash, so nothing injected runs
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp["script-src"]
    assert len(inline) == (1 if page == "/docs" else 0)
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


def test_cors_is_off_by_default(server):
    r = httpx.get(f"{server}/v1/models", headers={"origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    preflight = httpx.options(f"{server}/segment", headers={"origin": ORIGIN, "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405 and preflight.json()["error"] == "method_not_allowed"


def test_cors_preflight_from_an_allowed_origin_needs_no_key(cors_server):
    headers = {"origin": ORIGIN, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type"}
    r = httpx.options(f"{cors_server}/segment", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert {"authorization", "x-api-key", "content-type"} <= {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert "access-control-allow-credentials" not in r.headers  # keys travel in headers, never cookies
    assert_security_headers(r)


def test_cors_refusals_are_json(cors_server):
    for headers in (
        {"origin": "https://evil.example", "access-control-request-method": "POST"},
        {"origin": ORIGIN, "access-control-request-method": "DELETE"},
    ):
        r = httpx.options(f"{cors_server}/segment", headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "cors_refused", r.text
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"
    r = httpx.get(f"{cors_server}/v1/models", headers={"origin": "https://evil.example", "x-api-key": KEY})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # the browser withholds it


def test_cross_origin_answers_and_refusals_are_readable_by_the_page(cors_server):
    png = image_bytes(scene(3), "PNG")
    r = httpx.post(f"{cors_server}/segment", content=png, headers={"content-type": "image/png", "origin": ORIGIN, "authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-total-ms", "retry-after"} <= exposed
    refused = httpx.get(f"{cors_server}/v1/models", headers={"origin": ORIGIN})  # no key
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    assert_security_headers(refused)
