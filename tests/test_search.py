"""The search index: exact top-k equal to brute force, self-exclusion, k bounds, building, precision@k,
and its round trip through a bundle."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fbml.bundle import MANIFEST, Bundle, BundleModel, TextSettings, build_model, load_bundle, save_bundle
from fbml.encoding import LabelCodec
from fbml.errors import FbmlError
from fbml.search import (
    CATALOGUE_SCHEMA,
    MAX_K,
    SearchIndex,
    UnknownProductError,
    index_from_embeddings,
    precision_at_k,
)
from fbml.text import Vocabulary
from fbml.word2vec import WordVectors

CATEGORIES = ("Appliances", "Books", "Toys")
EMBEDDING = 8  # per branch: the combined model embeds in 2 * EMBEDDING


def random_index(rows: int, dim: int, seed: int) -> SearchIndex:
    """``rows`` random unit vectors with a catalogue cycling through CATEGORIES."""
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalogue = pl.DataFrame(
        {
            "id": [f"p{row}" for row in range(rows)],
            "product_name": [f"product {row}" for row in range(rows)],
            "category": [CATEGORIES[row % len(CATEGORIES)] for row in range(rows)],
            "price": [float(row) for row in range(rows)],
        },
        schema=CATALOGUE_SCHEMA,
    )
    return SearchIndex(vectors, catalogue)


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None) -> list[int]:
    """Rows by descending float64 cosine, ties by row, ``exclude`` left out."""
    scores = vectors.astype(np.float64) @ query.astype(np.float64)
    order = [int(row) for row in np.lexsort((np.arange(len(scores)), -scores)) if row != exclude]
    return order[:k]


def separated(scores: np.ndarray) -> bool:
    """No two scores within float32 rounding of each other (where the order is the arithmetic's choice)."""
    return bool(np.all(np.diff(np.sort(scores)) > 1e-4))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 60), dim=st.integers(2, 12), k=st.integers(1, MAX_K), seed=st.integers(0, 2**16))
def test_search_equals_brute_force(rows: int, dim: int, k: int, seed: int) -> None:
    index = random_index(rows, dim, seed)
    query = np.random.default_rng(seed + 1).normal(size=dim).astype(np.float32)
    assume(separated(index.vectors.astype(np.float64) @ query))
    found, scores = index.search(query, k)
    assert found[0].tolist() == brute_force(index.vectors, query, k)
    np.testing.assert_allclose(scores[0], index.vectors[found[0]] @ query, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(scores[0]) <= 0)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), k=st.integers(1, MAX_K), seed=st.integers(0, 2**16))
def test_neighbours_leave_the_product_itself_out(rows: int, k: int, seed: int) -> None:
    index = random_index(rows, 6, seed)
    row = seed % rows
    assume(separated(index.vectors.astype(np.float64) @ index.vectors[row]))
    neighbours = index.neighbours(f"p{row}", k)
    assert [neighbour.row for neighbour in neighbours] == brute_force(index.vectors, index.vectors[row], k, exclude=row)
    assert len(neighbours) == min(k, rows - 1)


def test_ties_go_to_the_lower_row() -> None:
    index = random_index(6, 3, seed=2)
    tied = SearchIndex(np.repeat(index.vectors[:1], 6, axis=0), index.catalogue)
    assert tied.search(index.vectors[0], 4)[0][0].tolist() == [0, 1, 2, 3]
    assert [neighbour.row for neighbour in tied.neighbours("p2", 3)] == [0, 1, 3]


def test_batched_queries_exclude_their_own_rows() -> None:
    index = random_index(30, 5, seed=3)
    rows = np.array([0, 7, 29])
    found, _ = index.search(index.vectors[rows], 10, exclude=rows)
    for query, row in enumerate(rows):
        assert row not in found[query]
        assert found[query].tolist() == brute_force(index.vectors, index.vectors[row], 10, exclude=int(row))


def test_nearest_normalises_the_query() -> None:
    index = random_index(20, 4, seed=1)
    query = np.array([3.0, -1.0, 0.5, 2.0], dtype=np.float32)
    scores = [neighbour.score for neighbour in index.nearest(query, 5)]
    unit = query / np.linalg.norm(query)
    np.testing.assert_allclose(scores, np.sort(index.vectors @ unit)[::-1][:5], rtol=1e-5)


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1])
def test_k_out_of_bounds_is_refused(k: int) -> None:
    with pytest.raises(FbmlError, match="k must be between"):
        random_index(5, 3, seed=0).search(np.ones(3, dtype=np.float32), k)


def test_unknown_product_is_an_error() -> None:
    with pytest.raises(UnknownProductError, match="no product 'nope'"):
        random_index(5, 3, seed=0).neighbours("nope", 3)


