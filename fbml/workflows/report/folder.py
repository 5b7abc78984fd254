"""The report's folder: which files an earlier report left (listed in its marker file), and writing the
page and its pictures in their place."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import attrs
from PIL import Image

from fbml.errors import FbmlError
from fbml.files import write_atomically

INDEX = "index.html"
MARKER = ".fbml-report.json"


@attrs.frozen
class Picture:
    """A picture to save as ``name`` in the report folder (a ``.jpg`` name as JPEG, any other as PNG)."""

    name: str
    image: Image.Image = attrs.field(eq=False)


def report_files(directory: Path) -> tuple[str, ...]:
    """The files an earlier report wrote in ``directory``; refuse a file or a non-empty folder of something else."""
    if not directory.exists():
        return ()
    if not directory.is_dir():
        raise FbmlError(f"{directory}: exists and is not a folder; choose a new folder for the report")
    marker = directory / MARKER
    if marker.is_symlink():
        raise FbmlError(f"{marker}: is a symbolic link, not a report fbml wrote; remove the folder or choose another")
    if marker.is_file():
        return _marked_files(marker)
    if any(directory.iterdir()):
        raise FbmlError(f"{directory}: folder is not empty and holds no earlier report; choose a new or empty folder")
    return ()


def _marked_files(marker: Path) -> tuple[str, ...]:
    """The file names listed in an earlier report's marker file."""
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
        files = content["files"]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as error:
        raise FbmlError(f"{marker}: unreadable report marker ({error}); remove the folder or choose another") from error
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        raise FbmlError(f"{marker}: unreadable report marker (no list of files); remove the folder or choose another")
    return tuple(name for name in files if _plain_name(name))


def _plain_name(name: str) -> bool:
    """Whether ``name`` is a bare file name (no folder part), so removing it stays inside the report folder."""
    return bool(name) and name not in (".", "..", MARKER) and Path(name).name == name and "/" not in name and "\\" not in name


def write_folder(directory: Path, previous: tuple[str, ...], pictures: Sequence[Picture], page: str) -> Path:
    """Replace an earlier report's files by ``pictures`` and the page; the marker is written before the rest.
    Every file is written afresh and renamed into place (``write_atomically``), so a symbolic link left under
    one of their names is replaced, never written through. The page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [INDEX, *(picture.name for picture in pictures)]
    for name in set(previous) - set(names):
        stale = directory / name
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
    marker = {"written_by": "fbml.workflows.report", "files": names}
    write_atomically(directory / MARKER, json.dumps(marker, indent=1).encode())
    for picture in pictures:
        write_atomically(directory / picture.name, _encoded(picture))
    index = directory / INDEX
    write_atomically(index, page.encode("utf-8"))
    return index


def _encoded(picture: Picture) -> bytes:
    """The picture as a file's bytes: JPEG for a ``.jpg`` name, else PNG."""
    buffer = io.BytesIO()
    if picture.name.endswith(".jpg"):
        picture.image.save(buffer, "JPEG", quality=85)
    else:
        picture.image.save(buffer, "PNG")
    return buffer.getvalue()
