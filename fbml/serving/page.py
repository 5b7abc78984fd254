"""The page at ``/`` to try the API in a browser: HTML, CSS and a script from ``static/`` (no build
step, nothing from another origin), each answer with a Content-Security-Policy allowing this origin only.

The script posts the form to the API's own endpoints with ``fetch`` and writes the answers as text.
"""

from __future__ import annotations

from importlib.resources import files

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler

PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
ASSETS = {
    "/": ("index.html", "text/html"),
    "/static/page.js": ("page.js", "text/javascript"),
    "/static/page.css": ("page.css", "text/css"),
}
"""Each path the page is served from: its file in ``static/`` and its media type (Litestar adds UTF-8)."""


def page_handlers() -> list[HTTPRouteHandler]:
    """``GET`` handlers of the page and its assets (read once, here)."""
    return [_asset(path, name, media_type) for path, (name, media_type) in ASSETS.items()]


def _asset(path: str, name: str, media_type: str) -> HTTPRouteHandler:
    content = files(__package__).joinpath("static", name).read_bytes()
    headers = {"content-security-policy": PAGE_POLICY, "cache-control": "no-cache"}

    def asset() -> Response[bytes]:
        return Response(content, media_type=media_type, headers=headers)

    return get(path, sync_to_thread=False, include_in_schema=False, name=f"page:{name}")(asset)
