"""The approximate (HNSW, faiss) vector index against the exact one on clustered synthetic vectors.

    uv run python benchmarks/bench_index.py [--sizes 100000 500000 1000000] [--quick] [--threshold]

Vectors: ``--clusters`` Gaussian clusters in ``--dim`` dimensions, each point its cluster's unit centre
plus noise of norm ``--spread`` (so two points of one cluster have cosine ~1/(1+spread**2)), then
unit-normalised; queries are ``--queries`` more points drawn the same way (not in the index). Per size:
HNSW build time (wall and CPU, all threads), recall@10 against the exact index, one-query latency
p50/p99 over ``--latency-queries`` single queries (through ``search``, validation included) for each
``--ef`` and ``--repeats`` times, the exact index's one-query p50, and the save/load round trip.
Targets (the issue's, at 500k): recall@10 >= 0.95, one-query p50 <= 2 ms, build <= 10 min.
``--threshold`` instead times the exact index alone at small sizes: where ``auto`` should switch.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fbml.bundle.vector_index import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    ExactIndex,
    HnswIndex,
    build_hnsw,
    load_vector_index,
)

K = 10
TARGET_RECALL, TARGET_P50_MS, TARGET_BUILD_S = 0.95, 2.0, 600.0
TARGET_SIZE = 500_000


@attrs.frozen
class Data:
    """Index vectors and held-out queries from one clustered distribution."""

    vectors: np.ndarray
    queries: np.ndarray


@attrs.frozen
class EfResult:
    """Recall and one-query latency of one ``ef_search`` on one graph."""

    ef: int
    recall: float
    p50_ms: list[float]
    p99_ms: list[float]


@attrs.frozen
class SizeResult:
    """What one size measured."""

    rows: int
    build_s: float
    build_cpu_s: float
    exact_p50_ms: list[float]
    efs: list[EfResult]
    bytes_mb: float
    save_s: float
    load_s: float
    same_after_load: bool


def clustered(rows: int, queries: int, *, dim: int, clusters: int, spread: float, seed: int) -> Data:
    """``rows`` + ``queries`` unit vectors around ``clusters`` random unit centres (seeded)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    noise = np.float32(spread / np.sqrt(dim))

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 65_536):
            part = out[start : start + 65_536]
            part[:] = centres[rng.integers(0, clusters, len(part))]
            part += rng.standard_normal(part.shape, dtype=np.float32) * noise
            part[:] = unit(part)
        return out

    return Data(draw(rows), draw(queries))


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k that ``found`` holds."""
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)]))


def one_query_ms(search: Callable[[np.ndarray], object], queries: np.ndarray) -> np.ndarray:
    """Milliseconds of ``search`` on each query alone."""
    times = np.empty(len(queries))
    search(queries[:1])  # warm-up
    for i, query in enumerate(queries):
        start = time.perf_counter()
        search(query[None])
        times[i] = time.perf_counter() - start
    return times * 1e3


def measure_size(data: Data, args: argparse.Namespace) -> SizeResult:
    """Build, recall, latency and round trip at one size."""
    exact = ExactIndex(data.vectors)
    truth, _ = exact.search(data.queries, K)
    exact_queries = data.queries[: args.exact_queries]
    exact_p50 = [float(np.median(one_query_ms(lambda q: exact.search(q, K), exact_queries))) for _ in range(args.repeats)]
    wall, cpu = time.perf_counter(), time.process_time()
    hnsw = build_hnsw(data.vectors, seed=0, m=args.m, ef_construction=args.ef_construction, ef_search=HNSW_EF_SEARCH)
    build_s, build_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  built {len(data.vectors):,} in {build_s:.1f}s wall, {build_cpu_s:.1f}s CPU", flush=True)
    efs = [measure_ef(hnsw, ef, data.queries, truth, args) for ef in args.ef]
    start = time.perf_counter()
    content, parameters = hnsw.to_bytes(), hnsw.parameters()
    saved = time.perf_counter()
    loaded = load_vector_index(parameters, content)
    loaded_s = time.perf_counter() - saved
    probe = data.queries[:100]
    same = all(np.array_equal(a, b) for a, b in zip(hnsw.search(probe, K), loaded.search(probe, K), strict=True))
    return SizeResult(
        len(data.vectors), build_s, build_cpu_s, exact_p50, efs, len(content) / 2**20, saved - start, loaded_s, same
    )


def measure_ef(hnsw: HnswIndex, ef: int, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace) -> EfResult:
    """Recall@10 over all queries and one-query p50/p99, ``args.repeats`` times, at ``ef``."""
    index = attrs.evolve(hnsw, ef_search=ef)
    found, _ = index.search(queries, K)
    singles = queries[: args.latency_queries]
    runs = [one_query_ms(lambda q: index.search(q, K), singles) for _ in range(args.repeats)]
    return EfResult(
        ef,
        recall_at_k(found, truth),
        [float(np.percentile(run, 50)) for run in runs],
        [float(np.percentile(run, 99)) for run in runs],
    )


def spread_of(values: Sequence[float], digits: int = 2) -> str:
    """The first value, and the range when repeated."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def print_table(results: list[SizeResult]) -> None:
    """One line per (size, ef): build, recall, latency and the exact index's p50 beside it."""
    print()
    print("| rows | build s (CPU s) | ef | recall@10 | p50 ms | p99 ms | exact p50 ms | speed-up | bytes MB | save s | load s | same after load |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for size in results:
        for ef in size.efs:
            speedup = np.median(size.exact_p50_ms) / np.median(ef.p50_ms)
            print(
                f"| {size.rows:,} | {size.build_s:.0f} ({size.build_cpu_s:.0f}) | {ef.ef} | {ef.recall:.4f} | "
                f"{spread_of(ef.p50_ms, 3)} | {spread_of(ef.p99_ms, 2)} | {spread_of(size.exact_p50_ms, 1)} | "
                f"{speedup:.0f}x | {size.bytes_mb:.0f} | {size.save_s:.1f} | {size.load_s:.1f} | {size.same_after_load} |"
            )


def print_targets(results: list[SizeResult], default_ef: int) -> None:
    """MET / NOT MET for the issue's targets, at 500k rows and the default ``ef_search``."""
    for size in results:
        if size.rows != TARGET_SIZE:
            continue
        ef = next((e for e in size.efs if e.ef == default_ef), size.efs[0])
        checks = (
            (f"recall@10 >= {TARGET_RECALL}", ef.recall >= TARGET_RECALL, f"{ef.recall:.4f}"),
            (f"one-query p50 <= {TARGET_P50_MS} ms", max(ef.p50_ms) <= TARGET_P50_MS, f"{max(ef.p50_ms):.3f} ms (worst repeat)"),
            (f"build <= {TARGET_BUILD_S:.0f} s", size.build_s <= TARGET_BUILD_S, f"{size.build_s:.0f} s"),
        )
        print(f"\ntargets at {size.rows:,} rows, ef_search={ef.ef}:")
        for name, met, value in checks:
            print(f"  {'MET    ' if met else 'NOT MET'} {name}: {value}")


def threshold(args: argparse.Namespace) -> None:
    """Exact one-query p50/p99 at small sizes and two widths: where it passes 2 ms."""
    print("| dim | rows | rows*dim | exact p50 ms | exact p99 ms |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for dim in args.threshold_dims:
        for rows in args.threshold_rows:
            data = clustered(rows, 300, dim=dim, clusters=min(args.clusters, rows), spread=args.spread, seed=args.seed)
            exact = ExactIndex(data.vectors)
            runs = [one_query_ms(functools.partial(exact.search, k=K), data.queries) for _ in range(args.repeats)]
            p50 = [float(np.percentile(run, 50)) for run in runs]
            p99 = [float(np.percentile(run, 99)) for run in runs]
            print(f"| {dim} | {rows:,} | {rows * dim:,} | {spread_of(p50, 3)} | {spread_of(p99, 2)} |", flush=True)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="20k vectors, 200 queries: seconds")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm per point (centres have norm 1)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries for recall@10")
    parser.add_argument("--latency-queries", type=int, default=300, help="single queries timed per repeat")
    parser.add_argument("--exact-queries", type=int, default=100, help="single queries timed on the exact index")
    parser.add_argument("--repeats", type=int, default=2, help="latency measurements per figure")
    parser.add_argument("--m", type=int, default=HNSW_M)
    parser.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION)
    parser.add_argument("--ef", type=int, nargs="+", default=[HNSW_EF_SEARCH], help="ef_search values to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", action="store_true", help="time the exact index at small sizes instead")
    parser.add_argument("--threshold-rows", type=int, nargs="+", default=[2_000, 5_000, 10_000, 20_000, 50_000])
    parser.add_argument("--threshold-dims", type=int, nargs="+", default=[256, 1280])
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.latency_queries, args.exact_queries = [20_000], 200, 200, 50
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; M={args.m} ef_construction={args.ef_construction}")
    if args.threshold:
        threshold(args)
        return
    results = []
    for rows in args.sizes:
        print(f"{rows:,} rows: generating", flush=True)
        data = clustered(rows, args.queries, dim=args.dim, clusters=args.clusters, spread=args.spread, seed=args.seed)
        results.append(measure_size(data, args))
        del data
    print_table(results)
    print_targets(results, HNSW_EF_SEARCH if HNSW_EF_SEARCH in args.ef else args.ef[0])
    print(f"\nload average now {os.getloadavg()[0]:.1f} (2 cores shared with other jobs: figures vary)")


if __name__ == "__main__":
    main()
