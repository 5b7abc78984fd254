"""A bundle's training profile: what the listings it was trained on looked like, as small summaries (no rows).

``fbml monitor`` compares new listings with it. A profile holds, per feature name (``products.price``,
``text.length``, ``photos.brightness``, ``predictions.text.confidence``, ...):

* numeric features: the share of values in each bin between the training quantiles (``edges``) and the
  values at ``QUANTILE_LEVELS`` (1st to 99th percentile) and their spread (for PSI and Wasserstein);
* categorical features: the share of each label (the category mix, the predicted class mix);
* rates: a total and, per name, how many of it (rejections by reason, missing fields, unknown words);
* a sample of listing vectors (``Bundle.embed_many``), for a domain classifier.

The profile is saved in the bundle as JSON; ``profile_from_json`` checks untrusted JSON (shapes, sizes,
finite numbers, shares that sum to one) before anything uses it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
import numpy as np

from fbml.errors import FbmlError

PROFILE_FORMAT: Final = "fbml.profile/1"
QUANTILE_LEVELS: Final = tuple(level / 100 for level in range(1, 100))
"""The levels a numeric feature's quantiles are kept at: its 1st to 99th percentiles (the extreme tails,
a handful of listings, are left out of Wasserstein distances)."""
BINS: Final = 10
"""Numeric features are binned at their training deciles (fewer bins where values repeat)."""
MAX_FEATURES: Final = 256
MAX_LABELS: Final = 4096
MAX_NAME: Final = 200
MAX_VECTORS: Final = 256
MAX_WIDTH: Final = 8192
_SHARE_SLACK = 1e-6

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Share = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class NumericSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A numeric feature: ``count`` values; ``shares[i]`` of them in bin ``i`` of the interior ``edges``
    (bin 0 below ``edges[0]``, the last at or above ``edges[-1]``); the values at ``QUANTILE_LEVELS``;
    their standard deviation ``scale``."""

    count: Count
    edges: Annotated[list[float], msgspec.Meta(max_length=BINS - 1)]
    shares: Annotated[list[Share], msgspec.Meta(min_length=1, max_length=BINS)]
    quantiles: Annotated[list[float], msgspec.Meta(min_length=len(QUANTILE_LEVELS), max_length=len(QUANTILE_LEVELS))]
    scale: Annotated[float, msgspec.Meta(ge=0.0)]


class CategoricalSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A categorical feature: ``count`` values, the share of each label."""

    count: Count
    shares: Annotated[dict[Name, Share], msgspec.Meta(max_length=MAX_LABELS)]


class RateGroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Counts out of one total: e.g. rows read and, per reason, the rows rejected for it."""

    total: Count
    counts: Annotated[dict[Name, Count], msgspec.Meta(max_length=MAX_LABELS)] = {}


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A training profile (see the module's docstring); ``vectors`` rows are listing vectors, or None when
    the bundle makes none (it has no similar-listings index)."""

    format: Literal["fbml.profile/1"] = PROFILE_FORMAT
    numeric: Annotated[dict[Name, NumericSummary], msgspec.Meta(max_length=MAX_FEATURES)] = {}
    categorical: Annotated[dict[Name, CategoricalSummary], msgspec.Meta(max_length=MAX_FEATURES)] = {}
    rates: Annotated[dict[Name, RateGroup], msgspec.Meta(max_length=MAX_FEATURES)] = {}
    vectors: Annotated[list[Annotated[list[float], msgspec.Meta(max_length=MAX_WIDTH)]],
                       msgspec.Meta(max_length=MAX_VECTORS)] | None = None  # fmt: skip

    def vector_array(self) -> np.ndarray | None:
        """The sample of listing vectors as float32 (n, width), or None."""
        return None if self.vectors is None else np.asarray(self.vectors, np.float32).reshape(len(self.vectors), -1)


def binned_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of ``values`` in each bin of the interior ``edges`` (bin i holds edges[i-1] <= v < edges[i])."""
    if values.size == 0:
        return np.zeros(edges.size + 1)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    shares: np.ndarray = counts / values.size
    return shares


def numeric_summary(values: np.ndarray) -> NumericSummary:
    """The summary of finite ``values`` (at least one): decile edges, shares, quantiles, standard deviation."""
    values = np.sort(np.asarray(values, np.float64))
    edges = np.unique(np.quantile(values, np.arange(1, BINS) / BINS))
    return NumericSummary(
        count=int(values.size),
        edges=edges.tolist(),
        shares=binned_shares(values, edges).tolist(),
        quantiles=np.quantile(values, QUANTILE_LEVELS).tolist(),
        scale=float(values.std()),
    )


def categorical_summary(labels: list[str]) -> CategoricalSummary:
    """The share of each label of ``labels`` (at least one)."""
    names, counts = np.unique(np.asarray(labels, dtype=object), return_counts=True)
    return CategoricalSummary(len(labels), {str(name): float(count / len(labels)) for name, count in zip(names, counts, strict=True)})


def profile_to_json(profile: Profile) -> Any:
    """The profile as JSON-ready builtins."""
    return msgspec.to_builtins(profile)


def profile_from_json(value: object) -> Profile:
    """A profile from parsed JSON; ``FbmlError`` saying what is wrong when it is not a valid, consistent one."""
    try:
        profile = msgspec.convert(value, Profile)
    except msgspec.ValidationError as error:
        raise FbmlError(f"not a {PROFILE_FORMAT} profile: {error}") from None
    for name, numeric in profile.numeric.items():
        _check_numeric(name, numeric)
    for name, categorical in profile.categorical.items():
        _check_shares(f"categorical {name!r}", list(categorical.shares.values()))
    for name, group in profile.rates.items():
        if any(count > group.total for count in group.counts.values()):
            raise FbmlError(f"rate group {name!r} counts more than its total {group.total}")
    _check_vectors(profile.vectors)
    return profile


def _check_numeric(name: str, numeric: NumericSummary) -> None:
    where = f"numeric {name!r}"
    numbers = [*numeric.edges, *numeric.quantiles, numeric.scale]
    if not all(math.isfinite(number) for number in numbers):
        raise FbmlError(f"{where} holds values that are not finite numbers")
    if len(numeric.shares) != len(numeric.edges) + 1:
        raise FbmlError(f"{where} has {len(numeric.shares)} shares for {len(numeric.edges)} edges (expected one more)")
    if any(later <= earlier for earlier, later in zip(numeric.edges, numeric.edges[1:], strict=False)):
        raise FbmlError(f"{where}: its edges do not increase")
    if any(later < earlier for earlier, later in zip(numeric.quantiles, numeric.quantiles[1:], strict=False)):
        raise FbmlError(f"{where}: its quantiles decrease")
    _check_shares(where, numeric.shares)


def _check_shares(where: str, shares: list[float]) -> None:
    if shares and abs(sum(shares) - 1.0) > _SHARE_SLACK * max(1, len(shares)):
        raise FbmlError(f"{where}: its shares sum to {sum(shares):.6f}, not 1")


def _check_vectors(vectors: list[list[float]] | None) -> None:
    if not vectors:
        return
    widths = {len(row) for row in vectors}
    if len(widths) != 1 or 0 in widths:
        raise FbmlError("the vector sample's rows are not all of one non-zero width")
    if not all(math.isfinite(number) for row in vectors for number in row):
        raise FbmlError("the vector sample holds values that are not finite numbers")


def rate_group(total: int, counts: Mapping[str, int]) -> RateGroup:
    """A ``RateGroup`` of the non-zero ``counts``."""
    return RateGroup(total, {name: int(count) for name, count in sorted(counts.items()) if count})
