"""The search index: exact top-k equal to brute force, ties, self-exclusion, k bounds, unknown products,
vectors and catalogue agreeing, the JSON catalogue, and precision@k (``fbml.workflows.index``) on a hand example.

How listings become vectors is tested with ``fbml.workflows.index``; saving the index into a bundle with the bundle."""

from __future__ import annotations

import json

import attrs
import numpy as np
import polars as pl
import pytest
from fbml.bundle.search import (
    CATALOGUE_SCHEMA,
    MAX_K,
    Neighbour,
    SearchIndex,
    UnknownProductError,
    unit_rows,
)
from fbml.bundle.vector_index import Chunk
from fbml.errors import ContractError, FbmlError
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

CATEGORIES = ("Appliances", "Books", "Toys")


def catalogue_of(rows: int) -> pl.DataFrame:
    """``rows`` products p0, p1, ... cycling through CATEGORIES."""
    return pl.DataFrame(
        {
            "id": [f"p{row}" for row in range(rows)],
            "product_name": [f"product {row}" for row in range(rows)],
            "category": [CATEGORIES[row % len(CATEGORIES)] for row in range(rows)],
            "category_path": [f"{CATEGORIES[row % len(CATEGORIES)]} > kind {row % 2}" for row in range(rows)],
            "price": [float(row) for row in range(rows)],
            "photos": [[f"photo-{row}-{number}" for number in range(row % 3)] for row in range(rows)],
        },
        schema=CATALOGUE_SCHEMA,
    )


def random_index(rows: int, dim: int, seed: int) -> SearchIndex:
    """``rows`` random unit vectors beside ``catalogue_of(rows)``."""
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return SearchIndex(vectors, catalogue_of(rows))


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None) -> list[int]:
    """Rows by descending float64 cosine, ties by row, ``exclude`` left out."""
    scores = vectors.astype(np.float64) @ query.astype(np.float64)
    order = [int(row) for row in np.lexsort((np.arange(len(scores)), -scores)) if row != exclude]
    return order[:k]


def separated(scores: np.ndarray) -> bool:
    """No two scores within float32 rounding of each other (where the order is the arithmetic's choice)."""
    return bool(np.all(np.diff(np.sort(scores)) > 1e-4))


# --- search ------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 60), dim=st.integers(2, 12), k=st.integers(1, MAX_K), seed=st.integers(0, 2**16))
def test_search_equals_brute_force(rows: int, dim: int, k: int, seed: int) -> None:
    index = random_index(rows, dim, seed)
    query = np.random.default_rng(seed + 1).normal(size=dim).astype(np.float32)
    assume(separated(index.vectors.astype(np.float64) @ query))
    found, scores = index.search(query, k)
    assert found.shape == scores.shape == (1, min(k, rows))
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
    for neighbour in neighbours:
        assert neighbour.score == pytest.approx(float(index.vectors[neighbour.row] @ index.vectors[row]), abs=1e-6)


def test_ties_go_to_the_lower_row() -> None:
    index = random_index(6, 3, seed=2)
    tied = SearchIndex(np.repeat(index.vectors[:1], 6, axis=0), index.catalogue)
    assert tied.search(index.vectors[0], 4)[0][0].tolist() == [0, 1, 2, 3]
    assert [neighbour.row for neighbour in tied.neighbours("p2", 3)] == [0, 1, 3]
    # a zero query ties every row at 0
    assert [neighbour.row for neighbour in index.nearest(np.zeros(3, dtype=np.float32), 3)] == [0, 1, 2]


def test_batched_queries_exclude_their_own_rows() -> None:
    index = random_index(30, 5, seed=3)
    rows = np.array([0, 7, 29])
    found, scores = index.search(index.vectors[rows], 10, exclude=rows)
    assert found.shape == scores.shape == (3, 10)
    for query, row in enumerate(rows):
        assert row not in found[query]
        assert found[query].tolist() == brute_force(index.vectors, index.vectors[row], 10, exclude=int(row))
        single, _ = index.search(index.vectors[row], 10, exclude=[int(row)])
        assert single[0].tolist() == found[query].tolist()


def test_a_one_product_index_has_no_neighbours() -> None:
    index = random_index(1, 3, seed=0)
    assert index.neighbours("p0", 5) == []
    rows, scores = index.search(index.vectors, 5, exclude=[0])
    assert rows.shape == scores.shape == (1, 0)
    assert [neighbour.row for neighbour in index.nearest(index.vectors[0], 5)] == [0]


