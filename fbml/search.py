"""Similar listings: an exact cosine search over the catalogue's combined-model embeddings.

A product's vector is the L2-normalised mean of its photos' combined-model embeddings (eval mode,
deterministic transforms). A query is one matrix product with every row and a partial sort. The
index travels in the bundle: vectors as ``.npy``, the catalogue (id, name, category, price) as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import polars as pl

from fbml.errors import FbmlError

if TYPE_CHECKING:
    from torch import Tensor

    from fbml.bundle import Bundle, TextSettings
    from fbml.models import CombinedClassifier
    from fbml.pipeline import CleanTables

CATALOGUE_SCHEMA = {"id": pl.String, "product_name": pl.String, "category": pl.String, "price": pl.Float64}
MAX_K = 100
PRECISION_K = 10
EMBEDDING_BATCH = 64


class UnknownProductError(FbmlError):
    """A product id the index does not hold."""


def _check_vectors(_instance: object, _attribute: attrs.Attribute, vectors: np.ndarray) -> None:
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise FbmlError(f"index vectors must be a float32 (N, D) array, got {vectors.dtype} {vectors.shape}")


def _check_catalogue(instance: SearchIndex, _attribute: attrs.Attribute, catalogue: pl.DataFrame) -> None:
    if dict(catalogue.schema) != CATALOGUE_SCHEMA:
        raise FbmlError(f"an index catalogue has columns {CATALOGUE_SCHEMA}, got {dict(catalogue.schema)}")
    if catalogue.height != len(instance.vectors):
        raise FbmlError(f"the index has {len(instance.vectors)} vectors for {catalogue.height} catalogue rows")
    if catalogue["id"].is_duplicated().any() or catalogue["id"].null_count():
        raise FbmlError("index catalogue ids must be present and unique")


@attrs.frozen
class Neighbour:
    """A catalogue row and its cosine similarity to the query."""

    row: int
    score: float


@attrs.frozen
class SearchIndex:
    """Unit-length product vectors, row ``i`` being catalogue row ``i``, and what building it measured."""

    vectors: np.ndarray = attrs.field(validator=_check_vectors, eq=attrs.cmp_using(eq=np.array_equal))
    catalogue: pl.DataFrame = attrs.field(validator=_check_catalogue, eq=attrs.cmp_using(eq=pl.DataFrame.equals))
    report: Mapping[str, Any] = attrs.field(factory=dict)
    _rows: dict[str, int] = attrs.field(init=False, eq=False, repr=False)

    @_rows.default
    def _row_of_id(self) -> dict[str, int]:
        return {product_id: row for row, product_id in enumerate(self.catalogue["id"])}

    def __len__(self) -> int:
        return len(self.vectors)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._rows

    @property
    def dim(self) -> int:
        """The width of each vector."""
        return self.vectors.shape[1]

    def row(self, product_id: str) -> int:
        """The catalogue row of ``product_id``; ``UnknownProductError`` when the index lacks it."""
        if product_id not in self._rows:
            raise UnknownProductError(f"no product {product_id!r} in the search index")
        return self._rows[product_id]

    def listing(self, row: int) -> dict[str, Any]:
        """Catalogue row ``row`` as a mapping of its columns."""
        return self.catalogue.row(row, named=True)

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores (each (Q, k'), best first, ties by row) of the ``k`` rows most similar to each
        query; ``exclude[q]`` (a row) is left out of query ``q``'s answer. ``k' = min(k, rows left)``."""
        _check_k(k)
        scores = np.atleast_2d(np.asarray(queries, dtype=np.float32)) @ self.vectors.T
        if exclude is not None:
            scores[np.arange(len(scores)), np.asarray(exclude, dtype=np.int64)] = -np.inf
        take = min(k, len(self) - (exclude is not None))
        if take <= 0:
            return np.zeros((len(scores), 0), dtype=np.int64), np.zeros((len(scores), 0), dtype=np.float32)
        rows = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        top = np.take_along_axis(scores, rows, axis=1)
        order = np.lexsort((rows, -top), axis=1)
        return np.take_along_axis(rows, order, axis=1), np.take_along_axis(top, order, axis=1)

    def nearest(self, vector: np.ndarray, k: int) -> list[Neighbour]:
        """The ``k`` rows most similar to one query vector (normalised here)."""
        rows, scores = self.search(_unit_rows(np.atleast_2d(vector)), k)
        return _neighbours(rows[0], scores[0])

    def neighbours(self, product_id: str, k: int) -> list[Neighbour]:
        """The ``k`` rows most similar to a catalogue product, the product itself excluded."""
        row = self.row(product_id)
        rows, scores = self.search(self.vectors[row], k, exclude=[row])
        return _neighbours(rows[0], scores[0])

    def catalogue_json(self) -> list[dict[str, Any]]:
        """The catalogue as JSON rows."""
        return self.catalogue.to_dicts()

    @classmethod
    def from_json(cls, vectors: np.ndarray, rows: Any, report: Mapping[str, Any]) -> SearchIndex:
        """The index ``catalogue_json`` and its vectors describe; ``FbmlError`` when they do not fit."""
        if not isinstance(rows, list) or not all(isinstance(row, dict) and row.keys() == CATALOGUE_SCHEMA.keys() for row in rows):
            raise FbmlError(f"an index catalogue is a list of rows with keys {list(CATALOGUE_SCHEMA)}")
        try:
            catalogue = pl.DataFrame(rows, schema=CATALOGUE_SCHEMA)
        except (TypeError, ValueError, pl.exceptions.PolarsError) as error:
            raise FbmlError(f"bad index catalogue: {error}") from None
        return cls(vectors, catalogue, report)


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise FbmlError(f"k must be between 1 and {MAX_K}, got {k}")


