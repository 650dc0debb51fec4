"""The browser dashboard: one static page, its script and style, and the vendored chart library.

Everything the page needs is served by the API itself (uPlot comes from ``tools/node_modules``,
installed by ``scripts/setup.sh``), so a ward machine without internet access gets the same page,
and a Content-Security-Policy of ``'self'`` keeps it that way.  The page holds no data: it asks
the API's own routes with the user's bearer token, so every patient fact it shows passes the same
role and consent checks (and the same access log) as any other client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from vitalchain.api.auth import access_info

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = Path(__file__).resolve().parents[1] / "tools" / "node_modules"
# Only these files are served: a fixed table, so no request path ever reaches the file system.
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
VENDOR_FILES = {
    "uplot.js": ("uplot/dist/uPlot.iife.min.js", "text/javascript"),
    "uplot.css": ("uplot/dist/uPlot.min.css", "text/css"),
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _serve(request: Request, path: Path, media_type: str) -> FileResponse:
    # The access recorder logs every request; mark page assets as the public files they are.
    access_info(request).update(allowed=True, reason="public dashboard file")
    if not path.is_file():
        raise HTTPException(404, f"{path.name} is missing: run scripts/setup.sh (npm ci in tools/)")
    return FileResponse(path, media_type=media_type, headers=HEADERS)


@router.get("/")
def index(request: Request) -> FileResponse:
    return _serve(request, STATIC_DIR / "index.html", "text/html; charset=utf-8")


@router.get("/static/vendor/{name}")
def vendor(request: Request, name: str) -> FileResponse:
    if name not in VENDOR_FILES:
        raise HTTPException(404, f"no vendored file {name!r}")
    relative, media_type = VENDOR_FILES[name]
    return _serve(request, VENDOR_DIR / relative, media_type)


@router.get("/static/{name}")
def static(request: Request, name: str) -> FileResponse:
    if name not in STATIC_FILES:
        raise HTTPException(404, f"no static file {name!r}")
    return _serve(request, STATIC_DIR / name, STATIC_FILES[name])
