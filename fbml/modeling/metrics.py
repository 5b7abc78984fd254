"""Classification figures: accuracy, macro-F1, per-product aggregation, confusion matrices as pictures."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import polars as pl
from PIL import Image, ImageDraw, ImageFont

CELL = 28
LABEL_WIDTH = 230


@attrs.frozen
class ClassificationReport:
    """Accuracy and macro-F1 over ``examples`` with the confusion matrix (rows: truth, columns: predicted)."""

    examples: int
    accuracy: float
    macro_f1: float
    confusion: tuple[tuple[int, ...], ...]

    def to_json(self) -> dict[str, object]:
        return {
            "examples": self.examples,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "confusion": [list(row) for row in self.confusion],
        }


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """The unweighted mean F1 over the classes that occur in truth or prediction."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    present = (predicted + actual) > 0
    f1 = np.divide(2 * true_positive, predicted + actual, out=np.zeros_like(true_positive), where=present)
    return float(f1[present].mean()) if present.any() else 0.0


def classification_report(labels: np.ndarray, probabilities: np.ndarray) -> ClassificationReport:
    """Figures for one prediction per example."""
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, probabilities.shape[1])
    return ClassificationReport(
        examples=len(labels),
        accuracy=float((predicted == labels).mean()) if len(labels) else 0.0,
        macro_f1=macro_f1(matrix),
        confusion=tuple(tuple(int(value) for value in row) for row in matrix),
    )


def per_product(product_ids: Sequence[str], labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per product: its label and the mean of its examples' probabilities (in first-seen order)."""
    frame = pl.DataFrame({"product": list(product_ids), "label": labels, "row": np.arange(len(labels))})
    groups = frame.group_by("product", maintain_order=True).agg(pl.col("label").first(), pl.col("row"))
    means = np.stack([probabilities[rows].mean(axis=0) for rows in groups["row"].to_list()])
    return groups["label"].to_numpy(), means


def confusion_matrix_image(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The row-normalised confusion matrix as an RGB picture (H, W, 3 uint8), counts in the cells."""
    classes = len(class_names)
    width, height = LABEL_WIDTH + classes * CELL + 10, LABEL_WIDTH // 2 + classes * CELL + 10
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    totals = matrix.sum(axis=1, keepdims=True).clip(min=1)
    top = LABEL_WIDTH // 2
    for row in range(classes):
        draw.text((4, top + row * CELL + 8), _short(class_names[row]), fill="black", font=font)
        draw.text((LABEL_WIDTH + row * CELL + 8, top - 14), str(row), fill="black", font=font)
        for column in range(classes):
            share = matrix[row, column] / totals[row, 0]
            shade = int(255 * (1 - share))
            box = (LABEL_WIDTH + column * CELL, top + row * CELL, LABEL_WIDTH + (column + 1) * CELL, top + (row + 1) * CELL)
            draw.rectangle(box, fill=(shade, shade, 255), outline="grey")
            if matrix[row, column]:
                ink = "white" if share > 0.5 else "black"
                draw.text((box[0] + 3, box[1] + 8), str(int(matrix[row, column])), fill=ink, font=font)
    draw.text((4, 4), "truth (rows) vs predicted (columns), shaded by row share", fill="black", font=font)
    return np.asarray(picture)


def _short(name: str, limit: int = 34) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."