def test_nearest_normalises_the_query() -> None:
    index = random_index(20, 4, seed=1)
    query = np.array([3.0, -1.0, 0.5, 2.0], dtype=np.float32)
    nearest = index.nearest(query, 5)
    unit = query / np.linalg.norm(query)
    np.testing.assert_allclose([neighbour.score for neighbour in nearest], np.sort(index.vectors @ unit)[::-1][:5], rtol=1e-5)
    assert [neighbour.row for neighbour in nearest] == brute_force(index.vectors, unit, 5)
    assert nearest == index.nearest(10 * query, 5)  # the scale of the query does not matter
    assert all(isinstance(neighbour, Neighbour) and -1 <= neighbour.score <= 1 for neighbour in nearest)


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1])
def test_k_out_of_bounds_is_refused(k: int) -> None:
    index = random_index(5, 3, seed=0)
    with pytest.raises(FbmlError, match=f"k must be between 1 and {MAX_K}, got {k}"):
        index.search(np.ones(3, dtype=np.float32), k)
    with pytest.raises(FbmlError, match="k must be between"):
        index.neighbours("p1", k)


def test_k_at_the_bounds_is_accepted() -> None:
    index = random_index(5, 3, seed=0)
    assert len(index.nearest(np.ones(3, dtype=np.float32), 1)) == 1
    assert len(index.nearest(np.ones(3, dtype=np.float32), MAX_K)) == 5  # every row, however large k


def test_unknown_product_is_an_error() -> None:
    index = random_index(5, 3, seed=0)
    with pytest.raises(UnknownProductError, match="no product 'nope' in the search index"):
        index.neighbours("nope", 3)
    with pytest.raises(UnknownProductError, match="no product 'p5'"):
        index.row("p5")
    assert issubclass(UnknownProductError, FbmlError)


def test_rows_listings_and_membership() -> None:
    index = random_index(5, 3, seed=0)
    assert len(index) == 5 and index.dim == 3
    assert "p4" in index and "p5" not in index and 4 not in index
    assert index.row("p3") == 3
    assert index.listing(index.row("p4")) == {"id": "p4", "product_name": "product 4", "category": "Books",
                                              "category_path": "Books > kind 0", "price": 4.0,
                                              "photos": ["photo-4-0"]}


# --- vectors and catalogue ----------------------------------------------------------------------------


def test_vectors_and_catalogue_must_agree() -> None:
    index = random_index(4, 3, seed=0)
    with pytest.raises(FbmlError, match="the index has 3 vectors for 4 catalogue rows"):
        SearchIndex(index.vectors[:3], index.catalogue)
    with pytest.raises(FbmlError, match=r"index vectors must be a float32 \(N, D\) array with D >= 1, got float64"):
        SearchIndex(index.vectors.astype(np.float64), index.catalogue)
    with pytest.raises(FbmlError, match=r"float32 \(N, D\) array with D >= 1, got float32 \(12,\)"):
        SearchIndex(index.vectors.reshape(-1), index.catalogue)
    with pytest.raises(FbmlError, match=r"the index's exact search holds 3 x 3 vectors, not the 4 x 3 of the index"):
        SearchIndex(index.vectors, index.catalogue, engine=random_index(3, 3, seed=1).engine)


def test_the_search_follows_its_engine() -> None:
    index = random_index(300, 16, seed=2)
    approximate = index.with_method("hnsw")
    assert (index.engine.method, approximate.engine.method) == ("exact", "hnsw")
    rows, _ = index.search(index.vectors[:50], 10, exclude=list(range(50)))
    found, _ = approximate.search(index.vectors[:50], 10, exclude=list(range(50)))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, found, strict=True)])
    assert recall >= 0.95
    assert not any(query in found[query] for query in range(50))  # each query's own row left out
    with pytest.raises(FbmlError, match="k must be between 1 and"):
        approximate.search(index.vectors[:1], 0)


def test_the_catalogue_needs_its_columns_and_unique_ids() -> None:
    index = random_index(4, 3, seed=0)
    with pytest.raises(ContractError, match="Catalogue: column 'price' fails present"):
        SearchIndex(index.vectors, index.catalogue.drop("price"))
    with pytest.raises(ContractError, match="Catalogue: column 'price' fails dtype"):
        SearchIndex(index.vectors, index.catalogue.with_columns(pl.col("price").cast(pl.Int64)))
    duplicated = index.catalogue.with_columns(pl.Series("id", ["a", "b", "a", "c"]))
    with pytest.raises(ContractError, match="Catalogue: column 'id' fails unique"):
        SearchIndex(index.vectors, duplicated)
    missing = index.catalogue.with_columns(pl.Series("id", ["a", None, "b", "c"], dtype=pl.String))
    with pytest.raises(ContractError, match="Catalogue: column 'id' fails not_null"):
        SearchIndex(index.vectors, missing)


