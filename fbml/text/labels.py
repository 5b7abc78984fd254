"""The label codec: category names to class indices and back, sorted so every run agrees."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import polars as pl

from fbml.errors import FbmlError

CODEC_FORMAT = "fbml.label-codec/1"


class UnknownLabelError(FbmlError):
    """A label the codec was not built with."""


def _sorted_unique(classes: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(classes)))


@attrs.frozen
class LabelCodec:
    """Classes in sorted order; index ``i`` is ``classes[i]``."""

    classes: tuple[str, ...] = attrs.field(converter=_sorted_unique)

    @classes.validator
    def _not_empty(self, _attribute: attrs.Attribute[Any], classes: tuple[str, ...]) -> None:
        if not classes:
            raise FbmlError("a label codec needs at least one class")

    @property
    def num_classes(self) -> int:
        """How many classes there are."""
        return len(self.classes)

    def encode(self, labels: Sequence[str] | pl.Series) -> np.ndarray:
        """Class indices (int64) of ``labels``; an unknown label is an ``UnknownLabelError``."""
        series = pl.Series("label", labels, dtype=pl.String)
        indices = series.replace_strict(self.classes, range(self.num_classes), default=None, return_dtype=pl.Int64)
        if indices.null_count():
            unknown = sorted(set(series.filter(indices.is_null()).fill_null("<null>")))
            raise UnknownLabelError(f"unknown label(s) {unknown[:5]}; known: {list(self.classes)}")
        return indices.to_numpy()

    def decode(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        """Class names of ``indices``; an index out of range is an ``UnknownLabelError``."""
        array = np.asarray(indices, dtype=np.int64)
        bad = array[(array < 0) | (array >= self.num_classes)]
        if bad.size:
            raise UnknownLabelError(f"class index {int(bad[0])} out of range for {self.num_classes} classes")
        return [self.classes[index] for index in array.tolist()]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {"format": CODEC_FORMAT, "classes": list(self.classes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelCodec:
        """The codec ``to_json`` described; a clear error for anything else."""
        if not isinstance(data, Mapping) or data.get("format") != CODEC_FORMAT or not isinstance(data.get("classes"), list):
            raise FbmlError(f"not a label codec (expected format {CODEC_FORMAT!r} and a list of classes)")
        classes = data["classes"]
        if not all(isinstance(name, str) for name in classes) or classes != sorted(set(classes)):
            raise FbmlError("label codec classes must be unique strings in sorted order")
        return cls(classes)


def label_codec(labels: Iterable[str] | pl.Series) -> LabelCodec:
    """The codec of every distinct label, e.g. ``label_codec(products["category"])``."""
    return LabelCodec(labels)
