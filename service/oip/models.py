"""Model name (and version) -> the runtime that serves it: the one place the protocol resolves a
model, so a gRPC front and a multi-model repository change this lookup, not the routes.

Today the app serves one runtime; its name is its config's name (e.g.
``deeplabv3plus_r18-d8_camvid-360x480``), known once the model is loaded.
"""

from __future__ import annotations

from service.errors import ModelNotFound, NotReady
from service.oip.contract import VERSION
from service.runtime import Runtime


def runtimes(app) -> list[Runtime]:
    """Every runtime the app serves."""
    return [app.state.runtime]


def name_of(runtime: Runtime) -> str | None:
    """The served name, or None while the model is still loading."""
    return runtime.config.name if runtime.config is not None else None


def lookup(app, name: str, version: str | None = None) -> Runtime:
    """The runtime serving ``name``: 404 for an unknown model or version, 503 while a model is
    still loading (its name is not known yet, so ``name`` may be it)."""
    served = {name_of(r): r for r in runtimes(app)}
    if name not in served:
        if None in served:
            raise NotReady("a model is still loading")
        raise ModelNotFound(f"unknown model {name!r}; this server serves {sorted(served)}")
    if version not in (None, "", VERSION):
        raise ModelNotFound(f"model {name!r} has no version {version!r}; its versions: [{VERSION!r}]")
    return served[name]


def server_ready(app) -> bool:
    """Every model loaded, warmed up, and the server not draining."""
    return all(r.state == "ready" for r in runtimes(app))
