"""API keys: who may call the service, and how often.

Off unless keys are configured (``api_keys_file``, ``api_key_hashes``, ``admin_key_hashes``). Keys
are stored only as SHA-256 digests, so a leaked config or Secret does not leak a key; a presented
key (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``) is hashed and compared with *every*
digest through ``hmac.compare_digest``, so the time taken tells nothing about which digest came
close. ``auth_exempt_paths`` (probes, Prometheus) pass without a key. An optional token bucket per
key name (``rate_limit_per_key``) answers 429 + Retry-After. An accepted request carries Starlette's
``scope["user"]`` (the key's name) and ``scope["auth"]`` (scopes ``authenticated``, ``admin``), so
routes can use ``starlette.authentication.requires``.

``python -m service.auth new NAME`` makes a random key and its file line; ``hash [KEY]`` hashes one.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import math
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.authentication import AuthCredentials, SimpleUser
from starlette.responses import JSONResponse

from service.errors import RateLimited, ServiceError, Unauthorized

log = logging.getLogger("service")


def digest_of(key: str) -> str:
    """The SHA-256 hex digest stored for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # raw SHA-256
    admin: bool = False


def parse_entry(entry: str, admin: bool = False, where: str = "") -> ApiKey:
    """``NAME:SHA256HEX`` or a bare ``SHA256HEX`` (named after its first 8 hex digits)."""
    name, _, hexdigest = entry.strip().rpartition(":")
    hexdigest = hexdigest.strip().lower()
    if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest):
        raise ValueError(f"{where}expected NAME:SHA256HEX (64 hex digits; python -m service.auth hash KEY)")
    return ApiKey(name.strip() or f"key-{hexdigest[:8]}", bytes.fromhex(hexdigest), admin)


def read_keys_file(path: Path) -> list[ApiKey]:
    """One ``NAME:SHA256HEX`` per line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"api_keys_file {path} cannot be read: {exc.strerror}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            keys.append(parse_entry(line, where=f"{path}, line {number}: "))
    if not keys:
        raise ValueError(f"{path} holds no keys: every request would get 401")
    return keys


class KeyRing:
    def __init__(self, keys: list[ApiKey]):
        self.keys = keys

    @classmethod
    def from_settings(cls, settings) -> KeyRing | None:
        """The configured keys, or None when auth is off (nothing configured)."""
        keys = [parse_entry(e) for e in settings.api_key_hashes]
        keys += [parse_entry(e, admin=True) for e in settings.admin_key_hashes]
        if settings.api_keys_file is not None:
            keys += read_keys_file(settings.api_keys_file)
        return cls(keys) if keys else None

    def identify(self, presented: str) -> ApiKey | None:
        """The key whose digest matches; every digest is compared, in constant time each."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest) and found is None:
                found = key
        return found


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or, failing that, ``X-API-Key: KEY``."""
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get(b"x-api-key", b"").decode("latin-1").strip() or None


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; one token per request."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.updated = burst, clock()

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def is_exempt(path: str, exempt: list[str]) -> bool:
    """Exact paths, or everything under an entry that ends in ``/``; ``/`` itself is only the web
    page (as a prefix it would exempt every path and turn auth off)."""
    return any(path == e or (e.endswith("/") and e != "/" and path.startswith(e)) for e in exempt)


class AuthMiddleware:
    """Refuses requests without a valid key (401) or over the key's rate (429), before any route
    runs, so an unauthenticated client never gets its body read or its image decoded."""

    def __init__(self, app, keys: KeyRing, exempt: list[str], rate_per_key: float = 0.0):
        self.app, self.keys, self.exempt, self.rate = app, keys, list(exempt), rate_per_key
        self.buckets: dict[str, TokenBucket] = {}  # one per key name: bounded by the configured keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_exempt(scope["path"], self.exempt):
            return await self.app(scope, receive, send)
        try:
            key = self.authenticate(dict(scope["headers"]))
        except ServiceError as exc:
            log.info("refused", extra={"error": exc.code, "detail": exc.detail})
            response = JSONResponse({"error": exc.code, "detail": exc.detail}, exc.status, exc.headers)
            return await response(scope, receive, send)
        scope["user"] = SimpleUser(key.name)
        scope["auth"] = AuthCredentials(["authenticated", "admin"] if key.admin else ["authenticated"])
        await self.app(scope, receive, send)

    def authenticate(self, headers: dict[bytes, bytes]) -> ApiKey:
        presented = presented_key(headers)
        if presented is None:
            raise Unauthorized("an API key is required: send Authorization: Bearer KEY or X-API-Key: KEY")
        key = self.keys.identify(presented)
        if key is None:
            raise Unauthorized("the API key is not valid", 'Bearer error="invalid_token"')
        if self.rate > 0:
            bucket = self.buckets.setdefault(key.name, TokenBucket(self.rate, max(1.0, self.rate)))
            if wait := bucket.take():
                raise RateLimited(f"API key {key.name!r} is over {self.rate:g} requests/s", math.ceil(wait))
        return key


def document(app, exempt: list[str]) -> None:
    """Declare the key schemes in the OpenAPI spec (Swagger UI's Authorize button uses them)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            spec["security"] = [{"bearer": []}, {"apiKey": []}]
            for path, operations in spec.get("paths", {}).items():
                for operation in operations.values():
                    if is_exempt(path, exempt):
                        operation["security"] = []
                    else:
                        operation.setdefault("responses", {}).setdefault("401", {"description": "missing or invalid API key"})
        return app.openapi_schema

    app.openapi = openapi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.auth", description="API keys for deeplab-serve")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="print a new random key, then its NAME:SHA256HEX line for api_keys_file")
    new.add_argument("name")
    hashing = commands.add_parser("hash", help="print the SHA-256 hex digest of KEY (read from stdin if omitted)")
    hashing.add_argument("key", nargs="?")
    args = parser.parse_args(argv)
    if args.command == "new":
        if ":" in args.name or not args.name.strip():
            parser.error("NAME must be non-empty and without ':'")
        key = secrets.token_urlsafe(32)
        print("line 1: the key, for the client (stored nowhere); line 2: the line for api_keys_file", file=sys.stderr)
        print(key)
        print(f"{args.name}:{digest_of(key)}")
    else:
        key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
        if not key:
            parser.error("no key given")
        print(digest_of(key))


if __name__ == "__main__":
    main()
