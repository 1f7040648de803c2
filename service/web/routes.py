"""Routes of the page: ``/`` (the HTML), ``/ui/<file>`` (its script modules and stylesheet) and
``/v1/stats`` (the live panel's numbers, ``service.web.stats``).

The files are read once from the package and served from memory, only those that exist under
``static/`` (no path from the URL ever reaches the file system). The page runs under a strict
Content-Security-Policy: scripts and styles from this origin only (no inline code at all), fetches
to this origin only, images from canvases and the ``data:`` favicon; with API keys on, ``/`` and
``/ui/`` are in the default ``auth_exempt_paths`` (the page holds no data; its API calls carry the
key typed into it).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from service.api import repository_of
from service.web.stats import samples_of_text, snapshot

STATIC = Path(__file__).parent / "static"
ASSETS_URL = "/ui"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "media-src 'self' mediastream:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_PAGE = (STATIC / "index.html").read_bytes()
_ASSETS = {p.name: (p.read_bytes(), _TYPES[p.suffix]) for p in sorted(STATIC.iterdir()) if p.suffix in _TYPES}
_NO_CACHE = {"cache-control": "no-cache"}  # revalidate: a new release's page never runs old modules

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(_PAGE, headers={"content-security-policy": PAGE_CSP, **_NO_CACHE})


@router.get(ASSETS_URL + "/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in _ASSETS:
        raise HTTPException(404, f"no page asset {name!r}")  # answered as the service's JSON 404
    body, media_type = _ASSETS[name]
    return Response(body, media_type=media_type, headers=_NO_CACHE)


@router.get("/v1/stats", summary="The page's live panel: inference requests, latency p50/p99, per-model fps and batch size, GPUs")
async def stats(request: Request) -> dict:
    repository = repository_of(request)
    if repository.peers is None:
        return snapshot(repository.metrics.registry)
    merged = repository.peers.merged(repository.metrics.render()).decode()  # every worker's series
    return snapshot(samples_of_text(merged))
