"""Photo cleaning: decode safely, fix orientation and mode, letterbox to a black square JPEG.

Decoding never touches process-wide state: the pixel limit is checked here on the image's header,
PIL's own ``Image.MAX_IMAGE_PIXELS`` (the host's to set) and the warnings filters are left alone, so
threads decoding at once cannot race on them.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
from PIL import Image, ImageOps, UnidentifiedImageError

from fbml.errors import FbmlError, InputError
from fbml.vision.jpeg import check_decode_cost

if TYPE_CHECKING:
    from tqdm import tqdm

    from fbml.vision.cleaning_report import ImageCleaningReport

OUTSIDE_LINK = "symbolic link out of the folder"
BROKEN_LINK = "broken symbolic link"
PARTIAL_JPEG = re.compile(r"^\.(?P<name>.+\.jpg)\.(?P<pid>[0-9]+)\.tmp$")
"""The name ``_write_jpeg`` gives a JPEG while it is written: ``.<stem>.jpg.<pid>.tmp``."""
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_WIDE_GREY_FULL_SCALE = 65535.0
_FLOAT_FULL_SCALE = 255.0
STORED_RESAMPLING = Image.Resampling.HAMMING
"""How `clean_images` resizes the photos it stores: Pillow's antialiased one-pixel-support filter. On the sample's
photos that need a resize to 512 px it costs 3.7 ms a photo against bicubic's 6.3 and Lanczos' 8.7, and lies 1.1 grey
levels from Lanczos on average (bicubic 0.6; ``benchmarks/bench_images.py`` checks the difference against the
original loop). A network's input is made with bicubic (`clean_image`'s default), as before."""


@attrs.frozen
class _Job:
    """One source file to clean into `output`."""

    source: Path
    output: Path
    size: int
    max_pixels: int
    quality: int


@attrs.frozen
class _Outcome:
    """The result for one source file: `reason` set when rejected, `output` set when cleaned."""

    file: str
    reason: str | None = None
    output: str | None = None


def clean_image(image: Image.Image, size: int = 512, *, resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """Upright, RGB, longest side `size` (resized with `resample`), centred on a black `size` x `size` square;
    `image` is left as is."""
    _require_positive("size", size)
    return _letterbox(_to_rgb(ImageOps.exif_transpose(image)), size, resample)


def open_image(path: Path | bytes, *, size: int | None, max_pixels: int) -> Image.Image:
    """Decode `path` (a file, or its bytes) fully, refusing images over `max_pixels` by their header before any pixel is
    decoded (and again once loaded, for formats whose frames may grow), and JPEGs whose scans would cost more
    than that (`fbml.vision.jpeg.check_decode_cost`); JPEGs decode straight to about `size` px. PIL's own
    limit (`Image.MAX_IMAGE_PIXELS`, left as the host set it) applies as well."""
    data = path if isinstance(path, bytes) else path.read_bytes()
    check_decode_cost(data, max_pixels)
    image = Image.open(io.BytesIO(data))
    try:
        _refuse_bomb(image, max_pixels)
        if size is not None and image.format == "JPEG":
            image.draft("RGB", _draft_request(image.size, size))
        image.load()
        _refuse_bomb(image, max_pixels)
    except BaseException:
        image.close()
        raise
    return image


def clean_images(
    src: Path,
    dst: Path,
    *,
    size: int = 512,
    workers: int | None = None,
    max_pixels: int = 89_478_485,
    quality: int = 90,
    progress: bool = True,
) -> ImageCleaningReport:
    """Clean every file in `src` into `dst/<stem>.jpg` (`clean_image` with `STORED_RESAMPLING`), or reject it with a
    reason; never stops on a bad file.

    A symbolic link is followed only to a file inside `src`. Partial JPEGs a killed run left in `dst`
    are deleted first."""
    _require_positive("size", size)
    _require_positive("max_pixels", max_pixels)
    if not 1 <= quality <= 100:
        raise FbmlError(f"quality must be between 1 and 100, got {quality}")
    started = time.time()
    sources, links = _list_files(src)
    dst.mkdir(parents=True, exist_ok=True)
    remove_partial_jpegs(dst, older_than=started)
    jobs, duplicates = _plan(sources, dst, size=size, max_pixels=max_pixels, quality=quality)
    refused = [*links, *duplicates]
    with _cleaner(_worker_count(workers, len(jobs))) as clean:
        pending = clean(jobs)
        # The bar's and the report's modules (tqdm, polars, the contract's rules) load here, while the workers clean.
        from tqdm import tqdm

        from fbml.vision.cleaning_report import cleaning_report

        bar = tqdm(total=len(sources) + len(links), initial=len(refused), desc="cleaning images", unit="img", file=sys.stderr, disable=not progress)
        with bar:
            outcomes = [*refused, *_tick(pending, bar)]
    return cleaning_report(
        [outcome.file for outcome in outcomes], [outcome.reason for outcome in outcomes], [outcome.output for outcome in outcomes]
    )


def remove_partial_jpegs(folder: Path, *, older_than: float) -> list[Path]:
    """Delete the partial JPEGs a killed run left in `folder` (our `.<name>.jpg.<pid>.tmp` files, last
    changed before `older_than`, of no running process); the paths deleted."""
    removed = []
    for path in sorted(folder.iterdir()):
        match = PARTIAL_JPEG.match(path.name)
        if match is None or _pid_alive(int(match["pid"])):
            continue
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_mtime < older_than:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    """True when a process `pid` runs (ours included), as far as this user can tell."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _require_positive(name: str, value: int) -> None:
    """Refuse a non-positive size-like parameter."""
    if value < 1:
        raise FbmlError(f"{name} must be at least 1, got {value}")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; transparency becomes black, 16-bit and float greys are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY_MODES:
        return _rescaled_grey(image, _WIDE_GREY_FULL_SCALE).convert("RGB")
    if image.mode == "F":
        return _rescaled_grey(image, _FLOAT_FULL_SCALE).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _on_black(image.convert("RGBA"))
    return image.convert("RGB")