def test_index_from_embeddings_averages_each_products_photos_then_normalises() -> None:
    photos = pl.DataFrame(
        {
            "id": ["b", "a", "b", "c"],
            "image_id": ["i1", "i2", "i3", "i4"],
            "product_name": ["B", "A", "B", "C"],
            "category": ["Books", "Toys", "Books", "Toys"],
            "price": [2.0, 1.0, 2.0, 3.0],
        }
    )
    embeddings = np.array([[1, 0, 0], [0, 2, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    index = index_from_embeddings(embeddings, photos)
    assert index.catalogue["id"].to_list() == ["a", "b", "c"]
    assert index.listing(index.row("b")) == {"id": "b", "product_name": "B", "category": "Books", "price": 2.0}
    np.testing.assert_allclose(index.vectors[index.row("b")], np.array([1, 1, 0]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(index.vectors[index.row("a")], [0, 1, 0])
    np.testing.assert_array_equal(index.vectors[index.row("c")], [0, 0, 0])


def test_precision_at_k_counts_neighbours_of_the_same_category() -> None:
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    catalogue = pl.DataFrame(
        {"id": ["a", "b", "c", "d"], "product_name": list("abcd"), "category": ["X", "X", "Y", "Z"], "price": [1.0] * 4},
        schema=CATALOGUE_SCHEMA,
    )
    index = SearchIndex(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), catalogue)
    assert precision_at_k(index, ["a", "c", "unknown"], k=1) == pytest.approx(0.5)
    assert precision_at_k(index, ["a"], k=3) == pytest.approx(1 / 3)
    assert precision_at_k(index, ["unknown"]) is None


def test_vectors_and_catalogue_must_agree() -> None:
    index = random_index(4, 3, seed=0)
    with pytest.raises(FbmlError, match="3 vectors for 4 catalogue rows"):
        SearchIndex(index.vectors[:3], index.catalogue)
    with pytest.raises(FbmlError, match="float32"):
        SearchIndex(index.vectors.astype(np.float64), index.catalogue)


def combined_bundle() -> Bundle:
    """A bundle with a freshly initialised combined model whose embedding is 2 * EMBEDDING wide."""
    words = ("red", "bike")
    text = TextSettings(Vocabulary(("<pad>", "<unk>", *words)), WordVectors(words, np.ones((2, 4), dtype=np.float32)), 6)
    options = {
        "image": {"trainable_stages": 1, "embedding_dim": EMBEDDING},
        "text": {"embedding_dim": EMBEDDING, "channels": 4, "kernel_sizes": [2]},
    }
    module = build_model("combined", options, len(CATEGORIES), text)
    return Bundle(LabelCodec(CATEGORIES), None, text, {"combined": BundleModel("combined", module, options)})


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SearchIndex]:
    """A saved bundle with a combined model and a 12-product index, and that index."""
    index = attrs.evolve(random_index(12, 2 * EMBEDDING, seed=5), report={"precision_at_10": 0.5})
    path = tmp_path_factory.mktemp("bundle")
    save_bundle(attrs.evolve(combined_bundle(), index=index), path)
    return path, index


def edited_copy(saved: Path, target: Path, edit: Callable[[Path, dict[str, Any]], None]) -> Path:
    """A copy of the bundle at ``saved`` whose manifest ``edit`` changed (given the copy's folder)."""
    shutil.copytree(saved, target)
    manifest = json.loads((target / MANIFEST).read_text())
    edit(target, manifest)
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


def replace_file(folder: Path, entry: dict[str, str], content: bytes) -> None:
    """Overwrite a bundle file and its manifest checksum."""
    (folder / entry["file"]).write_bytes(content)
    entry["sha256"] = hashlib.sha256(content).hexdigest()


def test_index_round_trips_through_the_bundle(saved: tuple[Path, SearchIndex]) -> None:
    path, index = saved
    loaded = load_bundle(path).index
    assert loaded == index
    assert loaded.report == {"precision_at_10": 0.5}
    assert loaded.neighbours("p3", 4) == index.neighbours("p3", 4)


def test_a_bundle_without_an_index_loads_with_none(saved: tuple[Path, SearchIndex], tmp_path: Path) -> None:
    copy = edited_copy(saved[0], tmp_path / "b", lambda _folder, manifest: manifest.pop("index"))
    assert load_bundle(copy).index is None


def test_loading_refuses_an_index_of_another_width(saved: tuple[Path, SearchIndex], tmp_path: Path) -> None:
    def narrower(folder: Path, manifest: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.ones((12, 5), dtype=np.float32))
        replace_file(folder, manifest["index"]["vectors"], buffer.getvalue())

    with pytest.raises(FbmlError, match="5-dim vectors, the combined model embeds in 16"):
        load_bundle(edited_copy(saved[0], tmp_path / "b", narrower))


def test_loading_refuses_a_catalogue_of_another_length(saved: tuple[Path, SearchIndex], tmp_path: Path) -> None:
    def shorter(folder: Path, manifest: dict[str, Any]) -> None:
        entry = manifest["index"]["catalogue"]
        rows = json.loads((folder / entry["file"]).read_text())
        replace_file(folder, entry, json.dumps(rows[:2]).encode())

    with pytest.raises(FbmlError, match="12 vectors for 2 catalogue rows"):
        load_bundle(edited_copy(saved[0], tmp_path / "b", shorter))


def test_an_index_needs_a_combined_model(saved: tuple[Path, SearchIndex], tmp_path: Path) -> None:
    copy = edited_copy(saved[0], tmp_path / "b", lambda _folder, manifest: manifest["models"].pop("combined"))
    with pytest.raises(FbmlError, match="search index but no combined model"):
        load_bundle(copy)
