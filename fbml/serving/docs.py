"""``/docs``: Swagger UI over the app's OpenAPI document, from files installed with the package
(``openapi-ui-bundles``' Swagger UI 5, and ``static/docs.html`` and ``static/docs.js``): nothing from another origin,
no inline script, no validator badge (which would call validator.swagger.io). Its policy allows this origin only,
plus ``data:`` images (Swagger UI's icons) and inline style attributes (which Swagger UI writes).
"""

from __future__ import annotations

from importlib.resources import files

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from openapi_ui_bundles import swagger_ui

DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
OWN = {"/docs": ("docs.html", "text/html"), "/docs/docs.js": ("docs.js", "text/javascript")}
VENDOR = {"/docs/swagger-ui.css": ("swagger-ui.css", "text/css"), "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript")}
"""Each path of the documentation page: its file (in ``static/``, or Swagger UI's) and its media type."""


def docs_handlers() -> list[HTTPRouteHandler]:
    """``GET`` handlers of ``/docs`` and its files (read once, here)."""
    own = [_file(path, files(__package__).joinpath("static", name).read_bytes(), media_type) for path, (name, media_type) in OWN.items()]
    vendor = [_file(path, (swagger_ui.static_path / name).read_bytes(), media_type) for path, (name, media_type) in VENDOR.items()]
    return own + vendor


def _file(path: str, content: bytes, media_type: str) -> HTTPRouteHandler:
    headers = {"content-security-policy": DOCS_POLICY, "cache-control": "no-cache"}

    def served() -> Response[bytes]:
        return Response(content, media_type=media_type, headers=headers)

    return get(path, sync_to_thread=False, include_in_schema=False, name=f"docs:{path}")(served)
