"""Vector indexes: exact top-k equal to a brute-force sort (ties by row, exclusion, k past the rows),
HNSW recall against it, ``auto``'s switch, saving and loading (and refusing what does not fit), and
the checks on queries, k and exclusion."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import pytest
from fbml.bundle.vector_index import (
    EXACT_MAX_FLOATS,
    PATCH_SHARE,
    ExactIndex,
    HnswIndex,
    load_vector_index,
    vector_index,
)
from fbml.errors import FbmlError
from hypothesis import given, settings
from hypothesis import strategies as st

DIM = 32


def clustered(rows: int, dim: int = DIM, *, clusters: int = 40, spread: float = 1.0, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` unit centres, noise of norm ``spread``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, clusters, rows)] + rng.standard_normal((rows, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int, exclude: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every row sorted by (score descending, row ascending), the excluded row dropped, first k."""
    scores = np.atleast_2d(queries).astype(np.float32) @ vectors.T
    rows, tops = [], []
    for q, row_scores in enumerate(scores):
        order = sorted(range(len(vectors)), key=lambda row: (-row_scores[row], row))
        order = [row for row in order if exclude is None or row != exclude[q]][:k]
        rows.append(order)
        tops.append(row_scores[order])
    return np.array(rows, dtype=np.int64).reshape(len(scores), -1), np.array(tops, dtype=np.float32).reshape(len(scores), -1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(4000)


@pytest.fixture(scope="module")
def hnsw(vectors: np.ndarray) -> HnswIndex:
    index = vector_index(vectors, method="hnsw")
    assert isinstance(index, HnswIndex)
    return index


# --- exact --------------------------------------------------------------------------------------


def test_exact_equals_brute_force(vectors: np.ndarray) -> None:
    index, queries = ExactIndex(vectors[:500]), vectors[500:530]
    for k in (1, 7, 499, 500, 900):
        assert_same(index.search(queries, k), brute_force(vectors[:500], queries, k))


def test_exact_breaks_ties_by_row_even_across_the_cut() -> None:
    """Rows 2..299 score alike; k=5 keeps the lowest of them, as a full sort does (a bare
    ``argpartition`` keeps rows 282.. here)."""
    vectors = np.tile(np.array([0.6, 0.8], dtype=np.float32), (300, 1))
    vectors[:2] = [1.0, 0.0]
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    rows, scores = ExactIndex(vectors).search(query, 5)
    assert rows.tolist() == [[0, 1, 2, 3, 4]]
    assert scores.tolist() == [[1.0, 1.0, *[np.float32(0.6)] * 3]]
    assert ExactIndex(vectors).search(query, 5, exclude=[1])[0].tolist() == [[0, 2, 3, 4, 5]]
    assert_same(ExactIndex(vectors).search(query, 5), brute_force(vectors, query, 5))


def test_exact_excludes_a_row_per_query(vectors: np.ndarray) -> None:
    index, queries = ExactIndex(vectors[:300]), vectors[:20]
    exclude = list(range(20))
    rows, _ = index.search(queries, 10, exclude=exclude)
    assert not (rows == np.arange(20)[:, None]).any()
    assert_same(index.search(queries, 10, exclude=exclude), brute_force(vectors[:300], queries, 10, exclude))


def test_k_past_the_rows_gives_the_rows_left(vectors: np.ndarray, hnsw: HnswIndex) -> None:
    small = ExactIndex(vectors[:6])
    assert small.search(vectors[:2], 50)[0].shape == (2, 6)
    assert small.search(vectors[:2], 50, exclude=[0, 1])[0].shape == (2, 5)
    assert ExactIndex(vectors[:1]).search(vectors[:1], 3, exclude=[0])[0].shape == (1, 0)
    small_hnsw = vector_index(vectors[:6], method="hnsw")
    assert_same(small_hnsw.search(vectors[:2], 50, exclude=[0, 1]), small.search(vectors[:2], 50, exclude=[0, 1]), exact_scores=False)


@settings(max_examples=150)
@given(
    rows=st.integers(1, 25),
    dim=st.integers(1, 4),
    k=st.integers(1, 30),
    queries=st.integers(1, 4),
    excluding=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_exact_matches_brute_force_on_small_inputs(rows: int, dim: int, k: int, queries: int, excluding: bool, seed: int) -> None:
    """Small integer-valued vectors (many exact ties), with and without exclusion."""
    rng = np.random.default_rng(seed)
    vectors = rng.integers(-2, 3, (rows, dim)).astype(np.float32)
    batch = rng.integers(-2, 3, (queries, dim)).astype(np.float32)
    exclude = rng.integers(0, rows, queries).tolist() if excluding else None
    assert_same(ExactIndex(vectors).search(batch, k, exclude=exclude), brute_force(vectors, batch, k, exclude))


# --- hnsw ---------------------------------------------------------------------------------------


def test_hnsw_recall_at_10_against_exact(vectors: np.ndarray, hnsw: HnswIndex) -> None:
    queries = clustered(200, seed=1)
    truth, truth_scores = ExactIndex(vectors).search(queries, 10)
    rows, scores = hnsw.search(queries, 10)
    assert recall(rows, truth) >= 0.95
    assert np.allclose(scores[:, 0], truth_scores[:, 0], atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_hnsw_excludes_a_row_per_query(vectors: np.ndarray, hnsw: HnswIndex) -> None:
    rows, _ = hnsw.search(vectors[:50], 10, exclude=list(range(50)))
    assert rows.shape == (50, 10)
    assert not (rows == np.arange(50)[:, None]).any()
    assert all(len(set(answer)) == 10 for answer in rows.tolist())
    truth, _ = ExactIndex(vectors).search(vectors[:50], 10, exclude=list(range(50)))
    assert recall(rows, truth) >= 0.95


def test_hnsw_is_deterministic_for_a_seed(vectors: np.ndarray, hnsw: HnswIndex) -> None:
    again = vector_index(vectors, method="hnsw", seed=0)
    assert again.to_bytes() == hnsw.to_bytes()
    assert vector_index(vectors, method="hnsw", seed=1).to_bytes() != hnsw.to_bytes()


def test_hnsw_scores_exactly_when_the_graph_walk_comes_up_short(vectors: np.ndarray) -> None:
    """A graph with no links reaches only its entry point: those queries are answered exactly."""
    import faiss

    index = vector_index(vectors[:500], method="hnsw")
    assert isinstance(index, HnswIndex)
    links = faiss.vector_to_array(index.index.hnsw.neighbors)
    faiss.copy_array_to_vector(np.full_like(links, -1), index.index.hnsw.neighbors)
    assert_same(index.search(vectors[:5], 10, exclude=[0, 1, 2, 3, 4]), ExactIndex(vectors[:500]).search(vectors[:5], 10, exclude=[0, 1, 2, 3, 4]), exact_scores=False)


# --- auto ---------------------------------------------------------------------------------------


def test_auto_is_exact_up_to_the_threshold_and_hnsw_past_it(vectors: np.ndarray) -> None:
    small = vectors[:1000]
    assert vector_index(small, exact_max_floats=small.size).method == "exact"
    assert vector_index(small, exact_max_floats=small.size - 1).method == "hnsw"
    assert vector_index(small).method == "exact"  # 32k floats, far under EXACT_MAX_FLOATS
    assert EXACT_MAX_FLOATS >= 10_000 * 256
    assert vector_index(small, method="exact", exact_max_floats=0).method == "exact"
    assert vector_index(small[:10], method="hnsw").method == "hnsw"


def test_building_refuses_bad_input(vectors: np.ndarray) -> None:
    with pytest.raises(FbmlError, match="float32"):
        vector_index(vectors.astype(np.float64))
    with pytest.raises(FbmlError, match="float32"):
        vector_index(vectors[0])
    with pytest.raises(FbmlError, match="method"):
        vector_index(vectors, method="annoy")  # type: ignore[arg-type]
    with pytest.raises(FbmlError, match="m must be"):
        vector_index(vectors[:100], method="hnsw", m=0)
    with pytest.raises(FbmlError, match="seed"):
        vector_index(vectors[:100], method="hnsw", seed=-1)


def test_import_does_not_load_faiss() -> None:
    code = "import sys, fbml, fbml.bundle.vector_index; assert 'faiss' not in sys.modules, 'faiss imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- saving and loading -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_round_trip_gives_identical_answers(vectors: np.ndarray, hnsw: HnswIndex, method: str) -> None:
    index = hnsw if method == "hnsw" else ExactIndex(vectors)
    loaded = load_vector_index(index.parameters(), index.to_bytes())
    assert type(loaded) is type(index)
    assert loaded.parameters() == index.parameters()
    assert (len(loaded), loaded.dim, loaded.method) == (len(vectors), DIM, method)
    queries = clustered(50, seed=2)
    for got, want in zip(loaded.search(queries, 10, exclude=list(range(50))), index.search(queries, 10, exclude=list(range(50))), strict=True):
        assert np.array_equal(got, want)


def test_parameters_describe_the_index(hnsw: HnswIndex) -> None:
    parameters = hnsw.parameters()
    assert {key: parameters[key] for key in ("method", "metric", "count", "dim", "library", "m")} == {
        "method": "hnsw", "metric": "inner_product", "count": 4000, "dim": DIM, "library": "faiss-cpu", "m": hnsw.m,
    }
    assert {"ef_construction", "ef_search", "seed", "library_version", "format"} <= parameters.keys()


@pytest.mark.parametrize("method", ["exact", "hnsw"])
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("count", 3999, "count=3999"),
        ("dim", DIM + 1, "dim=33"),
        ("count", "4000", "count='4000'"),
        ("metric", "l2", "metric='l2'"),
        ("format", 2, "format=2"),
        ("method", "annoy", "method"),
    ],
)
def test_loading_refuses_parameters_that_do_not_fit(vectors: np.ndarray, hnsw: HnswIndex, method: str, key: str, value: object, message: str) -> None:
    index = hnsw if method == "hnsw" else ExactIndex(vectors)
    parameters = {**index.parameters(), key: value}
    with pytest.raises(FbmlError, match=message):
        load_vector_index(parameters, index.to_bytes())


def test_loading_refuses_the_other_method_and_hnsw_settings(vectors: np.ndarray, hnsw: HnswIndex) -> None:
    exact = ExactIndex(vectors)
    with pytest.raises(FbmlError, match="do not load in faiss"):
        load_vector_index({**exact.parameters(), "method": "hnsw", "m": 32, "ef_construction": 64, "ef_search": 64, "seed": 0}, exact.to_bytes())
    with pytest.raises(FbmlError, match="not a plain .npy"):
        load_vector_index({**hnsw.parameters(), "method": "exact"}, hnsw.to_bytes())
    with pytest.raises(FbmlError, match="m="):
        load_vector_index({**hnsw.parameters(), "m": hnsw.m + 1}, hnsw.to_bytes())
    with pytest.raises(FbmlError, match="ef_search"):
        load_vector_index({**hnsw.parameters(), "ef_search": 0}, hnsw.to_bytes())
    with pytest.raises(FbmlError, match="JSON object"):
        load_vector_index([hnsw.parameters()], hnsw.to_bytes())


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_loading_refuses_truncated_bytes(vectors: np.ndarray, hnsw: HnswIndex, method: str) -> None:
    index = hnsw if method == "hnsw" else ExactIndex(vectors)
    content = index.to_bytes()
    for cut in (0, 10, 100, len(content) // 2, len(content) - 1):
        with pytest.raises(FbmlError, match="index"):
            load_vector_index(index.parameters(), content[:cut])


def tampered(vectors: np.ndarray, change: Callable[[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]) -> HnswIndex:
    """An HNSW index whose graph ``change(hnsw, links, levels, offsets, cumulative)`` edits (links in place)."""
    import faiss

    index = vector_index(vectors, method="hnsw", m=4)
    assert isinstance(index, HnswIndex)
    hnsw = index.index.hnsw
    links = faiss.vector_to_array(hnsw.neighbors)
    arrays = [faiss.vector_to_array(vector).astype(np.int64) for vector in (hnsw.levels, hnsw.offsets, hnsw.cum_nneighbor_per_level)]
    change(hnsw, links, *arrays)
    faiss.copy_array_to_vector(links, hnsw.neighbors)
    return index


def test_loading_refuses_a_graph_linking_rows_it_lacks(vectors: np.ndarray) -> None:
    """faiss (>= 1.15) checks link ranges itself as it reads."""

    def out_of_range(_hnsw: Any, links: np.ndarray, *_: np.ndarray) -> None:
        links[7] = 10_000

    index = tampered(vectors[:300], out_of_range)
    with pytest.raises(FbmlError, match="do not load in faiss.*out of range"):
        load_vector_index(index.parameters(), index.to_bytes())


def test_loading_refuses_a_graph_linking_a_row_above_its_layers(vectors: np.ndarray) -> None:
    """A layer-1 link to a row on layer 0 only would make the search read past that row's links."""

    def up_link(_hnsw: Any, links: np.ndarray, levels: np.ndarray, offsets: np.ndarray, cumulative: np.ndarray) -> None:
        node, ground = int(np.flatnonzero(levels > 1)[0]), int(np.flatnonzero(levels == 1)[0])
        links[offsets[node] + cumulative[1]] = ground

    index = tampered(vectors[:300], up_link)
    with pytest.raises(FbmlError, match="links a row at a layer it is not on"):
        load_vector_index(index.parameters(), index.to_bytes())


def test_loading_refuses_an_entry_point_below_the_top_layer(vectors: np.ndarray) -> None:
    def low_entry(hnsw: Any, _links: np.ndarray, levels: np.ndarray, *_: np.ndarray) -> None:
        hnsw.entry_point = int(np.flatnonzero(levels == 1)[0])

    index = tampered(vectors[:300], low_entry)
    with pytest.raises(FbmlError, match="entry point"):
        load_vector_index(index.parameters(), index.to_bytes())


def test_empty_indexes_round_trip() -> None:
    empty = np.zeros((0, 4), dtype=np.float32)
    for method in ("exact", "hnsw"):
        index = vector_index(empty, method=method)  # type: ignore[arg-type]
        loaded = load_vector_index(index.parameters(), index.to_bytes())
        rows, scores = loaded.search(np.ones((3, 4), dtype=np.float32), 5)
        assert rows.shape == scores.shape == (3, 0)


# --- queries, k, exclusion ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_shapes_and_dtypes(vectors: np.ndarray, hnsw: HnswIndex, method: str) -> None:
    index = hnsw if method == "hnsw" else ExactIndex(vectors)
    for queries, shape in ((vectors[:7], (7, 10)), (vectors[3], (1, 10)), (vectors[:0], (0, 10)), (vectors[:3].astype(np.float64), (3, 10))):
        rows, scores = index.search(queries, 10)
        assert (rows.shape, scores.shape, rows.dtype, scores.dtype) == (shape, shape, np.int64, np.float32)
    assert index.search(vectors[3], 1)[0].tolist() == [[3]]


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_search_refuses_bad_k_queries_and_exclusion(vectors: np.ndarray, hnsw: HnswIndex, method: str) -> None:
    index = hnsw if method == "hnsw" else ExactIndex(vectors)
    for k in (0, -1):
        with pytest.raises(FbmlError, match="k must be"):
            index.search(vectors[:2], k)
    with pytest.raises(FbmlError, match="k must be"):
        index.search(vectors[:2], 2.5)  # type: ignore[arg-type]
    with pytest.raises(FbmlError, match="32 wide"):
        index.search(vectors[:2, :16], 5)
    with pytest.raises(FbmlError, match="32 wide"):
        index.search(vectors[:8].reshape(2, 4, DIM), 5)
    with pytest.raises(FbmlError, match="exclude gives 1 rows for 2 queries"):
        index.search(vectors[:2], 5, exclude=[0])
    for row in (-1, len(vectors)):
        with pytest.raises(FbmlError, match="exclude rows must be between"):
            index.search(vectors[:1], 5, exclude=[row])


def assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray], *, exact_scores: bool = True) -> None:
    assert got[0].dtype == np.int64 and got[1].dtype == np.float32
    assert got[0].shape == got[1].shape == want[0].shape
    assert np.array_equal(got[0], want[0])
    if exact_scores:
        assert np.array_equal(got[1], want[1])
    else:
        assert np.allclose(got[1], want[1], atol=1e-5)


def test_a_graph_saved_apart_from_its_vector_chunks_loads_as_it_was(vectors: np.ndarray, hnsw: HnswIndex) -> None:
    """Additions are chunks of their own (merged from the end while a chunk is under twice the rows after it); each
    chunk's SHA-256 is its file's, and the graph without its vectors loads back beside the chunks."""
    grown = hnsw.with_added(vectors[:1000]).with_added(vectors[1000:1400])
    assert [(chunk.start, chunk.stop) for chunk in grown.chunks] == [(0, 4000), (4000, 5000), (5000, 5400)]
    assert [(chunk.start, chunk.stop) for chunk in grown.with_added(vectors[:300]).chunks] == [(0, 4000), (4000, 5700)]
    assert [hashlib.sha256(grown.chunk_bytes(number)).hexdigest() for number in range(3)] == [chunk.sha256 for chunk in grown.chunks]
    assert len(grown.graph_bytes()) < len(grown.to_bytes()) - 5400 * DIM * 4
    chunks = [(np.load(io.BytesIO(grown.chunk_bytes(number))), chunk.sha256) for number, chunk in enumerate(grown.chunks)]
    loaded = load_vector_index(grown.parameters(), grown.graph_bytes(), None, chunks)
    assert isinstance(loaded, HnswIndex) and loaded.chunks == grown.chunks
    queries = clustered(50, seed=2)
    assert np.array_equal(loaded.search(queries, 10)[0], grown.search(queries, 10)[0])
    with pytest.raises(FbmlError, match="hold a graph without its vectors"):
        load_vector_index(grown.parameters(), grown.graph_bytes())
    with pytest.raises(FbmlError, match="hold a graph and its vectors"):
        load_vector_index(grown.parameters(), grown.to_bytes(), None, chunks)
    with pytest.raises(FbmlError, match="chunks hold 5000 vectors, the graph has 5400 nodes"):
        load_vector_index(grown.parameters(), grown.graph_bytes(), None, chunks[:2])
    with pytest.raises(FbmlError, match=r"chunks must split the graph's 5400 nodes in order, got \[4000, 5000\]"):
        attrs.evolve(grown, chunks=grown.chunks[:2])
    with pytest.raises(FbmlError, match="exact index has no removed rows, vector chunks nor graph patches"):
        load_vector_index(ExactIndex(vectors).parameters(), ExactIndex(vectors).to_bytes(), None, chunks)


def test_adding_links_the_rows_as_adding_to_a_clone_of_the_graph_would(vectors: np.ndarray, hnsw: HnswIndex) -> None:
    """``with_added`` copies the graph into a storage sized for the new rows (not ``faiss.clone_index``): the same
    links, levels, entry point and vectors as adding them to a clone, and the index added to unchanged."""
    import faiss

    before = faiss.vector_to_array(hnsw.index.hnsw.neighbors).copy(), hnsw.graph_vectors().copy()
    grown = hnsw.with_added(vectors[:700]).with_added(vectors[700:701])
    clone = faiss.clone_index(hnsw.index)
    for part, first in ((vectors[:700], 4000), (vectors[700:701], 4700)):
        clone.hnsw.efConstruction = hnsw.ef_construction
        clone.hnsw.rng = faiss.RandomGenerator(hnsw.seed + first)
        clone.add(part)
    for field in ("neighbors", "levels", "offsets"):
        assert np.array_equal(faiss.vector_to_array(getattr(grown.index.hnsw, field)), faiss.vector_to_array(getattr(clone.hnsw, field)))
    assert (grown.index.hnsw.entry_point, grown.index.hnsw.max_level) == (clone.hnsw.entry_point, clone.hnsw.max_level)
    assert np.array_equal(grown.graph_vectors(), faiss.rev_swig_ptr(faiss.downcast_index(clone.storage).get_xb(), 4701 * DIM).reshape(4701, DIM))
    assert grown.graph_bytes() == _graph_only(clone)
    assert np.array_equal(faiss.vector_to_array(hnsw.index.hnsw.neighbors), before[0]) and np.array_equal(hnsw.graph_vectors(), before[1])
    assert int(hnsw.index.ntotal) == len(hnsw) == 4000


def _graph_only(index: Any) -> bytes:
    import faiss

    writer = faiss.VectorIOWriter()
    faiss.write_index(index, writer, faiss.IO_FLAG_SKIP_STORAGE)
    return faiss.vector_to_array(writer.data).tobytes()


def saved_chunks(index: HnswIndex) -> list[tuple[np.ndarray, str]]:
    return [(np.load(io.BytesIO(index.chunk_bytes(number))), chunk.sha256) for number, chunk in enumerate(index.chunks)]


def test_additions_to_a_loaded_graph_are_patches_that_load_back_as_the_same_graph(vectors: np.ndarray, hnsw: HnswIndex) -> None:
    """A graph read from its ``graph_bytes`` knows their SHA-256; each addition to it is a patch of the links it
    changed, and the graph read with its patches is the graph added to, byte for byte, until the nodes added pass
    ``PATCH_SHARE`` of the graph's: then it is saved whole."""
    loaded = load_vector_index(hnsw.parameters(), hnsw.graph_bytes(), None, saved_chunks(hnsw))
    assert isinstance(loaded, HnswIndex) and loaded.graph_sha256 == hashlib.sha256(hnsw.graph_bytes()).hexdigest() and loaded.patches == ()
    assert hnsw.graph_sha256 is None and hnsw.with_added(vectors[:10]).patches == ()  # built, not read: nothing to patch
    grown = loaded.with_added(vectors[:300]).with_added(vectors[300:301]).without(np.array([5, 4100]))
    assert isinstance(grown, HnswIndex) and [(patch.start, patch.stop) for patch in grown.patches] == [(4000, 4300), (4300, 4301)]
    assert sum(len(patch.content or b"") for patch in grown.patches) < len(grown.graph_bytes()) / 4  # 7% of the nodes
    patches = [(patch.content or b"", patch.sha256) for patch in grown.patches]
    again = load_vector_index(grown.parameters(), hnsw.graph_bytes(), grown.removed_bytes(), saved_chunks(grown), patches)
    assert isinstance(again, HnswIndex) and again.graph_bytes() == grown.graph_bytes() and again.patches == grown.patches
    queries = clustered(50, seed=2)
    assert_same(again.search(queries, 10), grown.search(queries, 10))
    for wrong in [{"graph_sha256": None}, {"patches": grown.patches[:1]}, {"patches": grown.patches[::-1]}]:
        with pytest.raises(FbmlError, match=r"patches must follow a saved graph one after the other up to its 4301 nodes"):
            attrs.evolve(grown, **wrong)
    whole = loaded.with_added(vectors[: int(PATCH_SHARE * 4000) + 1])
    assert whole.graph_sha256 is None and whole.patches == ()
    assert loaded.with_added(vectors[:0]) is loaded


def test_loading_refuses_patches_that_do_not_fit_their_graph(vectors: np.ndarray, hnsw: HnswIndex) -> None:
    loaded = load_vector_index(hnsw.parameters(), hnsw.graph_bytes(), None, saved_chunks(hnsw))
    assert isinstance(loaded, HnswIndex)
    grown = loaded.with_added(vectors[:300]).with_added(vectors[300:400])
    first, second = (np.load(io.BytesIO(patch.content or b"")) for patch in grown.patches)
    added, changed = int(first[1]), int(first[2])

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    def load(*arrays: np.ndarray) -> None:
        load_vector_index(grown.parameters(), hnsw.graph_bytes(), None, saved_chunks(grown), [(npy(array), "0" * 64) for array in arrays])

    def changed_at(index: int, value: int) -> np.ndarray:
        array = first.copy()
        array[index] = value
        return array

    links = 5 + added + 2 * changed
    for arrays, message in [
        ((second, first), r"patch 0 does not follow the graph's 4000 nodes"),
        ((first[:-1], second), r"patch 0 holds \d+ links where its nodes' levels make \d+"),
        ((first[:3], second), r"patch 0 does not follow the graph's 4000 nodes"),
        ((first.astype(np.float64), second), r"patch 0: .*int64"),
        ((changed_at(5, 0), second), r"patch 0 gives levels outside the graph's 1 to \d+"),
        ((changed_at(5 + added, -1), second), r"patch 0 changes links the graph does not hold"),
        ((changed_at(5 + added + changed - 1, 10**9), second), r"patch 0 changes links the graph does not hold"),
        ((changed_at(links, 4400), second), r"patch 0 links nodes outside the graph's 4300"),
        ((changed_at(5 + added + changed, -2), second), r"patch 0 links nodes outside the graph's 4300"),
        ((changed_at(3, 4300), second), r"patch 0 links nodes outside the graph's 4300"),
        ((first, np.concatenate([second[:3], [4000 + int(np.argmin(first[5 : 5 + added]))], second[4:]])),
         r"graph entry point does not fit its levels"),  # the graph patched is checked whole
        ((first,), r"chunks hold 4400 vectors, the graph has 4300 nodes"),
    ]:
        with pytest.raises(FbmlError, match=message):
            load(*arrays)
    with pytest.raises(FbmlError, match="patches follow a graph saved without its vectors"):
        load_vector_index(grown.parameters(), hnsw.to_bytes(), None, None, [(npy(first), "0" * 64)])
    with pytest.raises(FbmlError, match="exact index has no removed rows, vector chunks nor graph patches"):
        load_vector_index(ExactIndex(vectors).parameters(), ExactIndex(vectors).to_bytes(), None, None, [(npy(first), "0" * 64)])
