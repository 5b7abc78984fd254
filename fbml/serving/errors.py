"""Refusals: ``ApiError`` and the one JSON shape every error answer has (``contracts.api.ErrorBody``)."""

from __future__ import annotations

from typing import Any

from contracts.api import ErrorBody
from litestar import Request, Response
from litestar.exceptions import HTTPException

from fbml.errors import FbmlError


class ApiError(FbmlError):
    """A request the API refuses: the status, what is wrong and the field at fault (if one is)."""

    def __init__(self, status_code: int, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.field = field


def api_error_response(_request: Request[Any, Any, Any], error: ApiError) -> Response[ErrorBody]:
    """``error`` as its ``ErrorBody``."""
    return Response(ErrorBody(error.status_code, error.detail, error.field), status_code=error.status_code)


def http_error_response(_request: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorBody]:
    """Litestar's own refusals (an unknown path, a wrong method, a body over the limit) as an ``ErrorBody``."""
    return Response(ErrorBody(error.status_code, error.detail), status_code=error.status_code, headers=error.headers)
