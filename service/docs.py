"""/docs (Swagger UI) and /redoc served from files packaged with the service, never from a CDN, so
the pages work in air-gapped clusters and load nothing from third parties.

The assets are those of ``fastapi-offline`` (Swagger UI 5 and ReDoc 2, the versions FastAPI would
load from jsDelivr); the pages are FastAPI's own ``get_swagger_ui_html`` / ``get_redoc_html``. Each
page sends a Content-Security-Policy that allows its own inline script by hash and nothing foreign
(ReDoc's also allows eval: its bundled JSON-schema compiler builds functions at run time).
"""

from __future__ import annotations

import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.security import page_csp

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs-assets"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def _with_policy(page: HTMLResponse, allow_eval: bool = False) -> HTMLResponse:
    page.headers["content-security-policy"] = page_csp(_INLINE_SCRIPT.findall(page.body.decode()), allow_eval)
    return page


def add_docs(app: FastAPI) -> None:
    """Mount the assets and add /docs and /redoc (the app must be built with docs_url=None, redoc_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "") + ASSETS_URL
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=request.scope.get("root_path", "") + app.openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}/swagger-ui.css",
                swagger_favicon_url=f"{root}/favicon.png",
                swagger_ui_parameters={"validatorUrl": None},  # else a badge asks validator.swagger.io
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "") + ASSETS_URL
        return _with_policy(
            get_redoc_html(
                openapi_url=request.scope.get("root_path", "") + app.openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}/redoc.standalone.js",
                redoc_favicon_url=f"{root}/favicon.png",
                with_google_fonts=False,
            ),
            allow_eval=True,
        )
