"""Manifest photos decoded to uint8 CHW arrays, in memory or in an on-disk cache that is decoded once.

Every manifest row is accounted for: its photo is loaded, or the row is reported in a ``Rejected``
frame (stage ``"images"``) with the reason. Decoding runs in a thread pool (PIL releases the GIL
while it decodes and resizes) and writes straight into the output array, so a cache of any size is
built in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs
import contracts
import numpy as np
import polars as pl
from contracts.rules import REJECTED_SCHEMA
from PIL import UnidentifiedImageError
from tqdm import tqdm

from fbml.errors import ContractError, FbmlError, InputError
from fbml.files import atomic_directory, temporary_target
from fbml.tables.validation import rejected_checked, validated
from fbml.vision.cleaning import clean_image, link_problem, open_image

if TYPE_CHECKING:
    from contracts import ImageManifest, Rejected
    from pandera.typing.polars import DataFrame

MAX_PIXELS = 89_478_485
CACHE_FORMAT = "fbml.image-cache/2"
"""/2 since ``clean_image`` resizes with bicubic (it was Lanczos): a /1 cache was resized otherwise and is rebuilt."""
PIXELS_FILE = "pixels.npy"
INDEX_FILE = "index.json"
MISSING = "photo file missing"
UNREADABLE = "unreadable photo"
_NPY_VERSION = (1, 0)


def _array_eq(left: np.ndarray, right: np.ndarray) -> bool:
    return left.shape == right.shape and bool(np.array_equal(left, right))


@attrs.frozen
class Photos:
    """Decoded photos in manifest order: ``pixels[i]`` is manifest row ``rows[i]``, photo ``image_ids[i]``."""

    image_ids: tuple[str, ...]
    rows: np.ndarray = attrs.field(eq=attrs.cmp_using(eq=_array_eq))  # int64 (N,)
    pixels: np.ndarray = attrs.field(eq=attrs.cmp_using(eq=_array_eq))  # uint8 (N, 3, size, size)
    rejected: DataFrame[Rejected] = attrs.field(eq=attrs.cmp_using(eq=pl.DataFrame.equals))


@attrs.frozen
class ImageCache:
    """Photos decoded once into ``directory``: ``pixels`` (memory-mapped) row ``i`` is ``image_ids[i]``."""

    directory: Path
    size: int
    image_ids: tuple[str, ...]
    pixels: np.ndarray = attrs.field(eq=False, repr=False)  # read-only memmap, uint8 (N, 3, size, size)
    rejected: DataFrame[Rejected] = attrs.field(eq=attrs.cmp_using(eq=pl.DataFrame.equals))
    manifest_key: str

    @classmethod
    def open(cls, directory: Path) -> ImageCache:
        """Memory-map the cache in ``directory``; ``InputError`` when it is missing or inconsistent."""
        index = _read_index(directory)
        try:
            pixels = np.load(directory / PIXELS_FILE, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise _invalid(directory, f"cannot read {PIXELS_FILE}: {error}") from None
        expected = (len(index["image_ids"]), 3, index["size"], index["size"])
        if pixels.dtype != np.uint8 or pixels.shape != expected:
            raise _invalid(directory, f"{PIXELS_FILE} is {pixels.dtype} {pixels.shape}, {INDEX_FILE} says uint8 {expected}")
        return cls(directory, index["size"], tuple(index["image_ids"]), pixels, index["rejected"], index["manifest"])

    def cached(self, image_ids: Sequence[str] | pl.Series) -> np.ndarray:
        """Whether each photo is in the cache (bool array)."""
        return self._positions(image_ids).is_not_null().to_numpy()

    def rows_for(self, image_ids: Sequence[str] | pl.Series) -> np.ndarray:
        """The pixel row (int64) of each photo; ``FbmlError`` naming any photo not in the cache."""
        positions = self._positions(image_ids)
        if positions.null_count():
            absent = pl.Series(image_ids, dtype=pl.String).filter(positions.is_null())
            raise FbmlError(f"{self.directory}: {absent.len()} photo(s) not in the image cache, e.g. {absent.head(3).to_list()}")
        return positions.to_numpy()

    def _positions(self, image_ids: Sequence[str] | pl.Series) -> pl.Series:
        ids = pl.Series("image_id", image_ids, dtype=pl.String)
        return ids.replace_strict(self.image_ids, range(len(self.image_ids)), default=None, return_dtype=pl.Int64)


@attrs.frozen
class _Plan:
    """The manifest rows whose photo file exists (with the file), and the others with why they have none."""

    rows: np.ndarray
    paths: tuple[Path, ...]
    refused: dict[int, str]


@attrs.frozen
class _Loaded:
    """The manifest rows decoded into the first ``len(rows)`` pixel rows, and the rejected rows."""

    rows: np.ndarray
    rejected: DataFrame[Rejected]


@attrs.frozen
class PhotoFolder:
    """A photo folder listed once: the file of each stem (the first name in sorted order wins; a symbolic
    link out of the folder or to nothing is passed over, and is the reason when its stem has no other file)."""

    path: Path
    files: Mapping[str, Path]
    links: Mapping[str, str]

    @classmethod
    def listed(cls, image_dir: Path) -> PhotoFolder:
        """``image_dir``'s photo files by stem; ``InputError`` when it is not a folder."""
        if not image_dir.is_dir():
            raise InputError(image_dir, "no such directory")
        root = image_dir.resolve()
        files: dict[str, Path] = {}
        links: dict[str, str] = {}
        for path in sorted(image_dir.iterdir()):
            problem = link_problem(path, root)
            if problem is not None:
                links.setdefault(path.stem, problem)
            elif path.is_file():
                files.setdefault(path.stem, path)
        return cls(image_dir, files, links)


