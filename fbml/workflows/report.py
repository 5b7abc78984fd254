"""An evaluation as one self-contained HTML page: per model its scores, charts and worst mistakes.

``write_report`` writes ``index.html`` and its pictures into one folder. The charts are drawn with PIL:
it is a dependency already, keeps no process-wide state (no backend, no rcParams, no font cache on
disk) and draws a chart in milliseconds. The page needs nothing from the network: inline CSS, and
pictures referenced by file name, so the folder can be zipped, mailed or served as it is.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import attrs
import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image, ImageDraw, ImageFont

from fbml.errors import FbmlError
from fbml.modeling.metrics import confusion_matrix, macro_f1
from fbml.vision.cleaning import clean_image, open_image

INDEX = "index.html"
MARKER = ".fbml-report.json"
BINS = 15
THUMBNAIL = 160
MAX_PHOTO_PIXELS = 89_478_485
PLACEHOLDER = "no-photo.png"
_SUM_TOLERANCE = 1e-3
_NAME_LIMIT = 32

_Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont
_Colour: TypeAlias = tuple[int, int, int]
_INK: _Colour = (31, 41, 55)
_MUTED: _Colour = (140, 146, 156)
_GRID: _Colour = (226, 229, 234)
_BAR: _Colour = (96, 150, 230)
_BAR_EDGE: _Colour = (37, 99, 235)
_RED: _Colour = (220, 38, 38)
_DARK: _Colour = (23, 60, 150)


def _label_copy(value: ArrayLike) -> NDArray[Any]:
    """A read-only copy of ``value`` as an array; integer (or empty) arrays become int64."""
    try:
        array = np.array(value)
    except (TypeError, ValueError) as error:
        raise FbmlError(f"labels are not an array: {error}") from error
    if array.dtype.kind in "iu" or array.size == 0:
        array = array.astype(np.int64)
    array.setflags(write=False)
    return array


def _float_copy(value: ArrayLike) -> NDArray[np.float64]:
    """A read-only float64 copy of ``value``."""
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise FbmlError(f"probabilities are not numbers: {error}") from error
    array.setflags(write=False)
    return array


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    """``values`` as a tuple of strings (a lone string is refused, not split into characters)."""
    if isinstance(values, str):
        raise FbmlError(f"expected a sequence of strings, got the string {values!r}")
    return tuple(values)


def _photo_paths(values: Iterable[Path | str | None]) -> tuple[Path | None, ...]:
    """``values`` as paths, ``None`` kept for a product without a photo."""
    return tuple(None if value is None else Path(value) for value in values)


def _array_eq(left: NDArray[Any], right: NDArray[Any]) -> bool:
    return bool(np.array_equal(left, right))


@attrs.frozen
class ModelResults:
    """One model's predictions per product: true label, class probabilities, and the title and photo shown."""

    name: str
    class_names: tuple[str, ...] = attrs.field(converter=_strings)
    product_ids: tuple[str, ...] = attrs.field(converter=_strings)
    labels: NDArray[np.int64] = attrs.field(converter=_label_copy, eq=attrs.cmp_using(eq=_array_eq), hash=False)
    probabilities: NDArray[np.float64] = attrs.field(converter=_float_copy, eq=attrs.cmp_using(eq=_array_eq), hash=False)
    titles: tuple[str, ...] = attrs.field(converter=_strings)
    photos: tuple[Path | None, ...] = attrs.field(converter=_photo_paths)

    def __attrs_post_init__(self) -> None:
        _check_results(self)

    @property
    def size(self) -> int:
        """Number of products."""
        return len(self.product_ids)


def _check_results(results: ModelResults) -> None:
    """Refuse inconsistent results with one line naming the model and the problem."""
    where = f"model results {results.name!r}"
    if not isinstance(results.name, str) or not results.name.strip():
        raise FbmlError(f"{where}: the model needs a name")
    classes = len(results.class_names)
    if classes == 0 or len(set(results.class_names)) != classes:
        raise FbmlError(f"{where}: class names must be present and distinct")
    if results.labels.ndim != 1 or (results.labels.size and results.labels.dtype != np.int64):
        raise FbmlError(f"{where}: labels must be one integer per product, got {results.labels.dtype} {results.labels.shape}")
    count = len(results.labels)
    if results.probabilities.shape != (count, classes):
        raise FbmlError(f"{where}: probabilities must be (products, classes) = ({count}, {classes}), got {results.probabilities.shape}")
    lengths = {"product_ids": len(results.product_ids), "titles": len(results.titles), "photos": len(results.photos)}
    wrong = {field: length for field, length in lengths.items() if length != count}
    if wrong:
        raise FbmlError(f"{where}: {count} labels but " + ", ".join(f"{length} {field}" for field, length in wrong.items()))
    _check_labels(results.labels, classes, where)
    _check_probabilities(results.probabilities, where)


