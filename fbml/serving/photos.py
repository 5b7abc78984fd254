"""``GET /photos/{id}``: a catalogue listing's photo, from the folder ``fbml clean-images`` wrote (``<id>.jpg``).

Served only when the server was given that folder (``fbml serve --photos DIR``), and only for the photo ids
of the bundle's catalogue: an id is a bounded run of letters, digits, ``-`` and ``_`` (no separator, no
dot), and its file must be a regular file directly in the folder (a link leading out of it is not), so no
request reaches another file. The file is read on a thread, never on the event loop; the answer carries an
``ETag`` (its content's hash) and ``Cache-Control``, and an ``If-None-Match`` that names it gets 304.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

import attrs
from contracts.api import ErrorBody
from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath

from fbml.bundle.search import SearchIndex
from fbml.errors import FbmlError
from fbml.serving.errors import ApiError

PHOTO_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""The photo ids served: no separator, no dot, bounded (cleaned photos are named ``<id>.jpg``)."""
MAX_PHOTO_BYTES = 32 * 2**20
"""The largest photo file served (``fbml clean-images`` writes far smaller ones)."""
CACHE_CONTROL = "public, max-age=86400"


@attrs.frozen
class PhotoFolder:
    """The cleaned photo folder (resolved) and the photo ids it may serve (the catalogue's)."""

    folder: Path
    known: frozenset[str]

    @classmethod
    def of(cls, folder: Path, index: SearchIndex | None) -> PhotoFolder:
        """``folder``'s photos of the catalogue of ``index`` (none without an index); ``FbmlError`` unless it is a folder."""
        known = frozenset() if index is None else frozenset(index.catalogue["photos"].explode().drop_nulls().to_list())
        return cls(checked_photo_folder(folder), known)


def checked_photo_folder(folder: Path) -> Path:
    """``folder`` resolved; ``FbmlError`` (one line) when it is missing or not a folder."""
    if not folder.is_dir():
        raise FbmlError(f"--photos {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    return folder.resolve()


@attrs.frozen
class Photo:
    """A photo file's content and its entity tag."""

    content: bytes
    etag: str


def read_photo(folder: Path, photo_id: str) -> Photo | None:
    """``folder/<photo_id>.jpg`` when it is a regular file of at most ``MAX_PHOTO_BYTES`` whose real path is
    directly in ``folder`` (resolved); None otherwise."""
    try:
        real = (folder / f"{photo_id}.jpg").resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if real.parent != folder:
        return None
    try:
        descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_PHOTO_BYTES:
            return None
        with os.fdopen(descriptor, "rb", closefd=False) as reading:
            content = reading.read(MAX_PHOTO_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    if len(content) > MAX_PHOTO_BYTES:
        return None
    return Photo(content, f'"{hashlib.sha256(content).hexdigest()[:32]}"')


def names_etag(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag`` (``*``, or a list of tags, weak or strong)."""
    if if_none_match is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def photo_handler(photos: PhotoFolder) -> HTTPRouteHandler:
    """``GET /photos/{photo_id}`` over ``photos``."""

    async def photo(photo_id: FromPath[str], request: Request[Any, Any, Any]) -> Response[bytes]:
        """A catalogue listing's cleaned photo (JPEG), by its id."""
        found = None
        if PHOTO_ID.fullmatch(photo_id) and photo_id in photos.known:
            found = await asyncio.to_thread(read_photo, photos.folder, photo_id)
        if found is None:
            raise ApiError(404, "no such photo", "photo_id")
        headers = {"cache-control": CACHE_CONTROL, "etag": found.etag}
        if names_etag(request.headers.get("if-none-match"), found.etag):
            return Response(b"", status_code=304, headers=headers)
        return Response(found.content, media_type="image/jpeg", headers=headers)

    responses = {
        304: ResponseSpec(None, description="The photo has not changed (its ETag was named in If-None-Match)"),
        404: ResponseSpec(ErrorBody, description="No such photo in the catalogue or the photo folder", generate_examples=False),
    }
    return get("/photos/{photo_id:str}", media_type="image/jpeg", responses=responses, name="photo")(photo)
