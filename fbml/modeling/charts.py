"""Classification figures as pictures, drawn with PIL: per-class F1 bars, the confusion matrix and the
reliability diagram. The HTML report and training's TensorBoard log draw them with these functions.

PIL is a dependency already, keeps no process-wide state (no backend, no rcParams, no font cache on disk)
and draws a chart in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from fbml.modeling.metrics import CalibrationBins, ClassScores

Font: TypeAlias = ImageFont.FreeTypeFont | ImageFont.ImageFont
Colour: TypeAlias = tuple[int, int, int]
INK: Colour = (31, 41, 55)
MUTED: Colour = (140, 146, 156)
GRID: Colour = (226, 229, 234)
_BAR: Colour = (96, 150, 230)
_BAR_EDGE: Colour = (37, 99, 235)
_RED: Colour = (220, 38, 38)
_DARK: Colour = (23, 60, 150)
_NAME_LIMIT = 32


def sized_font(size: int) -> Font:
    """PIL's built-in scalable font (needs no font file) at ``size`` px."""
    return ImageFont.load_default(size=size)


def _width(font: Font, text: str) -> int:
    return math.ceil(font.getlength(text))


def _short(name: str, limit: int = _NAME_LIMIT) -> str:
    return name if len(name) <= limit else name[: limit - 3].rstrip() + "..."


def _dashed(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], fill: Colour, dash: int = 5) -> None:
    """A dashed straight line from ``start`` to ``end``."""
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0)
    for step in range(0, math.ceil(length / dash), 2):
        t0, t1 = step * dash / length, min(1.0, (step + 1) * dash / length)
        draw.line((x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0, x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1), fill=fill, width=1)


def _rotated_text(text: str, font: Font, angle: float) -> tuple[Image.Image, int]:
    """A mask of ``text`` rotated ``angle`` (0..90) degrees anticlockwise, for pasting ink through, and the
    x of the text's start in it (its lowest point)."""
    right, bottom = font.getbbox(text)[2:]
    layer = Image.new("L", (math.ceil(right) + 4, math.ceil(bottom) + 4), 0)
    ImageDraw.Draw(layer).text((2, 2), text, fill=255, font=font)
    start = round(layer.height * math.sin(math.radians(angle)))
    return layer.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC), start


def f1_chart(class_names: Sequence[str], scores: ClassScores) -> Image.Image:
    """Horizontal bars of each class's F1, the macro-F1 as a dashed line; classes without support greyed."""
    macro = scores.macro_f1
    font, small = sized_font(13), sized_font(11)
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
        draw.line((x(tick), top, x(tick), bottom), fill=GRID)
        draw.text((x(tick), bottom + 5), f"{tick:.1f}", fill=MUTED, font=small, anchor="mt")
    _dashed(draw, (x(macro), top - 4), (x(macro), bottom), _RED)
    for index, label in enumerate(labels):
        middle = top + index * row + row / 2
        empty = scores.support[index] == 0
        draw.text((left - 8, middle), label, fill=MUTED if empty else INK, font=font, anchor="rm")
        value = float(scores.f1[index])
        if value > 0:
            draw.rectangle((x(0), middle - 7, x(value), middle + 7), fill=_BAR, outline=_BAR_EDGE)
        note = f"{value:.2f}" + ("  no support" if empty else "")
        draw.rectangle(draw.textbbox((x(value) + 6, middle), note, font=small, anchor="lm"), fill="white")
        draw.text((x(value) + 6, middle), note, fill=MUTED if empty else INK, font=small, anchor="lm")
    draw.line((x(0), top, x(0), bottom), fill=INK)
    draw.text((x(macro), top - 6), f"macro-F1 = {macro:.2f}", fill=_RED, font=small, anchor="mb")
    return picture


def confusion_chart(matrix: NDArray[np.int64], class_names: Sequence[str]) -> Image.Image:
    """The confusion matrix (rows: truth, columns: predicted), shaded by share of the row, counts in the cells."""
    font, small = sized_font(12), sized_font(11)
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
        picture.paste(INK, (x, top - 4 - mask.height), mask=mask)
    totals = matrix.sum(axis=1)
    for row in range(classes):
        y = top + row * cell
        draw.text((left - 8, y + cell / 2), labels[row], fill=INK if totals[row] else MUTED, font=font, anchor="rm")
        draw.text((side + 8, y + cell / 2), f"{int(totals[row])}", fill=MUTED, font=small, anchor="lm")
        for column in range(classes):
            _cell(draw, (left + column * cell, y, cell), int(matrix[row, column]), int(totals[row]), small)
    draw.rectangle((left, top, side, top + classes * cell), outline=INK)
    draw.text((side + 8, top - 6), "true n", fill=MUTED, font=small, anchor="lb")
    draw.text((left - 8, top - 6), "truth \\ predicted", fill=MUTED, font=small, anchor="rb")
    return picture