def _check_labels(labels: NDArray[np.int64], classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise FbmlError(f"{where}: labels must lie in 0..{classes - 1}")


def _check_probabilities(probabilities: NDArray[np.float64], where: str) -> None:
    if not probabilities.size:
        return
    if not np.isfinite(probabilities).all() or probabilities.min() < 0:
        raise FbmlError(f"{where}: probabilities must be finite and non-negative")
    if np.abs(probabilities.sum(axis=1) - 1).max() > _SUM_TOLERANCE:
        raise FbmlError(f"{where}: each row of probabilities must sum to 1")


@attrs.frozen
class ClassScores:
    """Per class: precision, recall and F1 (0 where undefined), true count (support) and predicted count."""

    precision: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    recall: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    f1: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    support: NDArray[np.int64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    predicted: NDArray[np.int64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)


@attrs.frozen
class CalibrationBins:
    """Top-class confidence in equal-width bins: bin m holds confidences in (edges[m], edges[m + 1]]
    (the first also 0); per bin the product count, accuracy and mean confidence (0 for an empty bin)."""

    edges: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    counts: NDArray[np.int64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    accuracy: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)
    confidence: NDArray[np.float64] = attrs.field(eq=attrs.cmp_using(eq=_array_eq), hash=False)


def per_class_scores(labels: ArrayLike, predicted: ArrayLike, num_classes: int) -> ClassScores:
    """Precision, recall, F1 and support for each of ``num_classes`` classes, 0 where a ratio is undefined."""
    truth, guess = _class_array(labels, num_classes, "labels"), _class_array(predicted, num_classes, "predicted")
    if truth.shape != guess.shape:
        raise FbmlError(f"{len(truth)} labels but {len(guess)} predictions")
    matrix = confusion_matrix(truth, guess, num_classes)
    hits = np.diag(matrix).astype(np.float64)
    support, predicted_count = matrix.sum(axis=1), matrix.sum(axis=0)
    return ClassScores(
        precision=_ratio(hits, predicted_count),
        recall=_ratio(hits, support),
        f1=_ratio(2 * hits, support + predicted_count),
        support=support,
        predicted=predicted_count,
    )


def _class_array(values: ArrayLike, num_classes: int, what: str) -> NDArray[np.int64]:
    """``values`` as a 1-D int64 array of class indices in 0..num_classes-1."""
    if num_classes < 1:
        raise FbmlError(f"num_classes must be at least 1, got {num_classes}")
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise FbmlError(f"{what} must be a 1-D array of class indices")
    classes = array.astype(np.int64)
    _check_labels(classes, num_classes, what)
    return classes


def _ratio(numerator: NDArray[Any], denominator: NDArray[Any]) -> NDArray[np.float64]:
    """``numerator / denominator`` elementwise, 0 where the denominator is 0 (no warning)."""
    top, bottom = numerator.astype(np.float64), denominator.astype(np.float64)
    return np.divide(top, bottom, out=np.zeros_like(top), where=bottom > 0)


def calibration_bins(labels: ArrayLike, probabilities: ArrayLike, bins: int = BINS) -> CalibrationBins:
    """Top-class confidence against accuracy in ``bins`` equal-width bins over [0, 1]."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if bins < 1:
        raise FbmlError(f"bins must be at least 1, got {bins}")
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise FbmlError(f"probabilities must be (examples, classes), got {probs.shape}")
    truth = _class_array(labels, probs.shape[1], "labels")
    if len(truth) != len(probs):
        raise FbmlError(f"{len(truth)} labels but {len(probs)} rows of probabilities")
    edges = np.linspace(0.0, 1.0, bins + 1)
    confidence = probs.max(axis=1, initial=0.0)
    correct = (probs.argmax(axis=1) == truth).astype(np.float64) if len(truth) else np.zeros(0)
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(which, minlength=bins).astype(np.int64)
    return CalibrationBins(
        edges=edges,
        counts=counts,
        accuracy=_ratio(np.bincount(which, weights=correct, minlength=bins), counts),
        confidence=_ratio(np.bincount(which, weights=confidence, minlength=bins), counts),
    )


def expected_calibration_error(labels: ArrayLike, probabilities: ArrayLike, bins: int = BINS) -> float:
    """ECE: the count-weighted mean |accuracy - mean confidence| over equal-width bins of top-class confidence."""
    return _ece(calibration_bins(labels, probabilities, bins))


def _ece(binned: CalibrationBins) -> float:
    total = int(binned.counts.sum())
    gaps = binned.counts * np.abs(binned.accuracy - binned.confidence)
    return float(gaps.sum() / total) if total else 0.0


def worst_mistakes(labels: ArrayLike, probabilities: ArrayLike, count: int) -> NDArray[np.int64]:
    """Rows of the ``count`` wrong predictions made with the highest probability, most confident first."""
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(labels, dtype=np.int64)
    if not len(truth) or count < 1:
        return np.zeros(0, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != truth)
    order = np.argsort(-probs[wrong, predicted[wrong]], kind="stable")
    return wrong[order[:count]].astype(np.int64)


@attrs.frozen
class _Analysis:
    """The figures of one model's results that the page shows."""

    results: ModelResults
    stem: str
    predicted: NDArray[np.int64] = attrs.field(eq=False)
    matrix: NDArray[np.int64] = attrs.field(eq=False)
    scores: ClassScores
    accuracy: float
    macro_f1: float
    bins: CalibrationBins
    ece: float
    mistakes: NDArray[np.int64] = attrs.field(eq=False)


@attrs.frozen
class _Picture:
    """A picture to save as ``name`` in the report folder."""

    name: str
    image: Image.Image = attrs.field(eq=False)


@attrs.frozen
class _Thumb:
    """What the page shows for a product's photo: a picture file and, for a placeholder, why."""

    file: str
    problem: str | None = None


def _analyse(results: ModelResults, stem: str, mistakes: int) -> _Analysis:
    """Everything the page shows about ``results``, its files named from ``stem``."""
    classes = len(results.class_names)
    predicted = results.probabilities.argmax(axis=1).astype(np.int64) if results.size else np.zeros(0, np.int64)
    matrix = confusion_matrix(results.labels, predicted, classes)
    binned = calibration_bins(results.labels, results.probabilities, BINS)
    return _Analysis(
        results=results,
        stem=stem,
        predicted=predicted,
        matrix=matrix,
        scores=per_class_scores(results.labels, predicted, classes),
        accuracy=float((predicted == results.labels).mean()) if results.size else 0.0,
        macro_f1=macro_f1(matrix),
        bins=binned,
        ece=_ece(binned),
        mistakes=worst_mistakes(results.labels, results.probabilities, mistakes),
    )


def write_report(
    directory: Path,
    results: Sequence[ModelResults],
    *,
    title: str,
    notes: Mapping[str, str] | None = None,
    mistakes: int = 12,
) -> Path:
    """Write ``directory/index.html`` with its pictures for every model in ``results``; return the page's path.

    ``directory`` is created; an existing one must be empty or an earlier report (whose files are replaced).
    """
    directory = Path(directory)
    if not results:
        raise FbmlError("a report needs the results of at least one model")
    if mistakes < 0:
        raise FbmlError(f"mistakes must be 0 or more, got {mistakes}")
    names = [result.name for result in results]
    if len(set(names)) != len(names):
        raise FbmlError(f"model names must be distinct, got {names}")
    previous = report_files(directory)
    analyses = [_analyse(result, _stem(index, result.name), mistakes) for index, result in enumerate(results)]
    thumbs, thumb_pictures = _thumbnails(_mistake_photos(analyses))
    pictures = [*thumb_pictures, *(picture for analysis in analyses for picture in _charts(analysis))]
    page = _page(title, notes or {}, analyses, thumbs)
    return _write(directory, previous, pictures, page)


def _stem(index: int, name: str) -> str:
    """A file-name-safe prefix for a model's files, unique by its position."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
    return f"{index + 1}-{slug or 'model'}"


def report_files(directory: Path) -> tuple[str, ...]:
    """The files an earlier report wrote in ``directory``; refuse a file or a non-empty folder of something else."""
    if not directory.exists():
        return ()
    if not directory.is_dir():
        raise FbmlError(f"{directory}: exists and is not a folder; choose a new folder for the report")
    marker = directory / MARKER
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


def _write(directory: Path, previous: tuple[str, ...], pictures: Sequence[_Picture], page: str) -> Path:
    """Replace an earlier report's files by ``pictures`` and the page; the marker is written before the rest."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [INDEX, *(picture.name for picture in pictures)]
    for name in set(previous) - set(names):
        stale = directory / name
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
    marker = {"written_by": "fbml.workflows.report", "files": names}
    (directory / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    for picture in pictures:
        _save(picture, directory / picture.name)
    index = directory / INDEX
    index.write_text(page, encoding="utf-8")
    return index


def _save(picture: _Picture, path: Path) -> None:
    if path.suffix == ".jpg":
        picture.image.save(path, "JPEG", quality=85)
    else:
        picture.image.save(path, "PNG")


def _mistake_photos(analyses: Sequence[_Analysis]) -> list[Path | None]:
    """The photos of all models' shown mistakes, each once, in page order."""
    photos: dict[Path | None, None] = {}
    for analysis in analyses:
        for row in analysis.mistakes:
            photos[analysis.results.photos[int(row)]] = None
    return list(photos)


def _thumbnails(photos: Sequence[Path | None]) -> tuple[dict[Path | None, _Thumb], list[_Picture]]:
    """A thumbnail file per readable photo, the placeholder (drawn once) for the others."""
    thumbs: dict[Path | None, _Thumb] = {}
    pictures: list[_Picture] = []
    for path in photos:
        image, problem = _thumbnail(path)
        if image is None:
            thumbs[path] = _Thumb(PLACEHOLDER, problem)
        else:
            name = f"photo-{len(pictures) + 1:03d}.jpg"
            pictures.append(_Picture(name, image))
            thumbs[path] = _Thumb(name)
    if any(thumb.file == PLACEHOLDER for thumb in thumbs.values()):
        pictures.append(_Picture(PLACEHOLDER, _placeholder()))
    return thumbs, pictures


def _thumbnail(path: Path | None) -> tuple[Image.Image | None, str | None]:
    """The photo at ``path`` as a ``THUMBNAIL`` px square, or ``None`` and why it cannot be shown."""
    if path is None:
        return None, "no photo"
    try:
        with open_image(path, size=THUMBNAIL, max_pixels=MAX_PHOTO_PIXELS) as image:
            return clean_image(image, THUMBNAIL), None
    except FileNotFoundError:
        return None, "photo missing"
    except Exception:  # one bad photo must never stop the report
        return None, "photo unreadable"


def _placeholder() -> Image.Image:
    """A grey square saying there is no photo to show."""
    picture = Image.new("RGB", (THUMBNAIL, THUMBNAIL), (243, 244, 246))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, THUMBNAIL - 1, THUMBNAIL - 1), outline=_GRID, width=2)
    draw.text((THUMBNAIL // 2, THUMBNAIL // 2), "no photo", fill=_MUTED, font=_font(18), anchor="mm")
    return picture


# ---- charts --------------------------------------------------------------------------------------------------


def _charts(analysis: _Analysis) -> list[_Picture]:
    """The F1 bar chart, confusion matrix and reliability diagram of one model."""
    names = analysis.results.class_names
    return [
        _Picture(f"{analysis.stem}-f1.png", f1_chart(names, analysis.scores, analysis.macro_f1)),
        _Picture(f"{analysis.stem}-confusion.png", confusion_chart(analysis.matrix, names)),
        _Picture(f"{analysis.stem}-reliability.png", reliability_chart(analysis.bins, analysis.ece)),
    ]


def _font(size: int) -> _Font:
    """PIL's built-in scalable font (needs no font file) at ``size`` px."""
    return ImageFont.load_default(size=size)


def _width(font: _Font, text: str) -> int:
    return math.ceil(font.getlength(text))


def _short(name: str, limit: int = _NAME_LIMIT) -> str:
    return name if len(name) <= limit else name[: limit - 3].rstrip() + "..."


def _dashed(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], fill: _Colour, dash: int = 5) -> None:
    """A dashed straight line from ``start`` to ``end``."""
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0)
    for step in range(0, math.ceil(length / dash), 2):
        t0, t1 = step * dash / length, min(1.0, (step + 1) * dash / length)
        draw.line((x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0, x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1), fill=fill, width=1)


def _rotated_text(text: str, font: _Font, angle: float) -> tuple[Image.Image, int]:
    """A mask of ``text`` rotated ``angle`` (0..90) degrees anticlockwise, for pasting ink through, and the
    x of the text's start in it (its lowest point)."""
    right, bottom = font.getbbox(text)[2:]
    layer = Image.new("L", (math.ceil(right) + 4, math.ceil(bottom) + 4), 0)
    ImageDraw.Draw(layer).text((2, 2), text, fill=255, font=font)
    start = round(layer.height * math.sin(math.radians(angle)))
    return layer.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC), start