def _neighbours(rows: np.ndarray, scores: np.ndarray) -> list[Neighbour]:
    return [Neighbour(int(row), float(score)) for row, score in zip(rows, scores, strict=True)]


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def index_from_embeddings(embeddings: np.ndarray, photos: pl.DataFrame, report: Mapping[str, Any] | None = None) -> SearchIndex:
    """Per product (``photos["id"]``, one row per photo beside ``embeddings``): the unit mean of its photos' embeddings."""
    if len(embeddings) != photos.height:
        raise FbmlError(f"{len(embeddings)} embeddings for {photos.height} photos")
    ids, inverse = np.unique(photos["id"].to_numpy().astype(str), return_inverse=True)
    sums = np.zeros((len(ids), embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, embeddings)
    means = sums / np.bincount(inverse, minlength=len(ids))[:, None]
    catalogue = (
        pl.DataFrame({"id": ids.tolist()}, schema={"id": pl.String})
        .join(photos.unique("id", keep="first").select(list(CATALOGUE_SCHEMA)), on="id", how="left", maintain_order="left")
        .cast(CATALOGUE_SCHEMA)
    )
    return SearchIndex(_unit_rows(means), catalogue, report or {})


def photo_embeddings(
    model: CombinedClassifier,
    pixels: np.ndarray,
    positions: np.ndarray,
    tokens: np.ndarray,
    transform: Callable[[Tensor], Tensor],
    *,
    progress: bool = True,
) -> np.ndarray:
    """The combined model's embedding (float32) of photo ``pixels[positions[i]]`` with ``tokens[i]``."""
    import torch
    from tqdm import tqdm

    model.eval()
    parts = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(positions), EMBEDDING_BATCH), desc="index embeddings", disable=not progress):
            chosen = positions[start : start + EMBEDDING_BATCH]
            images: Tensor = transform(torch.from_numpy(np.array(pixels[chosen])))
            batch_tokens = torch.from_numpy(tokens[start : start + EMBEDDING_BATCH])
            parts.append(model(images, batch_tokens).embedding.float().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.embedding_dim), dtype=np.float32)