def test_indexes_compare_by_their_contents() -> None:
    index = random_index(4, 3, seed=0)
    assert index == SearchIndex(index.vectors.copy(), index.catalogue.clone())
    assert index != SearchIndex(-index.vectors, index.catalogue)
    assert index != SearchIndex(index.vectors, index.catalogue.with_columns(pl.col("price") + 1))
    assert index != attrs.evolve(index, report={"precision_at_10": 0.5})


def test_catalogue_json_round_trips() -> None:
    index = attrs.evolve(random_index(5, 3, seed=4), report={"precision_at_10": 0.5})
    rows = json.loads(index.catalogue_json())
    assert rows[2] == {"id": "p2", "product_name": "product 2", "category": "Toys", "category_path": "Toys > kind 0",
                       "price": 2.0, "photos": ["photo-2-0", "photo-2-1"]}
    loaded = SearchIndex.from_json(index.vectors, rows, index.report)
    assert loaded == index
    assert loaded.report == {"precision_at_10": 0.5}
    assert loaded.neighbours("p3", 2) == index.neighbours("p3", 2)


def test_catalogue_chunks_split_its_first_rows_and_a_removal_keeps_those_before_it() -> None:
    index = random_index(5, 3, seed=4)
    first, second = Chunk(0, 2, "a" * 64), Chunk(2, 4, "b" * 64)
    chunked = attrs.evolve(index, catalogue_chunks=(first, second))
    assert chunked == index and chunked.with_method("hnsw").catalogue_chunks == (first, second)
    assert chunked.without(["p4"]).catalogue_chunks == (first, second)
    assert chunked.without(["p3", "p4"]).catalogue_chunks == (first,)
    assert chunked.without(["p1"]).catalogue_chunks == ()
    assert chunked.with_listings(random_index(1, 3, seed=5).vectors, catalogue_of(6)[5:]).catalogue_chunks == (first, second)
    for chunks in [(Chunk(0, 6, "a" * 64),), (Chunk(1, 2, "a" * 64),), (first, Chunk(3, 4, "b" * 64)), (Chunk(0, 0, "a" * 64),)]:
        with pytest.raises(FbmlError, match=r"catalogue chunks must split the first of the catalogue's 5 rows in order"):
            attrs.evolve(index, catalogue_chunks=chunks)


ROW = {"id": "p0", "product_name": "x", "category": "Books", "category_path": "Books", "price": 1.0, "photos": ["a"]}


@pytest.mark.parametrize(
    ("rows", "vectors", "message"),
    [
        ({"id": "p0"}, 1, "an index catalogue is a list of rows with keys"),
        (["p0"], 1, "an index catalogue is a list of rows with keys"),
        ([{key: ROW[key] for key in ("id", "product_name", "category")}], 1, "a list of rows with keys"),
        ([ROW | {"extra": 1}], 1, "a list of rows with keys"),
        ([ROW | {"price": "cheap"}], 1, "bad index catalogue"),
        ([ROW, ROW], 2, "column 'id' fails unique"),
        ([ROW | {"photos": "a"}], 1, "row 0: photos must be a list of at most 100 photo ids"),
        ([ROW | {"photos": ["a"] * 101}], 1, "row 0: photos must be a list of at most 100 photo ids"),
        ([ROW | {"photos": [1]}], 1, "row 0: its ids, names, paths and photo ids are strings of at most 1000"),
        ([ROW | {"photos": ["a" * 1001]}], 1, "row 0: its ids, names, paths and photo ids are strings"),
        ([ROW | {"category_path": "x" * 1001}], 1, "row 0: its ids, names, paths and photo ids are strings"),
        ([ROW | {"photos": ["a\n"]}], 1, "column 'photos' fails printable"),
        ([ROW | {"category_path": "Toys > Books"}], 1, "column 'category_path' fails starts_with_category"),
        ([ROW, ROW | {"id": "p1"}, ROW | {"id": "p2"}], 2, "the index has 2 vectors for 3 catalogue rows"),
    ],
)
def test_from_json_refuses_a_catalogue_that_does_not_fit(rows: object, vectors: int, message: str) -> None:
    with pytest.raises(FbmlError, match=message):
        SearchIndex.from_json(unit_rows(np.ones((vectors, 3))), rows, {})


