"""The web page at ``/``: a look at the service for people (pick a model, drop images, see the
overlay, the class legend and a live panel), shipped as plain files in the package (no CDN, no
build step, no framework) and served by ``service.web.routes``."""

from service.web.routes import router

__all__ = ["router"]