def f1_chart(class_names: Sequence[str], scores: ClassScores, macro: float) -> Image.Image:
    """Horizontal bars of each class's F1, the macro-F1 as a dashed line; classes without support greyed."""
    font, small = _font(13), _font(11)
    labels = [_short(name) for name in class_names]
    left = max(_width(font, label) for label in labels) + 14
    plot, row, top, value_width = 300, 24, 26, 112
    height = top + row * len(labels) + 26
    picture = Image.new("RGB", (left + plot + value_width, height), "white")
    draw = ImageDraw.Draw(picture)
    bottom = top + row * len(labels)

    def x(value: float) -> float:
        return left + value * plot

    for tick in np.linspace(0, 1, 6):
        draw.line((x(tick), top, x(tick), bottom), fill=_GRID)
        draw.text((x(tick), bottom + 5), f"{tick:.1f}", fill=_MUTED, font=small, anchor="mt")
    _dashed(draw, (x(macro), top - 4), (x(macro), bottom), _RED)
    for index, label in enumerate(labels):
        middle = top + index * row + row / 2
        empty = scores.support[index] == 0
        draw.text((left - 8, middle), label, fill=_MUTED if empty else _INK, font=font, anchor="rm")
        value = float(scores.f1[index])
        if value > 0:
            draw.rectangle((x(0), middle - 7, x(value), middle + 7), fill=_BAR, outline=_BAR_EDGE)
        note = f"{value:.2f}" + ("  no support" if empty else "")
        draw.rectangle(draw.textbbox((x(value) + 6, middle), note, font=small, anchor="lm"), fill="white")
        draw.text((x(value) + 6, middle), note, fill=_MUTED if empty else _INK, font=small, anchor="lm")
    draw.line((x(0), top, x(0), bottom), fill=_INK)
    draw.text((x(macro), top - 6), f"macro-F1 = {macro:.2f}", fill=_RED, font=small, anchor="mb")
    return picture