def product_tokens(frame: pl.DataFrame, text: TextSettings) -> np.ndarray:
    """Token ids of each row's name and description, as the text models read them."""
    from fbml.text import product_text

    texts = frame.select(product_text(pl.col("product_name"), pl.col("product_description"))).to_series()
    return text.vocabulary.encode_texts(texts, text.length)


def catalogue_index(
    bundle: Bundle, manifest: pl.DataFrame, image_dir: Path, *, work_dir: Path, progress: bool = True
) -> SearchIndex:
    """The index of every product of ``manifest`` (one row per photo) with at least one readable photo.

    Photos are decoded through the image cache in ``work_dir`` (the one training built, when the
    manifest lists the same photos in the same order).
    """
    from fbml.datasets import eval_transform
    from fbml.photos import build_image_cache

    model = bundle.model("combined")
    settings = bundle.image
    cache = build_image_cache(manifest, image_dir, work_dir / f"photos-{settings.size}", size=settings.size, progress=progress)
    photos = manifest.filter(pl.Series(cache.cached(manifest["image_id"])))
    if photos.is_empty():
        raise FbmlError(f"{image_dir}: no readable photo of any catalogue product")
    transform = eval_transform(settings.size, settings.mean, settings.std)
    tokens = product_tokens(photos, bundle.text)
    embeddings = photo_embeddings(model, cache.pixels, cache.rows_for(photos["image_id"]), tokens, transform, progress=progress)
    return index_from_embeddings(embeddings, photos)


def precision_at_k(index: SearchIndex, product_ids: Sequence[str] | pl.Series, k: int = PRECISION_K) -> float | None:
    """Share of each query product's ``k`` nearest other products with its category, over the products
    of ``product_ids`` the index holds (None when it holds none of them, or nothing else)."""
    rows = np.array([index.row(product_id) for product_id in product_ids if product_id in index], dtype=np.int64)
    if rows.size == 0 or len(index) < 2:
        return None
    neighbours, _ = index.search(index.vectors[rows], k, exclude=rows)
    categories = index.catalogue["category"].to_numpy()
    return float((categories[neighbours] == categories[rows][:, None]).mean())


def indexed_bundle(
    bundle: Bundle, tables: CleanTables, image_dir: Path | None, *, work_dir: Path, split_seed: int = 0, progress: bool = True
) -> Bundle:
    """``bundle`` with the index of ``tables``' whole catalogue, reporting precision@10 for its
    product-level test split (the split training used for ``split_seed``) against the catalogue."""
    from fbml.pipeline import split_tables

    if tables.manifest is None or image_dir is None:
        raise FbmlError("building the search index needs an images table and a photo folder")
    splits = split_tables(tables, seed=split_seed)
    photos = pl.concat([splits.images.train, splits.images.validation, splits.images.test])
    index = catalogue_index(bundle, photos, image_dir, work_dir=work_dir, progress=progress)
    test_ids = splits.products.test["id"]
    report = {
        "products": len(index),
        "split_seed": split_seed,
        "test_products": sum(product_id in index for product_id in test_ids),
        f"precision_at_{PRECISION_K}": precision_at_k(index, test_ids),
    }
    return attrs.evolve(bundle, index=attrs.evolve(index, report=report))


def training_split_seed(bundle: Bundle) -> int:
    """The split seed the bundle's combined model was trained with (0 when it does not say)."""
    return int(bundle.models["combined"].report.get("config", {}).get("split_seed", 0)) if "combined" in bundle.models else 0


def index_summary(index: SearchIndex) -> str:
    """What the index holds and how well its neighbours share a category."""
    report = index.report
    precision = report.get(f"precision_at_{PRECISION_K}")
    summary = f"search index: {len(index)} products, {index.dim}-dim vectors"
    if precision is None:
        return summary
    return f"{summary}; precision@{PRECISION_K} {precision:.3f} over {report.get('test_products')} test products"
