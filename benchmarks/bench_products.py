"""Products cleaning throughput: fbml (polars, one lazy query) against the original pandas steps.

    uv run python benchmarks/bench_products.py [--rows 1000000] [--products PATH]

The real ``Products.csv`` is replicated (ids made unique) to ``--rows`` rows in a temporary CSV. Each
implementation runs in its own child process so that its peak resident memory can be reported; both
read the same file and are timed for reading and for cleaning. Target: fbml >= 10x pandas rows/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_PRODUCTS = REPO.parent / "shared" / "data" / "marketplace" / "Products.csv"
TARGET = 10.0


def replicate(products: Path, rows: int, out: Path) -> None:
    """Write ``rows`` rows of ``products``, repeated, with each copy's ids made unique."""
    import polars as pl

    table = pl.read_csv(products, infer_schema=False)
    copies = -(-rows // table.height)
    big = pl.concat(
        [table.with_columns(pl.col("id") + f"-{copy}") for copy in range(copies)]
    ).head(rows).with_columns(pl.int_range(pl.len()).cast(pl.String).alias(""))
    big.write_csv(out)


def run_fbml(path: str) -> dict[str, float]:
    """fbml: read (all strings) and clean, contracts checked on the way in and out."""
    from fbml.cleaning import clean_products
    from fbml.sources import read_products

    start = time.perf_counter()
    raw = read_products(path)
    read = time.perf_counter()
    cleaned = clean_products(raw, source=path)
    done = time.perf_counter()
    return {"read_s": read - start, "clean_s": done - read, "rows_out": cleaned.products.height}


def run_pandas(path: str) -> dict[str, float]:
    """The original system's steps in pandas: astype(str), encode/decode, str.replace, str.split."""
    import pandas as pd

    start = time.perf_counter()
    frame = pd.read_csv(path, lineterminator="\n", dtype=str)
    read = time.perf_counter()
    frame = frame.drop(columns=["Unnamed: 0"]).dropna()
    for column in ("id", "product_name", "category", "product_description", "location"):
        frame[column] = frame[column].astype(str)
    for column in ("product_name", "product_description"):
        frame[column] = frame[column].str.encode("ascii", "ignore").str.decode("ascii")
    frame["product_name"] = frame["product_name"].str.split("|").str[0].str.strip()
    frame["price"] = frame["price"].str.replace("£", "").str.replace(",", "").astype(float)
    levels = frame["category"].str.split(" / ", expand=True)
    frame["subcategory"] = levels[1]
    frame["category"] = levels[0]
    places = frame["location"].str.split(", ", n=1, expand=True)
    frame["location"], frame["county"] = places[0], places[1]
    done = time.perf_counter()
    return {"read_s": read - start, "clean_s": done - read, "rows_out": len(frame)}


def measured(which: str, path: Path) -> dict[str, float]:
    """Run one implementation in a child process; add its peak resident memory."""
    output = subprocess.run(
        [sys.executable, __file__, "--child", which, str(path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def child(which: str, path: str) -> None:
    figures = {"fbml": run_fbml, "pandas": run_pandas}[which](path)
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


def report(rows: int, fbml: dict[str, float], pandas: dict[str, float]) -> None:
    def rate(figures: dict[str, float], *keys: str) -> float:
        return rows / sum(figures[key] for key in keys)

    print(f"rows: {rows:,}  (clean rows out: fbml {fbml['rows_out']:,}, pandas {pandas['rows_out']:,})")
    print(f"{'':14}{'fbml':>14}{'pandas':>14}{'ratio':>9}")
    for label, keys in (("clean rows/s", ("clean_s",)), ("read+clean/s", ("read_s", "clean_s"))):
        ours, theirs = rate(fbml, *keys), rate(pandas, *keys)
        print(f"{label:14}{ours:>14,.0f}{theirs:>14,.0f}{ours / theirs:>8.1f}x")
    print(f"{'peak RSS MiB':14}{fbml['peak_rss_mib']:>14,.0f}{pandas['peak_rss_mib']:>14,.0f}")
    ratio = rate(fbml, "read_s", "clean_s") / rate(pandas, "read_s", "clean_s")
    verdict = "MET" if ratio >= TARGET else "NOT MET"
    print(f"target: read+clean >= {TARGET:.0f}x pandas rows/s: {ratio:.1f}x {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--products", type=Path, default=REAL_PRODUCTS)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if not args.products.is_file():
        sys.exit(f"bench_products: {args.products} not found (the real marketplace data is needed)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "Products.csv"
        replicate(args.products, args.rows, path)
        print(f"replicated {args.products.name} to {path.stat().st_size / 2**20:,.0f} MiB")
        report(args.rows, measured("fbml", path), measured("pandas", path))


if __name__ == "__main__":
    main()
