"""Peak resident memory of the whole ``fbml clean-products`` process against the table's length.

    uv run python benchmarks/bench_memory.py [--rows 1000000 5000000] [--with-10m] [--products PATH] [--engine polars]

The real ``Products.csv`` is replicated (ids made unique) to each row count in a temporary folder, and
``fbml clean-products`` runs on it as a user runs it, in a child process whose peak RSS comes from
``os.wait4`` (the kernel's ``ru_maxrss`` of that child alone). Each run must account for every row
(clean + rejected = rows). Target: 5M rows under 2 GiB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_products import REAL_PRODUCTS, replicate

TARGET_ROWS = 5_000_000
TARGET_MIB = 2048


def fbml_command() -> list[str]:
    """``fbml`` as installed beside this interpreter."""
    return [str(Path(sys.executable).with_name("fbml"))]


def measured(csv: Path, out: Path, engine: str) -> tuple[float, float]:
    """Run ``fbml clean-products`` on ``csv``; its wall seconds and peak RSS in MiB."""
    command = [*fbml_command(), "clean-products", str(csv), "--out", str(out), "--engine", engine]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_memory: fbml clean-products failed: {child.stderr.read().decode() if child.stderr else ''}")
    return seconds, usage.ru_maxrss / 1024


def accounted(out: Path) -> tuple[int, int]:
    """Rows in the clean products and in the rejected rows written to ``out``."""
    import polars as pl

    def rows(name: str) -> int:
        return int(pl.scan_parquet(out / name).select(pl.len()).collect().item())

    return rows("products.parquet"), rows("rejected.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--with-10m", action="store_true", help="add 10M rows (a 5 GB CSV; minutes)")
    parser.add_argument("--products", type=Path, default=REAL_PRODUCTS)
    parser.add_argument("--engine", default="polars", choices=("polars", "ray"))
    args = parser.parse_args()
    if not args.products.is_file():
        sys.exit(f"bench_memory: {args.products} not found (the real marketplace data is needed)")
    counts = [*args.rows, *([10_000_000] if args.with_10m else [])]
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'rows':>12}{'CSV MiB':>10}{'wall s':>9}{'peak RSS MiB':>14}{'clean':>12}{'rejected':>10}  every row accounted")
    verdicts = []
    for rows in counts:
        with tempfile.TemporaryDirectory() as folder:
            csv = Path(folder) / "Products.csv"
            replicate(args.products, rows, csv)
            seconds, peak = measured(csv, Path(folder) / "out", args.engine)
            clean, rejected = accounted(Path(folder) / "out")
            every = clean + rejected == rows
            print(f"{rows:>12,}{csv.stat().st_size / 2**20:>10,.0f}{seconds:>9.1f}{peak:>14,.0f}{clean:>12,}{rejected:>10,}  {every}")
            if rows == TARGET_ROWS:
                verdicts.append(peak < TARGET_MIB and every)
    if verdicts:
        print(f"target: {TARGET_ROWS:,} rows under {TARGET_MIB} MiB peak RSS, every row accounted: "
              f"{'MET' if all(verdicts) else 'NOT MET'}")


if __name__ == "__main__":
    main()
