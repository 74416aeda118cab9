"""Interactive API docs that work offline: Swagger UI at ``/docs`` and ReDoc at
``/redoc``, their scripts and styles served by this process (from the fastapi-offline
package) instead of a CDN. Whether they need the token is decided by
:class:`orchestrator.api.security.BearerAuth` like for every other path."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response

from orchestrator.api.errors import error_response
from orchestrator.api.security import DOC_ASSETS_PREFIX

__all__ = ["ASSETS", "install_docs"]

_STATIC: Final = Path(fastapi_offline.__file__).parent / "static"
#: The files served under /docs-assets/ (a fixed list: no path from the request reaches the filesystem).
ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


def install_docs(api: FastAPI) -> None:
    """Add /docs, /docs/oauth2-redirect, /redoc and /docs-assets/{name} to ``api``
    (created with ``docs_url=None, redoc_url=None``)."""
    openapi_url = api.openapi_url or "/openapi.json"
    title = api.title

    @api.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOC_ASSETS_PREFIX}swagger-ui-bundle.js",
            swagger_css_url=f"{DOC_ASSETS_PREFIX}swagger-ui.css",
            swagger_favicon_url=f"{DOC_ASSETS_PREFIX}favicon.png",
        )

    @api.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @api.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{DOC_ASSETS_PREFIX}redoc.standalone.js",
            redoc_favicon_url=f"{DOC_ASSETS_PREFIX}favicon.png",
            with_google_fonts=False,
        )

    @api.get(DOC_ASSETS_PREFIX + "{name}", include_in_schema=False, response_model=None)
    async def asset(name: str) -> Response:
        media_type = ASSETS.get(name)
        if media_type is None:
            return error_response(404, "not_found", "no such asset")
        return FileResponse(_STATIC / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
