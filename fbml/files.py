"""Files: atomic writes (a file or a folder is wholly there or not at all, whatever kills the writer), and
output folders checked before the work that fills them."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from fbml.errors import FbmlError

NAME_ATTEMPTS = 100
NAME_BYTES = 4  # the random part of a temporary name: 8 hex digits
TEMPORARY_NAME = re.compile(rf"\.(?P<target>.+)\.[a-z0-9_]{{{2 * NAME_BYTES}}}\.(tmp|old)")
Created = TypeVar("Created")


def write_atomically(target: Path, content: bytes) -> None:
    """Write ``content`` to ``target`` through a synced temporary file beside it and a rename; the file
    gets the permissions a plain ``open`` would give it (0666 less the umask)."""
    handle, temporary = _fresh(target, ".tmp", lambda path: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` to fill; on success it replaces ``target`` (any old
    one is moved aside, then deleted), on failure it is deleted and ``target`` is left as it was. The
    folder gets the permissions a plain ``mkdir`` would give it (0777 less the umask)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _, building = _fresh(target, ".tmp", lambda path: os.mkdir(path, 0o777))
    try:
        yield building
        _replace_directory(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _fresh(target: Path, suffix: str, create: Callable[[Path], Created]) -> tuple[Created, Path]:
    """``create``'s result and the new, hidden path beside ``target`` it made (``create`` must fail
    with ``FileExistsError`` when the name is taken, as ``O_EXCL`` and ``mkdir`` do)."""
    for _ in range(NAME_ATTEMPTS):
        path = target.parent / f".{target.name}.{secrets.token_hex(NAME_BYTES)}{suffix}"
        try:
            return create(path), path
        except FileExistsError:
            continue
    raise FbmlError(f"{target.parent}: no free temporary name for {target.name} after {NAME_ATTEMPTS} attempts")


def temporary_target(name: str) -> str | None:
    """The name of the file or folder a temporary (``.tmp``, ``.old``) this module makes is for, or None when
    ``name`` is not such a temporary (its random part is hex; ``tempfile``'s alphabet, which earlier
    versions used, matches too)."""
    found = TEMPORARY_NAME.fullmatch(name)
    return None if found is None else found["target"]


def _replace_directory(building: Path, target: Path) -> None:
    if target.exists():
        _, stale = _fresh(target, ".old", lambda path: os.mkdir(path, 0o700))
        os.replace(target, stale / target.name)
        shutil.rmtree(stale)
    os.replace(building, target)


def check_output_folder(folder: Path | None) -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created."""
    if folder is None:
        return
    if folder.exists() and not folder.is_dir():
        raise FbmlError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FbmlError(f"{folder}: cannot create the folder ({error.strerror})") from None


def check_destination(destination: Path | None, what: str, **sources: Path | None) -> None:
    """Refuse, before any work, a ``destination`` folder that is one of ``sources`` or inside one (links followed):
    writing there would replace or mix with what the command reads (``fbml clean-images DIR DIR`` would overwrite
    every original with its small copy)."""
    if destination is None:
        return
    target = destination.resolve()
    for name, source in sources.items():
        if source is None:
            continue
        origin = source.resolve()
        if target == origin or target.is_relative_to(origin):
            place = "is" if target == origin else "is inside"
            raise FbmlError(f"{destination}: the {what} {place} the {name.replace('_', ' ')} {source}; choose a folder outside it")
