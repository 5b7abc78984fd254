"""The search index: unit-length listing vectors beside their catalogue rows, searched by cosine.

Queries go to a ``VectorIndex`` over the vectors (``fbml.bundle.vector_index``): exact for a catalogue
small enough to score whole, HNSW past that (``method="auto"``). The index travels in the bundle:
vectors as ``.npy`` (an HNSW graph's in append-only chunks beside the graph, in faiss' format), the catalogue (id,
name, category, category path, price, photo ids) as JSON in append-only chunks of rows (``catalogue_chunks``).
How a listing becomes a vector is ``fbml.bundle.listings``' job (one place for the catalogue and queries alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import attrs
import numpy as np
import polars as pl
from contracts.limits import MAX_CATALOGUE_TEXT, MAX_K, MAX_LISTING_PHOTOS
from contracts.rules import CATALOGUE, CATALOGUE_SCHEMA, catalogue_rules

from fbml.bundle.vector_index import Chunk, Method, VectorIndex, check_vectors, split_in_order, vector_index
from fbml.errors import FbmlError, shown
from fbml.tables.validation import rules_checked

PRECISION_K = 10


class UnknownProductError(FbmlError):
    """A product id the index does not hold."""


UNIT_TOLERANCE = 1e-3
Value = TypeVar("Value")


@attrs.frozen
class _Checked(Generic[Value]):
    """Vectors or catalogue rows known to pass ``SearchIndex``'s checks, which it takes as they are: an index's own
    (or some of them), and those followed by new rows checked on their own whose ids it does not hold."""

    value: Value


def _unit_vectors(vectors: np.ndarray | _Checked[np.ndarray]) -> np.ndarray:
    """Listing vectors: float32 (N, D), finite, each of length 1 (or 0: a listing with no part)."""
    if isinstance(vectors, _Checked):
        return vectors.value
    check_vectors(vectors)
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))  # a third of np.linalg.norm's time on 100k rows
    off = int(np.count_nonzero((np.abs(norms - 1.0) > UNIT_TOLERANCE) & (norms > 0)))
    if off:
        raise FbmlError(f"{off} of the index's vectors are not of length 1 (cosine search needs unit vectors)")
    return vectors


def _checked_catalogue(catalogue: pl.DataFrame | _Checked[pl.DataFrame]) -> pl.DataFrame:
    """The catalogue checked against its contract's rules (``CATALOGUE_SCHEMA``, ``catalogue_rules``), as
    pandera's ``Catalogue`` model checks it but without pandera: ``ContractError`` naming the column and the check."""
    if isinstance(catalogue, _Checked):
        return catalogue.value
    return rules_checked(catalogue, CATALOGUE, CATALOGUE_SCHEMA, catalogue_rules())


def _check_catalogue(instance: SearchIndex, _attribute: attrs.Attribute[pl.DataFrame], catalogue: pl.DataFrame) -> None:
    if catalogue.height != len(instance.vectors):
        raise FbmlError(f"the index has {len(instance.vectors)} vectors for {catalogue.height} catalogue rows")


def _check_engine(instance: SearchIndex, _attribute: attrs.Attribute[VectorIndex], engine: VectorIndex) -> None:
    if (len(engine), engine.dim) != instance.vectors.shape:
        raise FbmlError(f"the index's {engine.method} search holds {len(engine)} x {engine.dim} vectors, "
                        f"not the {instance.vectors.shape[0]} x {instance.vectors.shape[1]} of the index")


def _check_catalogue_chunks(instance: SearchIndex, _attribute: attrs.Attribute[tuple[Chunk, ...]], chunks: tuple[Chunk, ...]) -> None:
    if not split_in_order(chunks) or (chunks[-1].stop if chunks else 0) > instance.catalogue.height:
        raise FbmlError(f"catalogue chunks must split the first of the catalogue's {instance.catalogue.height} rows in order, "
                        f"got {[chunk.stop for chunk in chunks]}")


def _auto_engine(index: SearchIndex) -> VectorIndex:
    return vector_index(index.vectors)


@attrs.frozen
class Neighbour:
    """A catalogue row and its cosine similarity to the query."""

    row: int
    score: float


