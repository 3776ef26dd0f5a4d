"""``/docs`` and ``/redoc`` without a CDN.

FastAPI's default ``/docs`` page loads Swagger UI's JavaScript and CSS from jsdelivr,
so on a machine without internet access it stays blank. ``use_offline_docs`` swaps
both pages of an app for ones whose assets the app serves itself, from the copy of
Swagger UI and ReDoc shipped in the ``fastapi-offline`` wheel (its ``static/`` folder;
we use the files only, not its ``FastAPI`` subclass, so the apps keep their own class).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS_ROUTE = "/docs-assets"
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


@lru_cache(maxsize=1)
def assets_dir() -> Path:
    """The folder holding Swagger UI and ReDoc (``fastapi-offline``'s package data)."""
    folder = Path(str(resources.files("fastapi_offline") / "static"))
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline at {folder} lacks {missing}")
    return folder


def _root(request: Request) -> str:
    # Behind Serve the app is mounted under its route prefix (scope root_path).
    return request.scope.get("root_path", "").rstrip("/")


def use_offline_docs(app: FastAPI) -> FastAPI:
    """Serve ``app``'s ``/docs`` and ``/redoc`` from local assets; returns ``app``."""
    docs, redoc = app.docs_url or "/docs", app.redoc_url or "/redoc"
    app.router.routes[:] = [r for r in app.router.routes
                            if getattr(r, "path", None) not in (docs, redoc)]
    openapi_url, title = app.openapi_url, app.title

    @app.get(f"{ASSETS_ROUTE}/{{name}}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, detail=f"no docs asset {name!r}")
        return FileResponse(assets_dir() / name, media_type=ASSETS[name],
                            headers={"Cache-Control": "max-age=86400"})

    @app.get(docs, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_ROUTE}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_ROUTE}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_ROUTE}/favicon.png")

    @app.get(redoc, include_in_schema=False)
    async def redoc_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(openapi_url=root + openapi_url, title=f"{title} - ReDoc",
                              redoc_js_url=f"{root}{ASSETS_ROUTE}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{ASSETS_ROUTE}/favicon.png",
                              with_google_fonts=False)

    return app