def _cell(draw: ImageDraw.ImageDraw, box: tuple[int, int, int], count: int, total: int, font: Font) -> None:
    """One matrix cell at (x, y, side): white to dark blue by ``count / total``, the count written if any."""
    x, y, side = box
    share = count / total if total else 0.0
    colour = tuple(round(255 + (dark - 255) * share) for dark in _DARK)
    draw.rectangle((x, y, x + side, y + side), fill=colour, outline=GRID)
    if count:
        ink = "white" if share > 0.45 else INK
        draw.text((x + side / 2, y + side / 2), str(count), fill=ink, font=font, anchor="mm")


def reliability_chart(binned: CalibrationBins) -> Image.Image:
    """Accuracy against top-class confidence per bin, the diagonal of perfect calibration, and the bin counts."""
    ece = binned.expected_calibration_error
    font, small, tiny = sized_font(12), sized_font(11), sized_font(10)
    plot, left, top = 360, 58, 50
    counts_top, counts_height = top + plot + 48, 56
    picture = Image.new("RGB", (left + plot + 18, counts_top + counts_height + 22), "white")
    draw = ImageDraw.Draw(picture)

    def x(value: float) -> float:
        return left + value * plot

    def y(value: float) -> float:
        return top + (1 - value) * plot

    for tick in np.linspace(0, 1, 6):
        draw.line((x(tick), top, x(tick), top + plot), fill=GRID)
        draw.line((left, y(tick), left + plot, y(tick)), fill=GRID)
        draw.text((x(tick), top + plot + 5), f"{tick:.1f}", fill=MUTED, font=small, anchor="mt")
        draw.text((left - 6, y(tick)), f"{tick:.1f}", fill=MUTED, font=small, anchor="rm")
    edges = binned.edges
    for index in np.flatnonzero(binned.counts):
        x0, x1 = x(edges[index]) + 1, x(edges[index + 1]) - 1
        draw.rectangle((x0, y(binned.accuracy[index]), x1, y(0)), fill=_BAR, outline=_BAR_EDGE)
        draw.line((x0, y(binned.confidence[index]), x1, y(binned.confidence[index])), fill=_RED, width=3)
    _dashed(draw, (x(0), y(0)), (x(1), y(1)), INK)
    draw.rectangle((left, top, left + plot, top + plot), outline=INK)
    draw.text((x(0.5), top + plot + 22), "confidence of the top class", fill=INK, font=font, anchor="mt")
    axis_label = _rotated_text("accuracy", font, 90)[0]
    picture.paste(INK, (4, round(y(0.5)) - axis_label.height // 2), mask=axis_label)
    draw.text((left, 6), f"ECE {ece:.3f} over {len(binned.counts)} bins", fill=INK, font=font, anchor="lt")
    _legend(draw, (left, top - 14), small)
    _count_strip(draw, binned, (left, counts_top, plot, counts_height), tiny)
    draw.text((4, counts_top + counts_height // 2), "count", fill=MUTED, font=small, anchor="lm")
    return picture


def _legend(draw: ImageDraw.ImageDraw, start: tuple[int, int], font: Font) -> None:
    """The reliability diagram's key in one line from ``start`` (left, middle): bar, mean-confidence mark, diagonal."""
    x, y = start
    draw.rectangle((x, y - 4, x + 14, y + 4), fill=_BAR, outline=_BAR_EDGE)
    draw.text((x + 20, y), "accuracy in bin", fill=INK, font=font, anchor="lm")
    x += 30 + _width(font, "accuracy in bin")
    draw.line((x, y, x + 14, y), fill=_RED, width=3)
    draw.text((x + 20, y), "mean confidence", fill=INK, font=font, anchor="lm")
    x += 30 + _width(font, "mean confidence")
    _dashed(draw, (x, y), (x + 14, y), INK, dash=3)
    draw.text((x + 20, y), "perfect calibration", fill=INK, font=font, anchor="lm")


def _count_strip(draw: ImageDraw.ImageDraw, binned: CalibrationBins, box: tuple[int, int, int, int], font: Font) -> None:
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
            draw.text(((x0 + x1) / 2, bar_top - 2), str(int(count)), fill=INK, font=font, anchor="mb")
    draw.line((left, top + height, left + width, top + height), fill=INK)