def check_photo_folder(folder: Path | None) -> None:
    """Refuse, before any work, a photo folder that is missing, not a folder or empty."""
    if folder is None:
        return
    if not folder.exists():
        raise FbmlError(f"{folder}: no such photo folder")
    if not folder.is_dir():
        raise FbmlError(f"{folder}: is a file, not a photo folder")
    if not any(path.is_file() for path in folder.iterdir()):
        raise FbmlError(f"{folder}: the photo folder has no files")


def load_photos(
    manifest: DataFrame[ImageManifest],
    image_dir: Path | PhotoFolder,
    *,
    size: int,
    workers: int | None = None,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> Photos:
    """Decode each manifest row's photo ``image_dir/<image_id>.*`` to a ``size`` px letterboxed RGB square.

    A symbolic link is followed only to a file inside ``image_dir``; a row whose photo is a link out
    of it, or to nothing, is rejected with that reason. ``image_dir`` may be a ``PhotoFolder`` listed
    already (for a caller that loads the photos of one folder manifest by manifest)."""
    manifest = validated(manifest, contracts.ImageManifest)
    return decoded_photos(manifest, image_dir, size=size, workers=workers, progress=progress, max_pixels=max_pixels)


def decoded_photos(
    manifest: DataFrame[ImageManifest],
    image_dir: Path | PhotoFolder,
    *,
    size: int,
    workers: int | None = None,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> Photos:
    """``load_photos`` of a manifest checked already by its contract (as the streamed cleaning checks it, by its
    rules): not checked again, so pandera is not imported."""
    folder = image_dir if isinstance(image_dir, PhotoFolder) else PhotoFolder.listed(image_dir)
    plan = _plan(manifest, folder)
    pixels = np.empty((len(plan.paths), 3, size, size), dtype=np.uint8)
    loaded = _load_into(pixels, manifest, folder.path, plan, size=size, workers=workers, progress=progress, max_pixels=max_pixels)
    kept = pixels if loaded.rows.size == len(pixels) else pixels[: loaded.rows.size].copy()
    return Photos(_image_ids(manifest, loaded.rows), loaded.rows, kept, loaded.rejected)


def build_image_cache(
    manifest: DataFrame[ImageManifest],
    image_dir: Path,
    cache_dir: Path,
    *,
    size: int,
    workers: int | None = None,
    progress: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> ImageCache:
    """``load_photos`` into ``cache_dir`` (``pixels.npy`` + ``index.json``), or the valid cache already
    there for the same ``size`` and manifest photos (delete the folder to force a rebuild).

    The cache is written into a temporary sibling folder and renamed into place, so ``cache_dir``
    holds a complete cache or none; the temporary siblings a killed build left are deleted first.
    """
    started = time.time()
    manifest = validated(manifest, contracts.ImageManifest)
    key = _manifest_key(manifest)
    reusable = _reusable(cache_dir, size, key)
    if reusable is not None:
        return reusable
    _check_replaceable(cache_dir)
    remove_stale_builds(cache_dir, older_than=started)
    with atomic_directory(cache_dir) as building:
        _write_cache(building, manifest, image_dir, size=size, key=key, workers=workers, progress=progress, max_pixels=max_pixels)
    return ImageCache.open(cache_dir)


def remove_stale_builds(cache_dir: Path, *, older_than: float) -> list[Path]:
    """Delete the temporary siblings of ``cache_dir`` that a killed build left (``atomic_directory``'s
    ``.<name>.<random>.tmp`` and ``.old`` folders, last changed before ``older_than``); the paths deleted.

    A build of the same cache running at this moment in another process would lose its folder: two
    builds of one cache at once are not supported."""
    if not cache_dir.parent.is_dir():
        return []
    removed = []
    for path in sorted(cache_dir.parent.iterdir()):
        if temporary_target(path.name) != cache_dir.name:
            continue
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_mtime < older_than:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def rejected_rows(manifest: pl.DataFrame, reasons: Mapping[int, str], *, source: str) -> DataFrame[Rejected]:
    """``Rejected`` rows (stage ``"images"``) for manifest rows, given as 0-based row -> reason."""
    rows = sorted(reasons)
    raw = manifest[rows].select(pl.struct(pl.all()).struct.json_encode().alias("raw"))
    frame = pl.DataFrame(
        {
            "source": [source] * len(rows),
            "source_row": [row + 1 for row in rows],
            "stage": ["images"] * len(rows),
            "reason": [reasons[row] for row in rows],
            "raw": raw["raw"],
        },
        schema=REJECTED_SCHEMA,
    )
    return rejected_checked(frame)


def _plan(manifest: DataFrame[ImageManifest], folder: PhotoFolder) -> _Plan:
    """Match each row's ``image_id`` to a file of ``folder``; a row without one is refused with why (a link's
    problem, or a missing file)."""
    found = [folder.files.get(image_id) for image_id in manifest["image_id"]]
    rows = np.array([row for row, path in enumerate(found) if path is not None], dtype=np.int64)
    refused = {
        row: folder.links.get(image_id, MISSING)
        for row, (image_id, path) in enumerate(zip(manifest["image_id"], found, strict=True))
        if path is None
    }
    return _Plan(rows, tuple(path for path in found if path is not None), refused)


def _load_into(
    pixels: np.ndarray,
    manifest: pl.DataFrame,
    image_dir: Path,
    plan: _Plan,
    *,
    size: int,
    workers: int | None,
    progress: bool,
    max_pixels: int,
) -> _Loaded:
    """Decode ``plan``'s files into ``pixels`` (one row each), then close the gaps failures left."""
    decode = partial(_decode_into, pixels, size, max_pixels)
    bar = tqdm(total=manifest.height, initial=len(plan.refused), desc="decoding photos", unit="img", file=sys.stderr, disable=not progress)
    with bar, ThreadPoolExecutor(max_workers=_worker_count(workers, len(plan.paths))) as pool:
        failures = []
        for failure in pool.map(decode, enumerate(plan.paths)):
            failures.append(failure)
            bar.update()
    ok = np.array([failure is None for failure in failures], dtype=bool)
    _compact(pixels, ok)
    reasons = plan.refused | {
        int(row): f"{UNREADABLE}: {failure}" for row, failure in zip(plan.rows, failures, strict=True) if failure is not None
    }
    return _Loaded(plan.rows[ok], rejected_rows(manifest, reasons, source=str(image_dir)))


def _decode_into(pixels: np.ndarray, size: int, max_pixels: int, slot: tuple[int, Path]) -> str | None:
    """Decode one file into ``pixels[index]``; the reason it cannot be read, or None."""
    index, path = slot
    try:
        with open_image(path, size=size, max_pixels=max_pixels) as image:
            pixels[index] = np.asarray(clean_image(image, size)).transpose(2, 0, 1)
    except Exception as error:  # one bad file must never stop the run
        return _failure(error)
    return None


def _failure(error: Exception) -> str:
    """Why a photo could not be decoded, in a few words."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image"
    return str(error) or type(error).__name__


def _worker_count(workers: int | None, jobs: int) -> int:
    """Threads to use: ``workers`` (default: all cores), never more than there are jobs."""
    if workers is not None and workers < 1:
        raise FbmlError(f"workers must be at least 1, got {workers}")
    return max(1, min(workers or os.cpu_count() or 1, jobs))


def _compact(pixels: np.ndarray, ok: np.ndarray) -> None:
    """Move the decoded rows (``ok``) down over the failed ones, in place, keeping their order."""
    for target, source in enumerate(np.flatnonzero(ok)):
        if target != source:
            pixels[target] = pixels[source]


def _image_ids(manifest: pl.DataFrame, rows: np.ndarray) -> tuple[str, ...]:
    return tuple(manifest["image_id"].gather(rows).to_list())


def _manifest_key(manifest: DataFrame[ImageManifest]) -> str:
    """A digest of the manifest's photo ids in order (unique, printable: its contract says so)."""
    return hashlib.sha256("\n".join(manifest["image_id"].to_list()).encode()).hexdigest()


def _reusable(cache_dir: Path, size: int, key: str) -> ImageCache | None:
    """The valid cache in ``cache_dir`` built for ``size`` and the same photos, if there is one."""
    if not (cache_dir / INDEX_FILE).is_file():
        return None
    try:
        cache = ImageCache.open(cache_dir)
    except FbmlError:
        return None
    return cache if cache.size == size and cache.manifest_key == key else None


def _check_replaceable(cache_dir: Path) -> None:
    """Refuse to replace anything but nothing, an empty folder or an image cache's files."""
    if not cache_dir.exists():
        return
    if not cache_dir.is_dir() or {path.name for path in cache_dir.iterdir()} - {PIXELS_FILE, INDEX_FILE}:
        raise InputError(cache_dir, "exists and is not an image cache; refusing to replace it")


def _write_cache(
    directory: Path,
    manifest: DataFrame[ImageManifest],
    image_dir: Path,
    *,
    size: int,
    key: str,
    workers: int | None,
    progress: bool,
    max_pixels: int,
) -> None:
    """Decode the photos straight into ``directory/pixels.npy``, then write ``index.json``."""
    plan = _plan(manifest, PhotoFolder.listed(image_dir))
    path = directory / PIXELS_FILE
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(plan.paths), 3, size, size), version=_NPY_VERSION)
    loaded = _load_into(pixels, manifest, image_dir, plan, size=size, workers=workers, progress=progress, max_pixels=max_pixels)
    pixels.flush()
    del pixels
    if loaded.rows.size < len(plan.paths):
        _truncate_npy(path, loaded.rows.size)
    index = {
        "format": CACHE_FORMAT,
        "size": size,
        "manifest": key,
        "image_ids": list(_image_ids(manifest, loaded.rows)),
        "rejected": loaded.rejected.to_dicts(),
    }
    (directory / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")


def _truncate_npy(path: Path, rows: int) -> None:
    """Cut a version 1.0 ``.npy`` file to its first ``rows`` rows in place: numpy pads the header so
    that the first axis can change without moving the data."""
    with path.open("r+b") as file:
        np.lib.format.read_magic(file)
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
        data_offset = file.tell()
        file.seek(0)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran_order, "shape": (rows, *shape[1:])}
        np.lib.format.write_array_header_1_0(file, header)
        if file.tell() != data_offset:
            raise FbmlError(f"{path}: the new .npy header does not fit the old one")
        file.truncate(data_offset + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def _read_index(directory: Path) -> dict[str, Any]:
    """``index.json``, checked: its format, size, manifest key, unique ids and ``Rejected`` rows."""
    try:
        index = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8"))
    except OSError as error:
        raise _invalid(directory, f"cannot read {INDEX_FILE}: {error.strerror}") from None
    except ValueError as error:
        raise _invalid(directory, f"{INDEX_FILE} is not JSON: {error}") from None
    problem = _index_problem(index)
    if problem:
        raise _invalid(directory, f"{INDEX_FILE}: {problem}")
    try:
        rejected = rejected_checked(pl.DataFrame(index["rejected"], schema=REJECTED_SCHEMA))
    except (ContractError, TypeError, ValueError, pl.exceptions.PolarsError) as error:  # any malformed row
        raise _invalid(directory, f"{INDEX_FILE}: bad rejected rows: {str(error).splitlines()[0]}") from None
    return cast(dict[str, Any], index) | {"rejected": rejected}


def _index_problem(index: object) -> str | None:
    """What is wrong with a parsed ``index.json``, or None."""
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        return f"not a {CACHE_FORMAT!r} index"
    size, ids = index.get("size"), index.get("image_ids")
    if type(size) is not int or size < 1:
        return f"size must be a positive integer, got {size!r}"
    if not isinstance(index.get("manifest"), str) or not isinstance(index.get("rejected"), list):
        return "manifest must be a string and rejected a list"
    if not isinstance(ids, list) or not all(isinstance(image_id, str) for image_id in ids):
        return "image_ids must be a list of strings"
    if len(set(ids)) != len(ids):
        return "image_ids are not unique"
    return None


def _invalid(directory: Path, problem: str) -> InputError:
    return InputError(directory, f"not a valid image cache: {problem}")
