"""``/docs`` (Swagger UI) and ``/redoc`` served from installed files: no CDN, no external URL.

FastAPI's built-in pages load Swagger UI and ReDoc from a CDN (and ReDoc's
fonts from Google Fonts), so without internet access ``/docs`` is a blank page.
Here the assets come from the ``fastapi-offline`` wheel (the swagger-ui-dist
bundle and stylesheet, ReDoc's standalone bundle and a favicon), mounted as
static files at :data:`ASSETS_PATH`. The pages name only paths on this server,
prefixed with the request's root path, so they also work behind a proxy that
mounts the API under a prefix. Swagger UI's online validator is switched off
(``validatorUrl: null``): it would send the schema to an outside service.

Metrics: the asset files are one route for the latency histogram, labelled by
the mount path (``route="/docs-assets"``), so they add a single series, never
one per file, and never count under an API route.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs-assets"

SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
ASSETS = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)

#: Swagger UI options on top of FastAPI's defaults: no call to the online validator.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def assets_dir() -> Path | None:
    """The directory holding :data:`ASSETS`, or None when the package or a file is missing."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    directory = Path(fastapi_offline.__file__).parent / "static"
    if all((directory / name).is_file() for name in ASSETS):
        return directory
    return None


def install_docs(app: FastAPI) -> bool:
    """Add ``/docs``, ``/redoc`` and the asset mount to ``app`` (built with ``docs_url=None``).

    Returns False, with a warning, when the assets are not installed: the API
    still serves, ``/openapi.json`` included, but there are no docs pages.
    """
    directory = assets_dir()
    if directory is None:
        log.warning(
            "docs assets not installed (pip install fastapi-offline): %s and %s are not "
            "served; the schema is still at %s",
            DOCS_PATH,
            REDOC_PATH,
            app.openapi_url,
        )
        return False
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS_PATH, StaticFiles(directory=directory), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_PATH}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/{FAVICON}",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/{FAVICON}",
            with_google_fonts=False,
        )

    return True
