"""``/docs`` (Swagger UI) and ``/redoc`` served with no CDN: a self-hosted, offline instance still shows them.

FastAPI's own pages load their JavaScript and CSS from a CDN, so without Internet access they stay blank. The
assets come from the ``fastapi-offline`` package instead (Swagger UI's and ReDoc's release bundles, shipped in its
wheel), served by Starlette's ``StaticFiles`` from the package; the pages are FastAPI's ``get_swagger_ui_html`` and
``get_redoc_html`` pointed at them (FastAPI's "Self-hosting JavaScript and CSS for docs"). The app must be made with
``docs_url=None, redoc_url=None`` so FastAPI does not register its CDN pages first.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/static"
# The files fastapi-offline ships in its package directory ``static/``.
ASSETS_PACKAGE = ("fastapi_offline", "static")
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"


def install(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the docs assets at ``ASSETS_URL`` and the two pages at ``docs_url`` and ``redoc_url``."""
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-static")

    def prefix(request: Request) -> str:
        # Behind a proxy that mounts the service under a path, every URL of the page needs that path too.
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            with_google_fonts=False,
        )
