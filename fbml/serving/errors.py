"""Refusals: ``ApiError`` and the one JSON shape every error answer has (``contracts.api.ErrorBody``)."""

from __future__ import annotations

from typing import Any

from contracts.api import ErrorBody
from litestar import Request, Response
from litestar.exceptions import HTTPException

from fbml.errors import FbmlError, one_line

MAX_FIELD_NAME = 100
"""The most characters of a field's name an error repeats (a client names the fields of a form)."""


class ApiError(FbmlError):
    """A request the API refuses: the status, what is wrong and the field at fault (if one is). Both are bounded
    (``one_line``): an answer never repeats a client's megabytes back."""

    def __init__(self, status_code: int, detail: str, field: str | None = None) -> None:
        detail = one_line(detail)
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.field = None if field is None else one_line(field, MAX_FIELD_NAME)


def api_error_response(_request: Request[Any, Any, Any], error: ApiError) -> Response[ErrorBody]:
    """``error`` as its ``ErrorBody``."""
    return Response(ErrorBody(error.status_code, error.detail, error.field), status_code=error.status_code)


def http_error_response(_request: Request[Any, Any, Any], error: HTTPException) -> Response[ErrorBody]:
    """Litestar's own refusals (an unknown path, a wrong method, a body over the limit) as an ``ErrorBody``."""
    return Response(ErrorBody(error.status_code, error.detail), status_code=error.status_code, headers=error.headers)
