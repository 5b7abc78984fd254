"""Vector indexes for cosine search over unit-length float32 vectors: exact (numpy) and HNSW (faiss).

``vector_index(vectors)`` picks one; both answer ``search(queries, k, exclude)`` with ``(rows, scores)``
best first and save as ``to_bytes()`` (a ``.npy`` array, or faiss' own binary index format, never
pickle) beside the JSON ``parameters()``; ``load_vector_index`` checks one against the other. An HNSW
index also saves as its graph alone (``graph_bytes()``) beside its vectors in append-only ``.npy`` chunks
(``chunk_bytes(n)``) and the patches of the links additions changed (``Patch``), so that adding rows writes
only the new rows and what linking them changed. faiss is imported only when an HNSW index is built or loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import io
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import attrs
import numpy as np

from fbml.bundle.arrays import finite, plain_array
from fbml.errors import FbmlError

Method = Literal["auto", "exact", "hnsw"]
METRIC = "inner_product"
FORMAT = 1

# ``auto`` stays exact while rows * dim <= this. One exact query is one pass over all the vectors (past
# the CPU cache it runs at memory speed, ~0.36 ms per million floats here), so its cost follows
# rows * dim. Measured with ``benchmarks/bench_index.py --threshold`` on the 2-core dev machine,
# 256 wide (listing vectors are ~270), OpenBLAS on one thread: one-query p50 1.8 ms at 20k rows,
# 3.4 ms at 30k (repeats within 10%). With OpenBLAS' two threads the p50 is lower on a quiet machine
# (1.1 ms at 20k, 2.5 ms at 40k) but jumps to 8 ms when another job holds the second core.
EXACT_MAX_FLOATS = 20_000 * 256

# HNSW settings, tuned with benchmarks/bench_index.py on 500k and 1M clustered 256-wide vectors on the
# 2-core dev machine. ef_construction 64 builds 500k in ~2.5 min (133 CPU s); 128 lifts recall further
# (1.000 at ef_search 128) but builds 2.4x longer, too close to 10 min when the machine is shared.
# ef_search is the cheap knob: recall@10 at 500k 0.970 (64), 0.993 (128); at 1M 0.954 (128), 0.980 (256),
# one-query p50 still ~0.6 ms at 1M.
HNSW_M = 32  # links per node (64 at the base layer)
HNSW_EF_CONSTRUCTION = 64  # candidates kept while inserting
HNSW_EF_SEARCH = 256  # candidates kept while searching (at least k + 1 is used)
COMPACT_SHARE = 0.25
"""The share of an HNSW graph's nodes that may be tombstones (removed rows) before it is built afresh: each
one costs every search a little (the walk passes through it), and the file keeps its vector."""
CHUNK_MERGE = 2
"""A chunk (of an HNSW graph's vectors, or of a search index's catalogue rows) is merged with the next one while it
holds fewer than ``CHUNK_MERGE`` times its rows, so rows saved once and grown by additions keep O(log rows) chunks and
each row is rewritten O(log rows) times."""
PATCH_SHARE = 0.25
"""An HNSW graph read from a bundle is saved as that graph and patches (the links each addition changed) while the
nodes added since are at most this share of its nodes, and whole again past it: a patch of 1,000 nodes added to
100,000 is ~0.7 MB where the graph is 26 MB, and a load applies the patches in turn."""
HNSW_MAX = {"m": 256, "ef_construction": 4096, "ef_search": 4096}
"""The largest HNSW settings built or loaded: far past any useful recall, and each search's working set stays
megabytes (a bundle asking for ef_search 2**40 would make every search fail)."""

# Exact search scores at most this many (query, row) pairs at once: 128 MiB of float32.
_SCORE_BLOCK = 1 << 25


class VectorIndex(Protocol):
    """What every index answers: cosine top-k over its rows, and its own saved form."""

    @property
    def method(self) -> str:
        """``"exact"`` or ``"hnsw"``."""
        ...

    @property
    def dim(self) -> int:
        """The width of each vector."""
        ...

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows (int64) and scores (float32), each (Q, k'), best first."""
        ...

    def parameters(self) -> dict[str, Any]:
        """JSON describing the saved bytes: method, metric, count, dim, library and its settings."""
        ...

    def to_bytes(self) -> bytes:
        """The index in its library's own binary format (never pickle)."""
        ...

    def row_vectors(self) -> np.ndarray:
        """The vectors of its rows, in order (read-only where they are the index's own)."""
        ...

    def with_added(self, vectors: np.ndarray) -> VectorIndex:
        """The index with ``vectors`` appended as its next rows (this one unchanged)."""
        ...

    def without(self, rows: np.ndarray) -> VectorIndex:
        """The index without ``rows`` (the rows after each move up; this one unchanged)."""
        ...


def _check_vectors(_instance: object, _attribute: attrs.Attribute[np.ndarray], vectors: np.ndarray) -> None:
    check_vectors(vectors)


def check_vectors(vectors: np.ndarray) -> None:
    """``FbmlError`` unless ``vectors`` is a float32 (N, D) array with D >= 1 of finite values."""
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] < 1:
        raise FbmlError(f"index vectors must be a float32 (N, D) array with D >= 1, got {vectors.dtype} {vectors.shape}")
    finite(vectors, "the index's vectors")


