"""Products cleaning throughput: fbml (polars, one lazy query) against the original pandas steps.

    uv run python benchmarks/bench_products.py [--rows 1000000] [--products PATH] [--profile] [--repeats 3]

The real ``Products.csv`` is replicated (ids made unique) to ``--rows`` rows in a temporary CSV. Each
implementation runs in its own child process so that its peak resident memory can be reported; both
read the same file and are timed for reading and for cleaning. Target: fbml >= 10x pandas rows/s.
``--profile`` adds the steps of ``fbml clean-products`` timed one at a time (in a third child): where
its CPU time goes.

Then the whole process, as a user runs it: ``fbml clean-products FILE --out DIR`` (imports, reading,
cleaning, checks, writing parquet) against a fresh interpreter running the pandas steps (importing pandas,
reading, cleaning, writing nothing), taking turns ``--repeats`` times. Target: fbml >= 5x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytecode import compiled_here

REPO = Path(__file__).resolve().parents[1]
REAL_PRODUCTS = REPO.parent / "shared" / "data" / "marketplace" / "Products.csv"
TARGET = 10.0
WHOLE_PROCESS_TARGET = 5.0


def replicate(products: Path, rows: int, out: Path) -> None:
    """Write ``rows`` rows of ``products``, repeated, with each copy's ids made unique (one copy in memory at a time)."""
    import polars as pl

    table = pl.read_csv(products, infer_schema=False)
    with out.open("wb") as file:
        for copy in range(-(-rows // table.height)):
            start = copy * table.height
            chunk = table.head(rows - start).with_columns(
                pl.col("id") + f"-{copy}", pl.int_range(start, start + pl.len()).cast(pl.String).alias("")
            )
            chunk.write_csv(file, include_header=copy == 0)


def run_fbml(path: str) -> dict[str, float]:
    """fbml: read (all strings) and clean, contracts (schema and data) checked on the way in and out."""
    from fbml.tables.cleaning import clean_products
    from fbml.tables.sources import read_products

    register_pandera_backends()
    start, cpu = time.perf_counter(), cpu_seconds()
    raw = read_products(path)
    read = time.perf_counter()
    cleaned = clean_products(raw, source=path)
    done = time.perf_counter()
    rows_out = cleaned.products.height
    return {"read_s": read - start, "clean_s": done - read, "cpu_s": cpu_seconds() - cpu, "rows_out": rows_out}


def register_pandera_backends() -> None:
    """Imports stay off the clock, pandas' as fbml's: pandera imports its polars backend (and with it
    hypothesis, where installed) at its first check, so check an empty table first."""
    import polars as pl
    from contracts import RawProducts

    RawProducts.validate(pl.DataFrame(schema=dict.fromkeys(RawProducts.to_schema().columns, pl.String)))


def run_pandas(path: str) -> dict[str, float]:
    """The original system's steps in pandas: astype(str), encode/decode, str.replace, str.split."""
    import pandas as pd

    start, cpu = time.perf_counter(), cpu_seconds()
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
    return {"read_s": read - start, "clean_s": done - read, "cpu_s": cpu_seconds() - cpu, "rows_out": len(frame)}


def cpu_seconds() -> float:
    """CPU time this process has used (user + system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_profile(path: str) -> dict[str, float]:
    """What ``fbml clean-products`` does, one step at a time (CPU seconds of all threads; the command runs
    reading, cleaning and writing the parts at once): imports, reading, each clean column on one batch,
    the per-row cleaning, the part files, the duplicates across batches, the final write with its checks."""
    start = cpu_seconds()
    import polars as pl
    from contracts.rules import clean_product_rules, rejected_rules
    from fbml.tables import cleaning, streaming

    seconds: dict[str, float] = {"imports (polars, fbml)": cpu_seconds() - start}

    def timed(step: str, action: Callable[[], Any]) -> Any:
        start = cpu_seconds()
        result = action()
        seconds[step] = seconds.get(step, 0.0) + cpu_seconds() - start
        return result

    raw = streaming.RawTables(path)
    batches = timed("read the CSV in batches", lambda: list(raw.product_batches()))
    columns = {
        "id (strip)": pl.col("_raw_id").str.strip_chars(),
        "product_name": cleaning.product_name(pl.col("_raw_product_name")),
        "product_description": cleaning.ascii_text(pl.col("_raw_product_description")),
        "price, per distinct": cleaning.per_distinct(pl.col("_raw_price"), cleaning.price),
        "category, per distinct": cleaning.per_distinct(pl.col("_raw_category"), cleaning.category_fields),
        "location, per distinct": cleaning.per_distinct(pl.col("_raw_location"), cleaning.place_fields),
    }
    first = batches[0].rechunk()
    for step, column in columns.items():
        timed(f"  first batch: {step}", lambda column=column: first.select(column))
    cleaned = [timed("per-row cleaning (cleaned_batch, all batches)", lambda batch=batch: cleaning.cleaned_batch(batch))
               for batch in batches]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        timed("part files (lz4 parquet)", lambda: streaming._write_parts(cleaned, path, work))
        parts = pl.scan_parquet(work / "products-*.parquet")
        duplicates = timed("duplicate ids across batches", lambda: streaming.later_duplicates(parts))
        products = parts.filter(~pl.col(streaming.ROW).is_in(duplicates[streaming.ROW].implode())).select(cleaning.CLEAN_COLUMNS)
        timed("final products.parquet with its checks", lambda: streaming._sink_checked(
            products, work / "products.parquet", "CleanProducts", clean_product_rules(), ("id",)))
        timed("final rejected.parquet with its checks", lambda: streaming._sink_checked(
            pl.scan_parquet(work / "rejected-*.parquet"), work / "rejected.parquet", "Rejected", rejected_rules(),
            ("source", "stage", streaming.ROW)))
    return seconds


def measured(which: str, path: Path) -> dict[str, float]:
    """Run one implementation in a child process; add its peak resident memory."""
    output = subprocess.run(
        [sys.executable, __file__, "--child", which, str(path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def child(which: str, path: str) -> None:
    figures = {"fbml": run_fbml, "pandas": run_pandas, "profile": run_profile}[which](path)
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
    print(f"{'CPU s (r+c)':14}{fbml['cpu_s']:>14,.1f}{pandas['cpu_s']:>14,.1f}")
    ratio = rate(fbml, "read_s", "clean_s") / rate(pandas, "read_s", "clean_s")
    verdict = "MET" if ratio >= TARGET else "NOT MET"
    print(f"target: read+clean >= {TARGET:.0f}x pandas rows/s: {ratio:.1f}x {verdict}")


def report_profile(profile: dict[str, float]) -> None:
    print("fbml clean-products, its steps one at a time (CPU seconds, all threads):")
    for step, seconds in profile.items():
        if step != "peak_rss_mib":
            print(f"  {step:62}{seconds:>7.2f}")


def wall_seconds(command: list[str]) -> float:
    """Wall-clock seconds of ``command`` run to completion in a fresh process."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def whole_process(path: Path, out: Path, repeats: int) -> None:
    """``fbml clean-products`` and the pandas steps, each a whole process, in turns; the ratio each time."""
    fbml = [str(Path(sys.executable).with_name("fbml")), "clean-products", str(path), "--out", str(out)]
    pandas = [sys.executable, __file__, "--child", "pandas", str(path)]
    print(f"whole process ({repeats} turns): fbml clean-products against the pandas steps")
    ratios = []
    for turn in range(1, repeats + 1):
        ours, theirs = wall_seconds(fbml), wall_seconds(pandas)
        ratios.append(theirs / ours)
        print(f"  turn {turn}: fbml {ours:6.2f} s  pandas {theirs:6.2f} s  {ratios[-1]:5.1f}x")
    verdict = "MET" if min(ratios) >= WHOLE_PROCESS_TARGET else "NOT MET"
    print(f"target: whole process >= {WHOLE_PROCESS_TARGET:.0f}x pandas: {min(ratios):.1f}x-{max(ratios):.1f}x "
          f"(median {sorted(ratios)[len(ratios) // 2]:.1f}x) {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--products", type=Path, default=REAL_PRODUCTS)
    parser.add_argument("--profile", action="store_true", help="also time fbml's steps one at a time")
    parser.add_argument("--repeats", type=int, default=3, help="turns of the whole-process comparison (0: none)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:
        print(compiled_here(), flush=True)
    if args.child:
        child(*args.child)
        return
    if not args.products.is_file():
        sys.exit(f"bench_products: {args.products} not found (the real marketplace data is needed)")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "Products.csv"
        replicate(args.products, args.rows, path)
        print(f"replicated {args.products.name} to {path.stat().st_size / 2**20:,.0f} MiB")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (timings need a quiet machine)")
        report(args.rows, measured("fbml", path), measured("pandas", path))
        if args.profile:
            report_profile(measured("profile", path))
        if args.repeats:
            whole_process(path, Path(folder) / "out", args.repeats)


if __name__ == "__main__":
    main()