texts_or_null = st.none() | st.text(st.characters(codec="utf-8"), max_size=4) | st.just("é" * 1000)
catalogue_values = st.fixed_dictionaries({
    "id": texts_or_null, "product_name": texts_or_null, "category": texts_or_null, "category_path": texts_or_null,
    "price": st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(),
    "photos": st.lists(texts_or_null, max_size=3),
})  # fmt: skip
out_of_place = st.sampled_from([("price", "1"), ("price", "cheap"), ("id", 3), ("category_path", "x" * 1001), ("photos", "a"),
                                ("photos", None), ("photos", ["a"] * 101), ("photos", [1]), ("photos", ["\ud800"])])  # fmt: skip


@st.composite
def catalogue_rows(draw: st.DrawFn) -> list[dict[str, object]]:
    """Rows of values of their columns' types (or null), at most one of them then given a value out of place."""
    rows = draw(st.lists(catalogue_values, max_size=5))
    if rows and draw(st.booleans()):
        name, value = draw(out_of_place)
        rows[draw(st.integers(0, len(rows) - 1))][name] = value
    return rows


@settings(max_examples=300)
@given(rows=catalogue_rows())
def test_a_catalogue_read_column_by_column_is_the_one_read_row_by_row(rows: list[dict[str, object]]) -> None:
    """``from_json`` builds a catalogue whose values already have their columns' types and whose rows are within bounds
    a column at a time (``_typed_columns``), any other row by row as before: the same frame as row by row, and never one
    that row by row refuses."""
    from fbml.bundle.search import _check_row_bounds, _typed_columns, _within_bounds

    try:
        for number, row in enumerate(rows):
            _check_row_bounds(number, row)
        expected = pl.DataFrame(rows, schema=CATALOGUE_SCHEMA)
    except (FbmlError, TypeError, ValueError, pl.exceptions.PolarsError):
        expected = None
    catalogue = _typed_columns(rows)
    if catalogue is not None and _within_bounds(catalogue):
        event("column by column")
        assert expected is not None and catalogue.equals(expected) and catalogue.schema == expected.schema
    else:
        event("row by row: " + ("refused" if expected is None else "read"))


def test_unit_rows() -> None:
    vectors = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    unit = unit_rows(vectors)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    np.testing.assert_array_equal(vectors, [[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])  # the input is left alone


# --- alikeness: precision@k at three depths, and ties ---------------------------------------------------------


def test_alikeness_counts_neighbours_of_the_same_category_subcategory_and_path() -> None:
    from fbml.bundle.listings import alikeness

    vectors = unit_rows(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32))
    paths = np.array(["X / a / 1", "X / a / 2", "Y / b", "X / c"])
    # a's nearest other is b (same category and subcategory, another path); c's is d (another category)
    found = alikeness(vectors, paths, np.array([0, 2]), k=1)
    assert (found.category, found.subcategory, found.path) == (0.5, 0.5, 0.0)
    # a's three others: b (X / a), d (X / c), c (Y)
    found = alikeness(vectors, paths, np.array([0]), k=3)
    assert (found.category, found.subcategory) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert alikeness(vectors, paths, np.array([0]), k=10).category == pytest.approx(2 / 3)  # k beyond: every other row
    assert alikeness(vectors, paths, np.array([], dtype=np.int64), k=3).category == 0.0
    assert alikeness(vectors[:1], paths[:1], np.array([0]), k=3).category == 0.0
    # candidates: only these rows may be neighbours
    assert alikeness(vectors, paths, np.array([0]), np.array([0, 2]), k=1).category == 0.0
    # the index's own engine answers the same as the exact search here
    catalogue = pl.DataFrame({"id": list("abcd"), "product_name": list("abcd"), "category": ["X", "X", "Y", "X"],
                              "category_path": list(paths), "price": [1.0] * 4, "photos": [[]] * 4}, schema=CATALOGUE_SCHEMA)
    index = SearchIndex(vectors, catalogue)
    assert alikeness(vectors, paths, np.arange(4), index=index, k=2) == alikeness(vectors, paths, np.arange(4), k=2)


def test_alikeness_counts_queries_whose_neighbours_tie() -> None:
    from fbml.bundle.listings import alikeness

    vectors = unit_rows(np.array([[1, 0], [1, 0], [1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32))
    paths = np.array(["X / a"] * 5)
    found = alikeness(vectors, paths, np.arange(5), k=2)
    # rows 0-2: their two nearest others are copies (tied); row 3's two differ; row 4's nearest are 3 then a copy
    assert found.tied == pytest.approx(3 / 5)