@attrs.frozen
class ExactIndex:
    """Every row scored against every query: one matrix product and a partial sort, ties by row."""

    vectors: np.ndarray = attrs.field(validator=_check_vectors, eq=attrs.cmp_using(eq=np.array_equal))

    @property
    def method(self) -> str:
        """Always ``"exact"``."""
        return "exact"

    @property
    def dim(self) -> int:
        """The width of each vector."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores (each (Q, k'), best first, ties by row) of the ``k`` rows most similar to each
        query; ``exclude[q]`` (a row) is left out of query ``q``'s answer. ``k' = min(k, rows left)``."""
        batch = checked_queries(queries, self.dim)
        skip = checked_exclude(exclude, len(batch), len(self))
        take = answer_width(k, len(self), skip is not None)
        if take == 0:
            return empty_answer(len(batch))
        block = max(1, _SCORE_BLOCK // len(self))
        parts = [
            exact_top(batch[start : start + block], self.vectors, take, None if skip is None else skip[start : start + block])
            for start in range(0, max(1, len(batch)), block)
        ]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([rows for rows, _ in parts]), np.concatenate([scores for _, scores in parts])

    def parameters(self) -> dict[str, Any]:
        """JSON describing ``to_bytes()``."""
        return {
            "format": FORMAT,
            "method": self.method,
            "metric": METRIC,
            "count": len(self),
            "dim": self.dim,
            "library": "numpy",
            "library_version": np.__version__,
        }

    def to_bytes(self) -> bytes:
        """The vectors as a ``.npy`` file (loaded without pickle)."""
        return npy_bytes(self.vectors)

    def row_vectors(self) -> np.ndarray:
        """Its vectors."""
        return self.vectors

    def with_added(self, vectors: np.ndarray) -> ExactIndex:
        """The index with ``vectors`` appended as its next rows."""
        return ExactIndex(np.concatenate([self.vectors, checked_queries(vectors, self.dim)]))

    def without(self, rows: np.ndarray) -> ExactIndex:
        """The index without ``rows``."""
        return ExactIndex(np.delete(self.vectors, checked_rows(rows, len(self)), axis=0))


def _no_removed() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@attrs.frozen
class Chunk:
    """Rows ``start`` to ``stop`` (exclusive) saved as one file (an HNSW index's vectors at those graph positions, or a
    search index's catalogue rows) whose bytes have the SHA-256 ``sha256`` (known when the chunk is made or loaded, so
    a save need not read it again)."""

    start: int
    stop: int
    sha256: str


def split_in_order(chunks: Sequence[Chunk]) -> bool:
    """Whether ``chunks`` split rows 0 to the last one's stop in order, none empty."""
    stops = [0, *(chunk.stop for chunk in chunks)]
    return [chunk.start for chunk in chunks] == stops[:-1] and all(chunk.start < chunk.stop for chunk in chunks)


def _check_chunks(instance: HnswIndex, _attribute: attrs.Attribute[tuple[Chunk, ...]], chunks: tuple[Chunk, ...]) -> None:
    """The chunks split the graph's nodes in order, none empty."""
    if not split_in_order(chunks) or (chunks[-1].stop if chunks else 0) != int(instance.index.ntotal):
        stops = [chunk.stop for chunk in chunks]
        raise FbmlError(f"hnsw vector chunks must split the graph's {int(instance.index.ntotal)} nodes in order, got {stops}")


@attrs.frozen
class Patch:
    """What linking graph nodes ``start`` to ``stop`` (exclusive) into an HNSW graph changed, saved as one ``.npy`` file
    (as ``_patch`` writes it) whose bytes have the SHA-256 ``sha256``; ``content`` holds them until a bundle does."""

    start: int
    stop: int
    sha256: str
    content: bytes | None = attrs.field(default=None, eq=False, repr=False)


def _check_patches(instance: HnswIndex, _attribute: attrs.Attribute[tuple[Patch, ...]], patches: tuple[Patch, ...]) -> None:
    """Patches follow the saved graph (``graph_sha256``) one after the other up to the graph's nodes, none empty."""
    count = int(instance.index.ntotal)
    in_turn = [patch.stop for patch in patches[:-1]] == [patch.start for patch in patches[1:]]
    if patches and (instance.graph_sha256 is None or not in_turn or patches[-1].stop != count or any(p.start >= p.stop for p in patches)):
        raise FbmlError(f"hnsw graph patches must follow a saved graph one after the other up to its {count} nodes")


@attrs.frozen(eq=False)
class HnswIndex:
    """A faiss ``IndexHNSWFlat`` (inner product) over the rows: approximate, far faster past ~20k rows.
    Compares by identity (the graph is not compared).

    A faiss HNSW graph cannot forget a node, so removing rows leaves them in the graph as tombstones:
    ``removed`` (sorted graph positions) are skipped by every search (a faiss ID selector: the walk still
    passes through them, so the graph stays as connected), and the index's rows are the graph's other
    nodes in order. Once tombstones are over ``COMPACT_SHARE`` of the graph, ``without`` builds a new one.

    ``chunks`` split the graph's vectors (tombstones' included) into the ``.npy`` files it saves them in: rows
    added are a new chunk. ``graph_sha256`` is the SHA-256 of the file (``graph_bytes()``) its graph was read from, as
    it was before ``patches``: each addition to a graph read so is a patch (while they stay within ``PATCH_SHARE``), so
    that a save writes the new rows and what linking them changed, not the graph's links whole."""

    index: Any = attrs.field(repr=False)
    m: int
    ef_construction: int
    ef_search: int
    seed: int
    removed: np.ndarray = attrs.field(factory=_no_removed, repr=False)
    chunks: tuple[Chunk, ...] = attrs.field(repr=False, validator=_check_chunks)
    graph_sha256: str | None = attrs.field(default=None, repr=False)
    patches: tuple[Patch, ...] = attrs.field(default=(), repr=False, validator=_check_patches)
    _positions: np.ndarray = attrs.field(init=False, repr=False)
    _rows: np.ndarray = attrs.field(init=False, repr=False)
    _live_bits: np.ndarray | None = attrs.field(init=False, repr=False)

    @chunks.default
    def _one_chunk(self) -> tuple[Chunk, ...]:
        return chunked(self.index, ())

    @_positions.default
    def _live_positions(self) -> np.ndarray:
        return np.delete(np.arange(int(self.index.ntotal), dtype=np.int64), self.removed)

    @_rows.default
    def _row_of_position(self) -> np.ndarray:
        rows = np.full(int(self.index.ntotal), -1, dtype=np.int64)
        rows[self._positions] = np.arange(len(self._positions), dtype=np.int64)
        return rows

    @_live_bits.default
    def _bitmap(self) -> np.ndarray | None:
        if not len(self.removed):
            return None
        return np.packbits(self._rows >= 0, bitorder="little")

    def _selected(self, params: Any) -> Any:
        """``params`` with the selector that skips the tombstones (when there are any)."""
        if self._live_bits is not None:
            faiss = _faiss()
            params.sel = faiss.IDSelectorBitmap(int(self.index.ntotal), faiss.swig_ptr(self._live_bits))
        return params

    @property
    def method(self) -> str:
        """Always ``"hnsw"``."""
        return "hnsw"

    @property
    def dim(self) -> int:
        """The width of each vector."""
        return int(self.index.d)

    def __len__(self) -> int:
        return len(self._positions)

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores (each (Q, k'), best first, ties by row) of about the ``k`` rows most similar to
        each query; ``exclude[q]`` (a row) is left out of query ``q``'s answer. ``k' = min(k, rows left)``."""
        faiss = _faiss()
        batch = checked_queries(queries, self.dim)
        skip = checked_exclude(exclude, len(batch), len(self))
        take = answer_width(k, len(self), skip is not None)
        if take == 0:
            return empty_answer(len(batch))
        want = min(take + (skip is not None), len(self))
        params = self._selected(faiss.SearchParametersHNSW(efSearch=max(self.ef_search, want)))
        scores, positions = self.index.search(batch, want, params=params)
        short = np.flatnonzero((positions < 0).any(axis=1))
        if len(short):  # the graph walk found fewer than ``want`` rows: score those queries exactly
            storage = faiss.downcast_index(self.index.storage)
            scores[short], positions[short] = storage.search(batch[short], want, params=self._selected(faiss.SearchParameters()))
        rows = np.where(positions >= 0, self._rows[np.maximum(positions, 0)], -1)
        return best_first(*drop_excluded(rows, scores, skip, take))

    def with_added(self, vectors: np.ndarray) -> HnswIndex:
        """The index with ``vectors`` linked into a copy of its graph as its next rows (the graph of a build in one
        ``add`` would differ a little: HNSW inserts in order), saved as a new vector chunk and (a graph read from a
        bundle, within ``PATCH_SHARE``) a patch."""
        faiss = _faiss()
        added = checked_queries(vectors, self.dim)
        if not len(added):
            return self
        index = _copy_with_room(self.index, len(added))
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.rng = faiss.RandomGenerator(self.seed + int(index.ntotal))
        index.add(added)
        saved = self.patches[0].start if self.patches else int(self.index.ntotal)
        if self.graph_sha256 is None or int(index.ntotal) - saved > PATCH_SHARE * saved:
            return attrs.evolve(self, index=index, chunks=chunked(index, self.chunks), graph_sha256=None, patches=())
        return attrs.evolve(self, index=index, chunks=chunked(index, self.chunks), patches=(*self.patches, _patch(self.index, index)))

    def without(self, rows: np.ndarray) -> HnswIndex:
        """The index without ``rows``: their graph nodes become tombstones, or, once tombstones would be over
        ``COMPACT_SHARE`` of the graph, a graph is built afresh over the rows left."""
        gone = self._positions[checked_rows(rows, len(self))]
        removed = np.union1d(self.removed, gone).astype(np.int64)
        if len(removed) <= COMPACT_SHARE * int(self.index.ntotal):
            return attrs.evolve(self, removed=removed)
        kept = np.delete(self.graph_vectors(), removed, axis=0)
        return build_hnsw(kept, seed=self.seed, m=self.m, ef_construction=self.ef_construction, ef_search=self.ef_search)

    def graph_vectors(self) -> np.ndarray:
        """Every vector of the graph, tombstones included (a read-only view of faiss' storage)."""
        return stored_vectors(self.index)

    def row_vectors(self) -> np.ndarray:
        """The vectors of the index's rows: a read-only view of faiss' storage, or (with tombstones) a copy of its rows."""
        vectors = self.graph_vectors()
        return vectors[self._positions] if len(self.removed) else vectors

    def removed_bytes(self) -> bytes:
        """The tombstones' graph positions as a ``.npy`` file."""
        return npy_bytes(self.removed)

    def parameters(self) -> dict[str, Any]:
        """JSON describing ``to_bytes()``."""
        faiss = _faiss()
        return {
            "format": FORMAT,
            "method": self.method,
            "metric": METRIC,
            "count": len(self),
            "dim": self.dim,
            "library": "faiss-cpu",
            "library_version": faiss.__version__,
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "seed": self.seed,
            "removed": len(self.removed),
        }

    def to_bytes(self) -> bytes:
        """The index in faiss' binary format (``faiss.serialize_index``): graph and vectors."""
        faiss = _faiss()
        serialized: np.ndarray = faiss.serialize_index(self.index)
        return serialized.tobytes()

    def graph_bytes(self) -> bytes:
        """The graph without its vectors in faiss' binary format (written with ``IO_FLAG_SKIP_STORAGE``): what
        ``load_vector_index`` reads beside the ``chunk_bytes``."""
        faiss = _faiss()
        writer = faiss.VectorIOWriter()
        faiss.write_index(self.index, writer, faiss.IO_FLAG_SKIP_STORAGE)
        written: np.ndarray = faiss.rev_swig_ptr(writer.data.data(), writer.data.size())  # a view: copied once, by tobytes
        return written.tobytes()

    def chunk_bytes(self, number: int) -> bytes:
        """The vectors of chunk ``number`` as a ``.npy`` file (its SHA-256 is the chunk's ``sha256``)."""
        chunk = self.chunks[number]
        return npy_bytes(self.graph_vectors()[chunk.start : chunk.stop])


def stored_vectors(index: Any) -> np.ndarray:
    """A read-only view of the vectors in an HNSW graph's storage (no copy), which keeps ``index`` alive; ``index`` must
    not be added to while it lives (an ``HnswIndex``'s graph never is: ``with_added`` adds to a copy)."""
    if int(index.ntotal) == 0:
        return np.zeros((0, int(index.d)), dtype=np.float32)
    return np.asarray(_StoredVectors(index))


@attrs.frozen
class _StoredVectors:
    """The array interface of a faiss graph's flat storage: a numpy array made from it holds this, so the graph."""

    index: Any

    @property
    def __array_interface__(self) -> dict[str, Any]:
        storage = _faiss().downcast_index(self.index.storage)
        return {"shape": (int(storage.ntotal), int(storage.d)), "typestr": "<f4", "data": (int(storage.get_xb()), True),
                "version": 3}  # fmt: skip


def _links(index: Any) -> np.ndarray:
    """A view of the links (int32 node ids, -1 for none) of an HNSW graph's nodes, layer by layer, as faiss holds them."""
    neighbours = index.hnsw.neighbors
    return _faiss_view(neighbours.data(), neighbours.size(), np.int32)


def _faiss_view(pointer: Any, size: int, dtype: type[np.generic]) -> np.ndarray:
    """A numpy view of ``size`` items of ``dtype`` at a faiss vector's ``data()`` (valid while the vector is unchanged)."""
    return _faiss().rev_swig_ptr(pointer, size) if size else np.zeros(0, dtype=dtype)


@attrs.frozen
class _PatchParts:
    """A graph patch read (``_patch_parts``): it follows a graph of ``start`` nodes, and leaves ``entry`` the entry point
    and ``top`` the top layer; ``levels`` and ``links`` are the new nodes', ``values`` the links at ``positions``."""

    start: int
    entry: int
    top: int
    levels: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    links: np.ndarray


def _patch(before: Any, after: Any) -> Patch:
    """The patch that turns graph ``before`` into ``after`` (``before`` with nodes linked in after its own): one int64
    ``.npy`` array of the node count before, the nodes added, the links changed, the entry point and top layer after,
    then the new nodes' levels, the positions of the changed links among the graph's, their new values, and the new
    nodes' links (``_patch_parts`` reads it)."""
    start, stop = int(before.ntotal), int(after.ntotal)
    old, new = _links(before), _links(after)
    positions = np.flatnonzero(old != new[: len(old)])
    levels = _faiss_view(after.hnsw.levels.data(), stop, np.int32)[start:]
    head = [start, stop - start, len(positions), int(after.hnsw.entry_point), int(after.hnsw.max_level)]
    content = npy_bytes(np.concatenate([head, levels, positions, new[positions], new[len(old) :]], dtype=np.int64))
    return Patch(start, stop, hashlib.sha256(content).hexdigest(), content)


def _patch_parts(content: bytes, index: Any, number: int) -> _PatchParts:
    """Patch ``number`` (its ``.npy`` bytes, as ``_patch`` writes them) checked against the graph ``index`` it follows:
    ``FbmlError`` unless it follows the graph's node count, its levels are the graph's, it changes links the graph
    holds, and every link it gives names a node of the graph patched (which ``check_graph`` then checks whole)."""
    try:
        array = plain_array(content, np.int64, 1)
    except FbmlError as error:
        raise FbmlError(f"hnsw graph patch {number}: {error}") from None
    hnsw, count = index.hnsw, int(index.ntotal)
    start, added, changed, entry, top = (int(value) for value in array[:5]) if len(array) >= 5 else (-1, 0, 0, 0, 0)
    if start != count or added < 1 or changed < 0 or len(array) < 5 + added + 2 * changed:
        raise FbmlError(f"hnsw graph patch {number} does not follow the graph's {count} nodes (or is cut short)")
    parts = _PatchParts(start, entry, top, *np.split(array[5:], np.cumsum([added, changed, changed])))
    cumulative = _faiss().vector_to_array(hnsw.cum_nneighbor_per_level).astype(np.int64)
    if parts.levels.min() < 1 or parts.levels.max() >= len(cumulative):
        raise FbmlError(f"hnsw graph patch {number} gives levels outside the graph's 1 to {len(cumulative) - 1}")
    if len(parts.links) != int(cumulative[parts.levels].sum()):
        raise FbmlError(f"hnsw graph patch {number} holds {len(parts.links)} links where its nodes' levels make "
                        f"{int(cumulative[parts.levels].sum())}")
    positions = parts.positions
    if changed and (positions[0] < 0 or positions[-1] >= int(hnsw.neighbors.size()) or not (np.diff(positions) > 0).all()):
        raise FbmlError(f"hnsw graph patch {number} changes links the graph does not hold")
    total = count + added
    named = [int(bound) for part in (parts.values, parts.links) if len(part) for bound in (part.min(), part.max())]
    if not all(-1 <= node < total for node in (*named, entry)) or not 0 <= top < len(cumulative):
        raise FbmlError(f"hnsw graph patch {number} links nodes outside the graph's {total}")
    return parts


def _apply_patch(index: Any, parts: _PatchParts) -> None:
    """Graph ``index`` patched in place by a checked patch (``check_graph`` checks the graph it makes)."""
    hnsw, count, added = index.hnsw, parts.start, len(parts.levels)
    cumulative = _faiss().vector_to_array(hnsw.cum_nneighbor_per_level).astype(np.int64)
    held = int(hnsw.neighbors.size())
    hnsw.levels.resize(count + added)
    _faiss_view(hnsw.levels.data(), count + added, np.int32)[count:] = parts.levels
    hnsw.offsets.resize(count + added + 1)
    _faiss_view(hnsw.offsets.data(), count + added + 1, np.uint64)[count + 1 :] = held + np.cumsum(cumulative[parts.levels])
    hnsw.neighbors.resize(held + len(parts.links))
    neighbours = _links(index)
    neighbours[parts.positions] = parts.values
    neighbours[held:] = parts.links
    hnsw.entry_point, hnsw.max_level = parts.entry, parts.top
    index.ntotal = count + added


def _copy_with_room(index: Any, room: int) -> Any:
    """A copy of the HNSW graph ``index`` (links and vectors) whose vector storage is allocated for ``room`` more rows,
    so that adding them copies no vector again: ``faiss.clone_index`` copies the storage, and adding to the clone grows
    it, copying every vector twice."""
    faiss = _faiss()
    copy = faiss.IndexHNSWFlat(int(index.d), int(index.hnsw.nb_neighbors(1)), faiss.METRIC_INNER_PRODUCT)
    copy.hnsw = index.hnsw  # the graph's links, copied (a C++ assignment)
    storage = faiss.downcast_index(copy.storage)
    storage.codes.resize((int(index.ntotal) + room) * int(storage.code_size))  # allocated once: a resize never shrinks
    storage.add(stored_vectors(index))  # the capacity, so neither this add (from the start) nor the next reallocates
    copy.ntotal = index.ntotal
    return copy


def chunks_of(parts: Sequence[tuple[int, str]]) -> tuple[Chunk, ...]:
    """The chunks of consecutive rows that ``parts`` (each its row count and the SHA-256 of its file) hold, in order;
    a part of no rows is none."""
    stops = np.cumsum([rows for rows, _ in parts], dtype=np.int64).tolist()
    starts = [0, *stops][: len(stops)]
    return tuple(Chunk(start, stop, digest) for start, stop, (_, digest) in zip(starts, stops, parts, strict=True) if start < stop)


def appended_start(chunks: Sequence[Chunk], count: int) -> int:
    """Where the chunk of the rows past ``chunks`` (of the first of ``count`` rows) starts: at the last one's stop, or
    at the start of the last ones merged into it from the end while one holds fewer than ``CHUNK_MERGE`` times the
    rows after it. Chunks ending there or before are kept as they are."""
    start = chunks[-1].stop if chunks else 0
    for chunk in reversed(chunks):
        if chunk.stop - chunk.start >= CHUNK_MERGE * (count - chunk.stop):
            break
        start = chunk.start
    return start


def chunked(index: Any, chunks: tuple[Chunk, ...]) -> tuple[Chunk, ...]:
    """``chunks`` (of the first rows of ``index``'s graph) and one more holding its rows past them, merged with the
    last ones as ``appended_start`` says."""
    count = int(index.ntotal)
    start = appended_start(chunks, count)
    kept = tuple(chunk for chunk in chunks if chunk.stop <= start)
    if start == count:
        return kept
    header, data = _npy_parts(stored_vectors(index)[start:count])
    digest = hashlib.sha256(header)
    digest.update(data)
    return (*kept, Chunk(start, count, digest.hexdigest()))


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as a ``.npy`` file (C order, no pickle)."""
    header, data = _npy_parts(array)
    return header + bytes(data)


def _npy_parts(array: np.ndarray) -> tuple[bytes, memoryview]:
    """The header of ``array``'s ``.npy`` file, and its data (not copied when ``array`` is C-contiguous)."""
    contiguous = np.ascontiguousarray(array)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(contiguous))
    return buffer.getvalue(), contiguous.reshape(-1).view(np.uint8).data


def vector_index(
    vectors: np.ndarray,
    *,
    method: Method = "auto",
    seed: int = 0,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    ef_search: int = HNSW_EF_SEARCH,
    exact_max_floats: int = EXACT_MAX_FLOATS,
) -> VectorIndex:
    """An index over unit-length float32 ``vectors`` (row ``i`` answers as ``i``). ``auto`` is exact
    while ``rows * dim <= exact_max_floats`` and HNSW past it; the same vectors and seed give the same
    index (faiss' HNSW build is deterministic whatever its thread count)."""
    vectors = np.ascontiguousarray(vectors)
    check_vectors(vectors)
    if method not in ("auto", "exact", "hnsw"):
        raise FbmlError(f"an index method is 'auto', 'exact' or 'hnsw', got {method!r}")
    if method == "exact" or (method == "auto" and vectors.size <= exact_max_floats):
        return ExactIndex(vectors)
    return build_hnsw(vectors, seed=seed, m=m, ef_construction=ef_construction, ef_search=ef_search)


def build_hnsw(vectors: np.ndarray, *, seed: int, m: int, ef_construction: int, ef_search: int) -> HnswIndex:
    """A faiss HNSW graph over ``vectors``, built in one ``add`` (adding in parts gives another graph)."""
    faiss = _faiss()

    for name, value in (("m", m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
        _check_setting(name, value)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise FbmlError(f"an index seed is an integer between 0 and 2**63 - 1, got {seed!r}")
    index = faiss.IndexHNSWFlat(int(vectors.shape[1]), m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    index.hnsw.rng = faiss.RandomGenerator(seed)
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return HnswIndex(index, int(m), int(ef_construction), int(ef_search), int(seed))


def load_vector_index(
    parameters: Any, content: bytes, removed: bytes | None = None, chunks: Sequence[tuple[np.ndarray, str]] | None = None,
    patches: Sequence[tuple[bytes, str]] = (),
) -> VectorIndex:
    """The index ``to_bytes()`` wrote, or an HNSW graph ``graph_bytes()`` wrote and its vector ``chunks`` (each a
    float32 (rows, dim) array of finite values and the SHA-256 of its ``.npy`` file, both checked by the caller)
    and the ``patches`` after it (each its ``.npy`` bytes and their SHA-256), and for an HNSW graph with tombstones
    ``removed_bytes()``, checked against its ``parameters()``; ``FbmlError`` when the JSON is malformed, the bytes do
    not load, or what loaded disagrees with the JSON."""
    if not isinstance(parameters, Mapping):
        raise FbmlError(f"vector index parameters are a JSON object, got {type(parameters).__name__}")
    _expect(parameters, "format", FORMAT)
    _expect(parameters, "metric", METRIC)
    method = parameters.get("method")
    if method == "exact" and removed is None and chunks is None and not patches:
        index: VectorIndex = _load_exact(content)
    elif method == "exact":
        raise FbmlError("an exact index has no removed rows, vector chunks nor graph patches: its file holds its vectors")
    elif method == "hnsw":
        index = _load_hnsw(parameters, content, removed, chunks, patches)
    else:
        raise FbmlError(f"vector index method is 'exact' or 'hnsw', got {method!r}")
    for key, loaded in (("count", len(index)), ("dim", index.dim)):
        _expect(parameters, key, loaded, what="the loaded index has")
    return index


def _load_exact(content: bytes) -> ExactIndex:
    try:
        return ExactIndex(plain_array(content, np.float32, 2))
    except FbmlError as error:
        raise FbmlError(f"exact index bytes: {error}") from None


def _load_hnsw(
    parameters: Mapping[str, Any], content: bytes, removed: bytes | None, chunks: Sequence[tuple[np.ndarray, str]] | None,
    patches: Sequence[tuple[bytes, str]],
) -> HnswIndex:
    faiss = _faiss()

    index = _read_graph(content, with_vectors=chunks is None)
    if not isinstance(index, faiss.IndexHNSWFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise FbmlError(f"hnsw index bytes hold a {type(index).__name__}, not an inner-product IndexHNSWFlat")
    if patches and chunks is None:
        raise FbmlError("hnsw graph patches follow a graph saved without its vectors, beside its vector chunks")
    saved = []
    for number, (patch, digest) in enumerate(patches):
        start = int(index.ntotal)
        _apply_patch(index, _patch_parts(patch, index, number))
        saved.append(Patch(start, int(index.ntotal), digest))
    if chunks is not None:
        _attach_vectors(index, [vectors for vectors, _ in chunks])
    check_graph(index)
    m, ef_construction, ef_search = (_setting(parameters, key, 1, HNSW_MAX[key]) for key in ("m", "ef_construction", "ef_search"))
    _expect(parameters, "m", int(index.hnsw.nb_neighbors(1)), what="the loaded index has")
    _expect(parameters, "ef_construction", int(index.hnsw.efConstruction), what="the loaded index has")
    tombstones = _load_removed(parameters, removed, int(index.ntotal))
    seed = _setting(parameters, "seed", 0, 2**63 - 1)
    if chunks is None:
        return HnswIndex(index, m, ef_construction, ef_search, seed, tombstones)
    vectors = chunks_of([(len(vectors), digest) for vectors, digest in chunks])
    graph = hashlib.sha256(content).hexdigest()
    return HnswIndex(index, m, ef_construction, ef_search, seed, tombstones, vectors, graph, tuple(saved))


def _read_graph(content: bytes, *, with_vectors: bool) -> Any:
    """The faiss index in ``content``: a graph holding its vectors, or (``with_vectors=False``) a graph saved without
    them; ``FbmlError`` when faiss cannot read it or it is not the kind said."""
    faiss = _faiss()
    reader = faiss.VectorIOReader()
    faiss.copy_array_to_vector(np.frombuffer(content, dtype=np.uint8), reader.data)
    try:
        index = faiss.read_index(reader, 0 if with_vectors else faiss.IO_FLAG_SKIP_STORAGE)  # its own class, owning itself
    except RuntimeError as error:
        raise FbmlError(f"hnsw index bytes do not load in faiss ({str(error).strip().splitlines()[-1]})") from None
    held = getattr(index, "storage", None) is not None
    if held != with_vectors:
        raise FbmlError("hnsw index bytes hold a graph and its vectors; the bundle's vector chunks hold them" if held
                        else "hnsw index bytes hold a graph without its vectors, and the bundle names no vector chunks")
    return index


def _attach_vectors(index: Any, chunks: Sequence[np.ndarray]) -> None:
    """Give a graph read without its vectors a flat storage of ``chunks`` (in order): as many rows as it has nodes,
    as wide as it, finite."""
    faiss = _faiss()
    dim, count = int(index.d), int(index.ntotal)
    for number, vectors in enumerate(chunks):
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) == 0:
            raise FbmlError(f"hnsw vector chunk {number} holds {vectors.dtype} {vectors.shape}, not (rows >= 1, {dim}) float32")
        finite(vectors, f"hnsw vector chunk {number}")
    held = sum(len(vectors) for vectors in chunks)
    if held != count:
        raise FbmlError(f"hnsw vector chunks hold {held} vectors, the graph has {count} nodes")
    storage = faiss.IndexFlat(dim, faiss.METRIC_INNER_PRODUCT)
    for vectors in chunks:
        storage.add(np.ascontiguousarray(vectors))
    index.storage = storage
    index.own_fields = True
    storage.this.disown()  # the graph frees it


def _load_removed(parameters: Mapping[str, Any], content: bytes | None, count: int) -> np.ndarray:
    """The tombstones of a graph of ``count`` nodes: strictly increasing positions in it, as many as the JSON says."""
    said = parameters.get("removed", 0)
    if content is None:
        removed = _no_removed()
    else:
        try:
            removed = plain_array(content, np.int64, 1)
        except FbmlError as error:
            raise FbmlError(f"hnsw removed rows: {error}") from None
    if len(removed) and (int(removed[0]) < 0 or int(removed[-1]) >= count or not (np.diff(removed) > 0).all()):
        raise FbmlError(f"hnsw removed rows must be increasing positions of the graph's {count} nodes")
    if type(said) is not int or said != len(removed):
        raise FbmlError(f"vector index parameters say removed={said!r}, the bundle holds {len(removed)} removed rows")
    return removed


def check_graph(index: Any) -> None:
    """``FbmlError`` unless the HNSW graph only links rows it holds at layers they are on, so a search
    of a loaded index stays inside its arrays (faiss trusts the graph it reads)."""
    faiss = _faiss()

    count, hnsw = int(index.ntotal), index.hnsw
    storage = faiss.downcast_index(index.storage)
    if not isinstance(storage, faiss.IndexFlat) or storage.ntotal != count or storage.d != index.d:
        raise FbmlError("hnsw index storage does not hold the index's vectors")
    levels = faiss.vector_to_array(hnsw.levels).astype(np.int64)
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
    cumulative = faiss.vector_to_array(hnsw.cum_nneighbor_per_level).astype(np.int64)
    neighbours = faiss.vector_to_array(hnsw.neighbors)
    layers = len(cumulative) - 1
    if len(levels) != count or len(offsets) != count + 1 or layers < 1 or (count and not 1 <= levels.min() <= levels.max() <= layers):
        raise FbmlError("hnsw index graph levels do not fit its row count")
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets), cumulative[levels]) or offsets[-1] != len(neighbours):
        raise FbmlError("hnsw index graph offsets do not fit its levels")
    if len(neighbours) and not -1 <= int(neighbours.min()) <= int(neighbours.max()) < count:
        raise FbmlError("hnsw index graph links rows it does not hold")
    top = int(levels.max()) - 1 if count else -1
    if hnsw.max_level != top or not (count == 0 and hnsw.entry_point == -1 or 0 <= hnsw.entry_point < count and levels[hnsw.entry_point] - 1 == top):
        raise FbmlError("hnsw index graph entry point does not fit its levels")
    for node in np.flatnonzero(levels > 1):  # upper layers: ~1/M of the rows
        for layer in range(1, int(levels[node])):
            linked = neighbours[offsets[node] + cumulative[layer] : offsets[node] + cumulative[layer + 1]]
            if (levels[linked[linked >= 0]] <= layer).any():
                raise FbmlError("hnsw index graph links a row at a layer it is not on")


def checked_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """``queries`` as a C-contiguous float32 (Q, dim) array (one vector is one query)."""
    batch = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if batch.ndim != 2 or batch.shape[1] != dim:
        raise FbmlError(f"queries must be {dim} wide (a (Q, {dim}) array), got shape {np.shape(queries)}")
    return batch


def checked_rows(rows: np.ndarray, count: int) -> np.ndarray:
    """``rows`` as int64, each a row of an index of ``count`` rows."""
    picked = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(picked) and not 0 <= int(picked.min()) <= int(picked.max()) < count:
        raise FbmlError(f"rows must be between 0 and {count - 1}, got {picked.min()}..{picked.max()}")
    return picked


def checked_exclude(exclude: Sequence[int] | None, queries: int, rows: int) -> np.ndarray | None:
    """``exclude`` as int64, one row per query, each a row of the index."""
    if exclude is None:
        return None
    skip = np.asarray(exclude, dtype=np.int64).reshape(-1)
    if len(skip) != queries:
        raise FbmlError(f"exclude gives {len(skip)} rows for {queries} queries")
    if len(skip) and not 0 <= int(skip.min()) <= int(skip.max()) < rows:
        raise FbmlError(f"exclude rows must be between 0 and {rows - 1}, got {skip.min()}..{skip.max()}")
    return skip


def answer_width(k: int, rows: int, excluding: bool) -> int:
    """``k' = min(k, rows left)``; ``FbmlError`` when ``k < 1``."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise FbmlError(f"k must be a positive integer, got {k!r}")
    return max(0, min(k, rows - excluding))


def empty_answer(queries: int) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, 0)`` rows and scores."""
    return np.zeros((queries, 0), dtype=np.int64), np.zeros((queries, 0), dtype=np.float32)


def exact_top(queries: np.ndarray, vectors: np.ndarray, take: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``take`` best rows per query by inner product, ties by row, ``exclude[q]`` left out."""
    scores = queries @ vectors.T
    if exclude is not None:
        scores[np.arange(len(scores)), exclude] = -np.inf
    rows = np.argpartition(-scores, take - 1, axis=1)[:, :take]
    top = np.take_along_axis(scores, rows, axis=1)
    for query in _cut_ties(scores, top):  # a tie straddles the cut: keep the lower rows, as a full sort would
        rows[query] = np.lexsort((np.arange(scores.shape[1]), -scores[query]))[:take]
        top[query] = scores[query, rows[query]]
    return best_first(rows.astype(np.int64, copy=False), top)


def _cut_ties(scores: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The queries whose ``take``-th best score is shared with a row left out."""
    worst = top.min(axis=1, keepdims=True)
    tied = (scores == worst).sum(axis=1) > (top == worst).sum(axis=1)
    return np.flatnonzero(tied)


def drop_excluded(rows: np.ndarray, scores: np.ndarray, exclude: np.ndarray | None, take: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``take`` answers of each query that are not its excluded row."""
    if exclude is None:
        return rows[:, :take], scores[:, :take]
    keep = np.argsort(rows == exclude[:, None], axis=1, kind="stable")[:, :take]
    return np.take_along_axis(rows, keep, axis=1), np.take_along_axis(scores, keep, axis=1)


def best_first(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's answers by score, highest first, ties by row; rows int64, scores float32."""
    order = np.lexsort((rows, -scores), axis=1)
    return (
        np.take_along_axis(rows, order, axis=1).astype(np.int64, copy=False),
        np.take_along_axis(scores, order, axis=1).astype(np.float32, copy=False),
    )


def _faiss() -> Any:
    """faiss, imported on first use (its type stubs are partial, so it is typed ``Any``)."""
    return importlib.import_module("faiss")


def _setting(parameters: Mapping[str, Any], key: str, minimum: int, maximum: int) -> int:
    value = parameters.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise FbmlError(f"vector index parameter {key!r} must be an integer from {minimum} to {maximum}, got {value!r}")
    return value


def _check_setting(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value <= HNSW_MAX[name]:
        raise FbmlError(f"{name} must be an integer from 1 to {HNSW_MAX[name]}, got {value!r}")


def _expect(parameters: Mapping[str, Any], key: str, actual: object, *, what: str = "expected") -> None:
    value = parameters.get(key)
    if type(value) is not type(actual) or value != actual:
        raise FbmlError(f"vector index parameters say {key}={value!r}, {what} {actual!r}")