def _rescaled_grey(image: Image.Image, full_scale: float) -> Image.Image:
    """A single-channel image with values 0..`full_scale` as 8-bit grey (out-of-range values clipped)."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64) * (255.0 / full_scale)
    return Image.fromarray(np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8))


def _on_black(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image onto black."""
    canvas = Image.new("RGB", rgba.size)
    canvas.paste(rgba, mask=rgba)
    return canvas


def _fitted_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """`size` scaled so its longest side is `longest`, aspect kept to the pixel, each side at least 1."""
    width, height = size
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _draft_request(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """The box to ask JPEG `draft` for: it may shrink by 2, 4 or 8 while the longest side stays >= `longest`."""
    width, height = size
    return (longest, 1) if width >= height else (1, longest)


def _letterbox(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """`image` scaled to fit (with `resample`) and centred on a fresh black `size` x `size` RGB square."""
    fitted_size = _fitted_size(image.size, size)
    fitted = image if image.size == fitted_size else image.resize(fitted_size, resample)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return canvas


def _refuse_bomb(image: Image.Image, max_pixels: int) -> None:
    """Raise `DecompressionBombError` when the image (by its header, before decoding) has more than `max_pixels` pixels."""
    width, height = image.size
    if width * height > max_pixels:
        raise Image.DecompressionBombError(f"{width} x {height} pixels exceeds max_pixels {max_pixels}")


def _list_files(src: Path) -> tuple[list[Path], list[_Outcome]]:
    """The regular files directly in `src` (links to files inside it included), sorted by name, and a
    rejection for each symbolic link that points out of `src` or nowhere."""
    if not src.is_dir():
        raise InputError(src, "no such directory")
    root = src.resolve()
    files, links = [], []
    for path in sorted(src.iterdir(), key=lambda path: path.name):
        problem = link_problem(path, root)
        if problem is not None:
            links.append(_Outcome(_display_name(path), reason=problem))
        elif path.is_file():
            files.append(path)
    return files, links


def link_problem(path: Path, root: Path) -> str | None:
    """Why the entry `path` of the folder `root` (resolved) is refused as a symbolic link, or None:
    its target is outside `root` (a folder out there is skipped, as folders are), or there is none."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if not target.is_relative_to(root):
        return None if target.is_dir() else OUTSIDE_LINK
    return None if target.exists() else BROKEN_LINK


def _plan(sources: list[Path], dst: Path, *, size: int, max_pixels: int, quality: int) -> tuple[list[_Job], list[_Outcome]]:
    """A job per distinct stem (first in sorted order wins) and a rejection for each later duplicate."""
    jobs: dict[str, _Job] = {}
    duplicates: list[_Outcome] = []
    for source in sources:
        if source.stem in jobs:
            duplicates.append(_Outcome(_display_name(source), reason="duplicate stem"))
        else:
            jobs[source.stem] = _Job(source, dst / f"{source.stem}.jpg", size, max_pixels, quality)
    return list(jobs.values()), duplicates


def _worker_count(workers: int | None, jobs: int) -> int:
    """Processes to use: `workers` (default: all cores), never more than there are jobs."""
    if workers is not None:
        _require_positive("workers", workers)
    return max(1, min(workers or os.cpu_count() or 1, jobs))


@contextlib.contextmanager
def _cleaner(workers: int) -> Iterator[Callable[[list[_Job]], Iterator[_Outcome]]]:
    """A function giving the outcomes of jobs in job order: in this process for one worker, else from a process
    pool that has started on every job by the time the function returns."""
    if workers == 1:
        yield lambda jobs: map(_clean_one, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        yield lambda jobs: pool.map(_clean_one, jobs, chunksize=_chunk_size(len(jobs), workers))


def _pool_context() -> BaseContext:
    """fork on Linux: workers start at once and touch only PIL and numpy; spawn elsewhere (the worker is spawn-safe)."""
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def _chunk_size(jobs: int, workers: int) -> int:
    """Jobs per pool task: few enough round trips, small enough to keep all workers busy to the end."""
    return max(1, min(16, jobs // (workers * 32)))


def _tick(outcomes: Iterable[_Outcome], bar: tqdm) -> Iterator[_Outcome]:
    """Pass outcomes through, advancing `bar` once per outcome."""
    for outcome in outcomes:
        bar.update()
        yield outcome


def _clean_one(job: _Job) -> _Outcome:
    """Clean one file into its output JPEG; any failure becomes a rejection reason."""
    try:
        with open_image(job.source, size=job.size, max_pixels=job.max_pixels) as image:
            cleaned = clean_image(image, job.size, resample=STORED_RESAMPLING)
        _write_jpeg(cleaned, job.output, job.quality)
    except Exception as error:  # one bad file must never stop the run
        return _Outcome(_display_name(job.source), reason=_reason(error))
    return _Outcome(_display_name(job.source), output=_display_name(job.output))


def _display_name(path: Path) -> str:
    """`path`'s name as valid UTF-8 text, bytes that are not UTF-8 shown as \\xNN escapes."""
    return os.fsencode(path.name).decode("utf-8", "backslashreplace")


def _reason(error: Exception) -> str:
    """A stable rejection reason for `error`; its prefix before ':' names the kind."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"decompression bomb: {error}"
    if isinstance(error, OSError) and error.errno is not None:
        return str(error)
    return f"truncated or corrupt image: {str(error) or type(error).__name__}"


def _write_jpeg(image: Image.Image, output: Path, quality: int) -> None:
    """Save `image` as `output` atomically: a temporary file in the same folder, created afresh (never through a
    link someone left under its name), then renamed over `output` (a link there is replaced, not followed)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    partial = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    partial.unlink(missing_ok=True)  # a stale one of a dead process with our pid, or a link planted there
    try:
        handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(handle, "wb") as file:
            file.write(buffer.getvalue())
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