@attrs.frozen
class SearchIndex:
    """Unit-length product vectors, row ``i`` being catalogue row ``i``, what building it measured, and the
    ``engine`` that searches them (by default ``vector_index(vectors)``: exact while small, else HNSW).

    ``catalogue_chunks`` are the chunks its first catalogue rows are saved in (as a bundle read or saved holds them,
    ``fbml.bundle.store``): a save writes the rows past them, merged with the last ones as ``appended_start`` says,
    and the others not again."""

    vectors: np.ndarray = attrs.field(converter=_unit_vectors, eq=attrs.cmp_using(eq=np.array_equal))
    catalogue: pl.DataFrame = attrs.field(
        converter=_checked_catalogue, validator=_check_catalogue, eq=attrs.cmp_using(eq=pl.DataFrame.equals)
    )
    report: Mapping[str, Any] = attrs.field(factory=dict)
    engine: VectorIndex = attrs.field(default=attrs.Factory(_auto_engine, takes_self=True), validator=_check_engine,
                                      eq=False, repr=False)
    catalogue_chunks: tuple[Chunk, ...] = attrs.field(default=(), validator=_check_catalogue_chunks, eq=False, repr=False)
    _rows: dict[str, int] = attrs.field(init=False, eq=False, repr=False)

    @_rows.default
    def _row_of_id(self) -> dict[str, int]:
        return dict(zip(self.catalogue["id"].to_list(), range(self.catalogue.height), strict=True))  # a 100k-row catalogue in 10 ms

    def __len__(self) -> int:
        return len(self.vectors)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._rows

    @property
    def dim(self) -> int:
        """The width of each vector."""
        return int(self.vectors.shape[1])

    def row(self, product_id: str) -> int:
        """The catalogue row of ``product_id``; ``UnknownProductError`` when the index lacks it."""
        if product_id not in self._rows:
            raise UnknownProductError(f"no product {shown(product_id)} in the search index")
        return self._rows[product_id]

    def listing(self, row: int) -> dict[str, Any]:
        """Catalogue row ``row`` as a mapping of its columns."""
        return self.catalogue.row(row, named=True)

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores (each (Q, k'), best first) of the ``k`` rows most similar to each query, by the
        index's engine; ``exclude[q]`` (a row) is left out of query ``q``'s answer. ``k' = min(k, rows left)``."""
        _check_k(k)
        return self.engine.search(queries, k, exclude)

    def with_method(self, method: Method) -> SearchIndex:
        """The same index searched by ``method``'s engine (``auto``: exact while small, else HNSW)."""
        return attrs.evolve(self, engine=vector_index(self.vectors, method=method))

    def nearest(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        """The ``k`` rows most similar to one query vector (normalised here)."""
        rows, scores = self.search(unit_rows(np.atleast_2d(vector)), k)
        return _neighbours(rows[0], scores[0])

    def neighbours(self, product_id: str, k: int) -> list[Neighbour]:
        """The ``k`` rows most similar to a catalogue product, the product itself excluded."""
        row = self.row(product_id)
        rows, scores = self.search(self.vectors[row], k, exclude=[row])
        return _neighbours(rows[0], scores[0])

    def with_listings(self, vectors: np.ndarray, catalogue: pl.DataFrame) -> SearchIndex:
        """The index with the listings of ``catalogue`` (its rows, ``vectors`` their unit vectors) added as its last
        rows; a listing whose id it holds already is replaced (removed, then added). Nothing is rebuilt: the engine
        links the new vectors in (``VectorIndex.with_added``), and the index's vectors are its (``row_vectors``); only
        the new rows are checked. This index is unchanged."""
        added = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(added) != catalogue.height:
            raise FbmlError(f"{len(added)} vectors for {catalogue.height} new catalogue rows")
        added, rows = _unit_vectors(added), _checked_catalogue(catalogue.select(list(CATALOGUE_SCHEMA)))
        replaced = [product_id for product_id in rows["id"].to_list() if product_id in self._rows]
        kept = self.without(replaced) if replaced else self
        engine = kept.engine.with_added(added)
        grown = _Checked(pl.concat([kept.catalogue, rows], how="vertical"))
        # the engine's vectors: one copy, not two
        return SearchIndex(_Checked(engine.row_vectors()), grown, kept.report, engine, kept.catalogue_chunks)

    def without(self, product_ids: Sequence[str]) -> SearchIndex:
        """The index without the listings ``product_ids``; ``UnknownProductError`` naming those it does not hold.
        No search of the result returns them (an HNSW graph keeps them as tombstones it skips, see
        ``HnswIndex``). This index is unchanged."""
        unknown = [product_id for product_id in dict.fromkeys(product_ids) if product_id not in self._rows]
        if unknown:
            raise UnknownProductError(f"{len(unknown)} product(s) not in the search index: {shown(unknown)}")
        rows = np.array(sorted({self._rows[product_id] for product_id in product_ids}), dtype=np.int64)
        keep = np.ones(len(self), dtype=bool)
        keep[rows] = False
        first = int(rows[0]) if len(rows) else len(self)
        return SearchIndex(_Checked(self.vectors[keep]), _Checked(self.catalogue.filter(pl.Series(keep))), self.report,
                           self.engine.without(rows), tuple(chunk for chunk in self.catalogue_chunks if chunk.stop <= first))

    def catalogue_json(self, start: int = 0, stop: int | None = None) -> bytes:
        """Catalogue rows ``start`` to ``stop`` (default: all) as a JSON array of rows (UTF-8; written by polars: a
        100k-row catalogue in a tenth of a second, where Python's indenting encoder took seconds)."""
        return self.catalogue[start:stop].write_json().encode()

    @classmethod
    def from_json(
        cls, vectors: np.ndarray, rows: Any, report: Mapping[str, Any], engine: VectorIndex | None = None,
        catalogue_chunks: tuple[Chunk, ...] = (),
    ) -> SearchIndex:
        """The index ``catalogue_json`` (read as JSON; the rows of its ``catalogue_chunks`` in turn), its vectors and
        (when saved) its engine describe; ``FbmlError`` when they do not fit. Without an engine, the vectors are
        searched exactly."""
        if not isinstance(rows, list) or not all(isinstance(row, dict) and row.keys() == CATALOGUE_SCHEMA.keys() for row in rows):
            raise FbmlError(f"an index catalogue is a list of rows with keys {list(CATALOGUE_SCHEMA)}")
        catalogue = _typed_columns(rows)
        if catalogue is None or not _within_bounds(catalogue):  # as before: the first row out of bounds named, or converted
            for number, row in enumerate(rows):
                _check_row_bounds(number, row)
            try:
                catalogue = pl.DataFrame(rows, schema=CATALOGUE_SCHEMA)
            except (TypeError, ValueError, pl.exceptions.PolarsError) as error:
                raise FbmlError(f"bad index catalogue: {str(error).splitlines()[0]}") from None
        return cls(vectors, catalogue, report, vector_index(vectors, method="exact") if engine is None else engine, catalogue_chunks)


def _typed_columns(rows: list[dict[str, Any]]) -> pl.DataFrame | None:
    """Catalogue rows as ``pl.DataFrame(rows, schema=CATALOGUE_SCHEMA)`` makes them, built a column at a time (a
    tenth of its time, most of it spent on the photo lists); None when a value is neither null nor of its column's
    type (a price written as text: that frame converts it), or a row's photos are not a list."""
    photos = [row["photos"] for row in rows]
    if not all(type(listing) is list for listing in photos):
        return None
    try:
        return pl.DataFrame([_photo_lists(photos) if name == "photos" else pl.Series(name, [row[name] for row in rows], dtype, strict=True)
                             for name, dtype in CATALOGUE_SCHEMA.items()])  # fmt: skip
    except (TypeError, ValueError, pl.exceptions.PolarsError):
        return None


def _photo_lists(photos: list[list[Any]]) -> pl.Series:
    """Lists of photo ids as a ``List(String)`` column, from one flat column (polars makes a list column of Python lists
    one row at a time): each row's ids after a null that marks its start, gathered by row, the marks dropped."""
    marked = pl.Series("photos", [photo for listing in photos for photo in (None, *listing)], pl.String, strict=True)
    rows = pl.Series("row", [row for row, listing in enumerate(photos) for _ in range(len(listing) + 1)], pl.Int64)
    return pl.DataFrame([rows, marked]).group_by("row", maintain_order=True).agg(pl.col("photos").slice(1)).get_column("photos")


def _within_bounds(catalogue: pl.DataFrame) -> bool:
    """Whether every row of a catalogue passes ``_check_row_bounds``."""
    texts = [pl.col(name).str.len_chars().max() for name, dtype in CATALOGUE_SCHEMA.items() if dtype == pl.String]
    photos = [pl.col("photos").list.len().max(), pl.col("photos").explode().str.len_chars().max().alias("photo ids")]
    found = catalogue.select(*texts, *photos).row(0)
    limits = (MAX_CATALOGUE_TEXT,) * len(texts) + (MAX_LISTING_PHOTOS, MAX_CATALOGUE_TEXT)
    return all(value is None or value <= limit for value, limit in zip(found, limits, strict=True))


def _check_row_bounds(number: int, row: dict[str, Any]) -> None:
    """``FbmlError`` unless catalogue row ``number``'s texts are strings of at most ``MAX_CATALOGUE_TEXT`` characters
    and its photos a list of at most ``MAX_LISTING_PHOTOS`` of them (a loaded catalogue is untrusted input)."""
    photos = row["photos"]
    if not isinstance(photos, list) or len(photos) > MAX_LISTING_PHOTOS:
        raise FbmlError(f"index catalogue row {number}: photos must be a list of at most {MAX_LISTING_PHOTOS} photo ids")
    texts = [row[name] for name, dtype in CATALOGUE_SCHEMA.items() if dtype == pl.String] + photos
    if not all(text is None or isinstance(text, str) and len(text) <= MAX_CATALOGUE_TEXT for text in texts):  # nulls: the contract's
        raise FbmlError(f"index catalogue row {number}: its ids, names, paths and photo ids are strings of at most "
                        f"{MAX_CATALOGUE_TEXT} characters")


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise FbmlError(f"k must be between 1 and {MAX_K}, got {k}")


def _neighbours(rows: np.ndarray, scores: np.ndarray) -> list[Neighbour]:
    return [Neighbour(int(row), float(score)) for row, score in zip(rows, scores, strict=True)]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