def confusion_chart(matrix: NDArray[np.int64], class_names: Sequence[str]) -> Image.Image:
    """The confusion matrix (rows: truth, columns: predicted), shaded by share of the row, counts in the cells."""
    font, small = _font(12), _font(11)
    labels = [_short(name) for name in class_names]
    classes = len(labels)
    cell = max(34, _width(small, str(int(matrix.max(initial=0)))) + 10)
    left = max(_width(font, label) for label in labels) + 14
    columns = [_rotated_text(label, font, 45) for label in labels]
    top = max(mask.height for mask, _ in columns) + 8
    side = left + classes * cell
    starts = [left + index * cell + cell // 2 - start for index, (_, start) in enumerate(columns)]
    reach = max(x + mask.width for x, (mask, _) in zip(starts, columns, strict=True))
    picture = Image.new("RGB", (max(side + 70, reach + 8), top + classes * cell + 12), "white")
    draw = ImageDraw.Draw(picture)
    for x, (mask, _) in zip(starts, columns, strict=True):
        picture.paste(_INK, (x, top - 4 - mask.height), mask=mask)
    totals = matrix.sum(axis=1)
    for row in range(classes):
        y = top + row * cell
        draw.text((left - 8, y + cell / 2), labels[row], fill=_INK if totals[row] else _MUTED, font=font, anchor="rm")
        draw.text((side + 8, y + cell / 2), f"{int(totals[row])}", fill=_MUTED, font=small, anchor="lm")
        for column in range(classes):
            _cell(draw, (left + column * cell, y, cell), int(matrix[row, column]), int(totals[row]), small)
    draw.rectangle((left, top, side, top + classes * cell), outline=_INK)
    draw.text((side + 8, top - 6), "true n", fill=_MUTED, font=small, anchor="lb")
    draw.text((left - 8, top - 6), "truth \\ predicted", fill=_MUTED, font=small, anchor="rb")
    return picture


def _cell(draw: ImageDraw.ImageDraw, box: tuple[int, int, int], count: int, total: int, font: _Font) -> None:
    """One matrix cell at (x, y, side): white to dark blue by ``count / total``, the count written if any."""
    x, y, side = box
    share = count / total if total else 0.0
    colour = tuple(round(255 + (dark - 255) * share) for dark in _DARK)
    draw.rectangle((x, y, x + side, y + side), fill=colour, outline=_GRID)
    if count:
        ink = "white" if share > 0.45 else _INK
        draw.text((x + side / 2, y + side / 2), str(count), fill=ink, font=font, anchor="mm")


def reliability_chart(binned: CalibrationBins, ece: float) -> Image.Image:
    """Accuracy against top-class confidence per bin, the diagonal of perfect calibration, and the bin counts."""
    font, small, tiny = _font(12), _font(11), _font(10)
    plot, left, top = 360, 58, 50
    counts_top, counts_height = top + plot + 48, 56
    picture = Image.new("RGB", (left + plot + 18, counts_top + counts_height + 22), "white")
    draw = ImageDraw.Draw(picture)

    def x(value: float) -> float:
        return left + value * plot

    def y(value: float) -> float:
        return top + (1 - value) * plot

    for tick in np.linspace(0, 1, 6):
        draw.line((x(tick), top, x(tick), top + plot), fill=_GRID)
        draw.line((left, y(tick), left + plot, y(tick)), fill=_GRID)
        draw.text((x(tick), top + plot + 5), f"{tick:.1f}", fill=_MUTED, font=small, anchor="mt")
        draw.text((left - 6, y(tick)), f"{tick:.1f}", fill=_MUTED, font=small, anchor="rm")
    edges = binned.edges
    for index in np.flatnonzero(binned.counts):
        x0, x1 = x(edges[index]) + 1, x(edges[index + 1]) - 1
        draw.rectangle((x0, y(binned.accuracy[index]), x1, y(0)), fill=_BAR, outline=_BAR_EDGE)
        draw.line((x0, y(binned.confidence[index]), x1, y(binned.confidence[index])), fill=_RED, width=3)
    _dashed(draw, (x(0), y(0)), (x(1), y(1)), _INK)
    draw.rectangle((left, top, left + plot, top + plot), outline=_INK)
    draw.text((x(0.5), top + plot + 22), "confidence of the top class", fill=_INK, font=font, anchor="mt")
    axis_label = _rotated_text("accuracy", font, 90)[0]
    picture.paste(_INK, (4, round(y(0.5)) - axis_label.height // 2), mask=axis_label)
    draw.text((left, 6), f"ECE {ece:.3f} over {len(binned.counts)} bins", fill=_INK, font=font, anchor="lt")
    _legend(draw, (left, top - 14), small)
    _count_strip(draw, binned, (left, counts_top, plot, counts_height), tiny)
    draw.text((4, counts_top + counts_height // 2), "count", fill=_MUTED, font=small, anchor="lm")
    return picture


def _legend(draw: ImageDraw.ImageDraw, start: tuple[int, int], font: _Font) -> None:
    """The reliability diagram's key in one line from ``start`` (left, middle): bar, mean-confidence mark, diagonal."""
    x, y = start
    draw.rectangle((x, y - 4, x + 14, y + 4), fill=_BAR, outline=_BAR_EDGE)
    draw.text((x + 20, y), "accuracy in bin", fill=_INK, font=font, anchor="lm")
    x += 30 + _width(font, "accuracy in bin")
    draw.line((x, y, x + 14, y), fill=_RED, width=3)
    draw.text((x + 20, y), "mean confidence", fill=_INK, font=font, anchor="lm")
    x += 30 + _width(font, "mean confidence")
    _dashed(draw, (x, y), (x + 14, y), _INK, dash=3)
    draw.text((x + 20, y), "perfect calibration", fill=_INK, font=font, anchor="lm")


def _count_strip(draw: ImageDraw.ImageDraw, binned: CalibrationBins, box: tuple[int, int, int, int], font: _Font) -> None:
    """Products per bin as small grey bars under the diagram, each with its count."""
    left, top, width, height = box
    most = max(int(binned.counts.max(initial=0)), 1)
    bar_room = height - 14
    for index, count in enumerate(binned.counts):
        x0 = left + binned.edges[index] * width + 1
        x1 = left + binned.edges[index + 1] * width - 1
        bar_top = top + height - bar_room * count / most
        if count:
            draw.rectangle((x0, bar_top, x1, top + height), fill=(203, 213, 225))
            draw.text(((x0 + x1) / 2, bar_top - 2), str(int(count)), fill=_INK, font=font, anchor="mb")
    draw.line((left, top + height, left + width, top + height), fill=_INK)


# ---- the page ------------------------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2937; background: #f8fafc; margin: 0; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.4em; }
h2 { font-size: 1.3em; margin: 2.2em 0 0.3em; padding-top: 0.6em; border-top: 2px solid #e5e7eb; }
h3 { font-size: 1.05em; margin: 1.6em 0 0.5em; color: #374151; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.4em 0 1em; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e5e7eb; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.empty td { color: #9ca3af; }
table.notes th { background: none; color: #6b7280; font-weight: 500; }
table.notes td { overflow-wrap: anywhere; }
.summary { font-size: 1.05em; margin: 0.3em 0 1em; }
.summary b { font-variant-numeric: tabular-nums; }
.muted { color: #6b7280; font-size: 0.85em; }
figure { margin: 0.4em 0 1em; }
figcaption { color: #6b7280; font-size: 0.85em; margin-top: 4px; max-width: 520px; }
img { max-width: 100%; height: auto; }
table.mistakes td { vertical-align: middle; }
table.mistakes img { width: 96px; height: 96px; display: block; border-radius: 3px; }
table.mistakes .title { max-width: 330px; overflow-wrap: anywhere; }
.wrong { color: #b91c1c; }
"""


def _e(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def _page(title: str, notes: Mapping[str, str], analyses: Sequence[_Analysis], thumbs: Mapping[Path | None, _Thumb]) -> str:
    """The whole HTML document."""
    body = "\n".join(
        [
            f"<h1>{_e(title)}</h1>",
            _notes_table(notes),
            _overview(analyses),
            *(_section(analysis, thumbs) for analysis in analyses),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _notes_table(notes: Mapping[str, str]) -> str:
    if not notes:
        return ""
    rows = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in notes.items())
    return f'<table class="notes"><tbody>{rows}</tbody></table>'


def _overview(analyses: Sequence[_Analysis]) -> str:
    """One row per model: products, accuracy, macro-F1, ECE."""
    rows = "".join(
        f'<tr><td><a href="#{_e(a.stem)}">{_e(a.results.name)}</a></td><td class="num">{a.results.size:,}</td>'
        f'<td class="num">{a.accuracy:.3f}</td><td class="num">{a.macro_f1:.3f}</td><td class="num">{a.ece:.3f}</td></tr>'
        for a in analyses
    )
    head = '<tr><th>model</th><th class="num">products</th><th class="num">accuracy</th><th class="num">macro-F1</th><th class="num">ECE</th></tr>'
    return f'<table class="overview"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _section(analysis: _Analysis, thumbs: Mapping[Path | None, _Thumb]) -> str:
    """One model's part of the page."""
    results, stem = analysis.results, analysis.stem
    return "\n".join(
        [
            f'<section class="model" id="{_e(stem)}" data-model="{_e(results.name)}">',
            f"<h2>{_e(results.name)}</h2>",
            _summary(analysis),
            "<h3>Per class</h3>",
            _class_table(analysis),
            _figure(f"{stem}-f1.png", f"F1 per class for {results.name}", "F1 per class; the dashed line is the macro-F1."),
            "<h3>Confusion matrix</h3>",
            _figure(
                f"{stem}-confusion.png",
                f"confusion matrix for {results.name}",
                "Confusion matrix: rows are the true class, columns the predicted one; "
                "shading is the share of the row, the number the count of products.",
            ),
            "<h3>Calibration</h3>",
            _figure(
                f"{stem}-reliability.png",
                f"reliability diagram for {results.name}",
                f"Reliability: products binned by the probability of their top class ({BINS} equal bins); "
                "a bar below its red mark means over-confidence. Counts per bin underneath.",
            ),
            _mistakes_table(analysis, thumbs),
            "</section>",
        ]
    )


def _summary(analysis: _Analysis) -> str:
    return (
        f'<p class="summary"><b>{analysis.results.size:,}</b> products &middot; accuracy <b>{analysis.accuracy:.3f}</b> '
        f"&middot; macro-F1 <b>{analysis.macro_f1:.3f}</b> &middot; ECE <b>{analysis.ece:.3f}</b></p>"
        '<p class="muted">Macro-F1 is the mean F1 over the classes present in truth or prediction; '
        f"ECE the expected calibration error of the top-class probability over {BINS} equal-width bins.</p>"
    )


def _class_table(analysis: _Analysis) -> str:
    """A row for every class, also one without support or predictions."""
    scores, rows = analysis.scores, []
    for index, name in enumerate(analysis.results.class_names):
        empty = ' class="empty"' if scores.support[index] == 0 else ""
        rows.append(
            f"<tr{empty}><td>{_e(name)}</td><td class=\"num\">{int(scores.support[index])}</td>"
            f'<td class="num">{int(scores.predicted[index])}</td><td class="num">{scores.precision[index]:.3f}</td>'
            f'<td class="num">{scores.recall[index]:.3f}</td><td class="num">{scores.f1[index]:.3f}</td></tr>'
        )
    head = (
        '<tr><th>class</th><th class="num">support</th><th class="num">predicted</th>'
        '<th class="num">precision</th><th class="num">recall</th><th class="num">F1</th></tr>'
    )
    return f'<table class="per-class" data-model="{_e(analysis.results.name)}"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _figure(file: str, alt: str, caption: str) -> str:
    return f'<figure><img src="{_e(file)}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _mistakes_table(analysis: _Analysis, thumbs: Mapping[Path | None, _Thumb]) -> str:
    """The most confident wrong predictions, each with photo, title, true class and the two top classes."""
    results = analysis.results
    wrong = int((analysis.predicted != results.labels).sum())
    heading = f"<h3>Most confident mistakes ({len(analysis.mistakes)} of {wrong:,} wrong)</h3>"
    if not len(analysis.mistakes):
        return heading + '<p class="muted">No wrongly classified products.</p>'
    rows = "".join(_mistake_row(results, int(row), thumbs[results.photos[int(row)]]) for row in analysis.mistakes)
    head = "<tr><th>photo</th><th>product</th><th>true class</th><th>top two predicted</th></tr>"
    return f'{heading}<table class="mistakes" data-model="{_e(results.name)}"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _mistake_row(results: ModelResults, row: int, thumb: _Thumb) -> str:
    probabilities, names = results.probabilities[row], results.class_names
    truth = int(results.labels[row])
    top = [int(index) for index in np.argsort(-probabilities, kind="stable")[:2]]
    picks = [f"{_e(names[index])} {probabilities[index]:.3f}" for index in top]
    picks[0] = f'<span class="wrong">{picks[0]}</span>'
    note = f'<div class="muted">{_e(thumb.problem)}</div>' if thumb.problem else ""
    alt = thumb.problem or f"photo of {results.titles[row]}"
    return (
        f'<tr><td><img src="{_e(thumb.file)}" alt="{_e(alt)}" width="96" height="96">{note}</td>'
        f'<td class="title">{_e(results.titles[row])}<div class="muted">{_e(results.product_ids[row])}</div></td>'
        f"<td>{_e(names[truth])} <span class=\"muted\">{probabilities[truth]:.3f}</span></td>"
        f"<td>{'<br>'.join(picks)}</td></tr>"
    )
