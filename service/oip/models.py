"""Model name (and version) -> the runtime that serves it, for the protocol's routes and RPCs:
``service.repository.registry.Repository`` is the table; this is the one place the protocol reads it."""

from __future__ import annotations

from service.repository.registry import Repository
from service.runtime import Runtime


def repository(app) -> Repository:
    return app.state.repository


def lookup(app, name: str, version: str | None = None) -> Runtime:
    """The runtime serving ``name`` (at ``version``, else its highest): 404 for an unknown model
    or version, 503 while start-up models are still loading."""
    return repository(app).get(name, version or None)


def server_ready(app) -> bool:
    """Every start-up model loaded, warmed up, and the server not draining."""
    return repository(app).ready
