"""Benchmark `fbml.vision.cleaning.clean_images` against the original system's single-process PIL loop.

Usage: uv run python benchmarks/bench_images.py [--src DIR] [--size 512] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fbml.vision.cleaning import clean_images
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "marketplace" / "raw_images"
TARGET_SPEED_UP = 2.3
WARM_UP_FILES = 5
REPEATS = 2
QUALITY_FILES = 10


def baseline_clean(paths: list[Path], dst: Path, size: int) -> None:
    """The original loop: open, LANCZOS-resize to fit, paste centred on black, save as JPEG."""
    for path in paths:
        image = Image.open(path)
        ratio = size / max(image.size)
        resized = image.resize((int(image.width * ratio), int(image.height * ratio)), Image.LANCZOS)
        canvas = Image.new("RGB", (size, size))
        canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
        canvas.save(dst / f"{path.stem}.jpg")


def fbml_clean(src: Path, dst: Path, size: int, workers: int | None) -> None:
    """`clean_images` over the folder `src` (it follows no link out of a folder, so it reads the files in place)."""
    report = clean_images(src, dst, size=size, workers=workers, progress=False)
    if report.rejected:
        sys.exit(f"fbml rejected {report.rejected} files: {report.rejected_by_reason()}")


def best_seconds(runs: dict[str, Callable[[Path], None]], out: Path) -> dict[str, float]:
    """Fastest of `REPEATS` runs of each pipeline, interleaved so background load hits both alike; run k writes `out/<name>/<k>`."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(REPEATS):
        for name, run in runs.items():
            dst = out / name / str(repeat)
            dst.mkdir(parents=True)
            start = time.perf_counter()
            run(dst)
            times[name].append(time.perf_counter() - start)
    return {name: min(seconds) for name, seconds in times.items()}


def mean_abs_diffs(a: Path, b: Path, names: list[str]) -> list[float]:
    """Per-file mean absolute pixel difference between same-named images in `a` and `b`."""
    diffs = []
    for name in names:
        with Image.open(a / name) as left, Image.open(b / name) as right:
            diffs.append(float(np.abs(np.asarray(left, dtype=np.int16) - np.asarray(right, dtype=np.int16)).mean()))
    return diffs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder of photos (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="output side in pixels (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="fbml processes (default: all cores)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Time both pipelines, then print throughput, speed-up and a quality check."""
    args = parse_args(argv)
    if not args.src.is_dir():
        sys.exit(f"no photos to benchmark: {args.src} is not a folder (pass --src DIR)")
    paths = sorted(path for path in args.src.iterdir() if path.is_file())
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        for name in ("warm-src", "warm-baseline", "warm-fbml"):
            (out / name).mkdir()
        for path in paths[:WARM_UP_FILES]:
            shutil.copyfile(path, out / "warm-src" / path.name)
        baseline_clean(paths[:WARM_UP_FILES], out / "warm-baseline", args.size)
        fbml_clean(out / "warm-src", out / "warm-fbml", args.size, args.workers)
        seconds = best_seconds(
            {
                "baseline": lambda dst: baseline_clean(paths, dst, args.size),
                "fbml": lambda dst: fbml_clean(args.src, dst, args.size, args.workers),
            },
            out,
        )
        names = [f"{path.stem}.jpg" for path in paths[:QUALITY_FILES]]
        diffs = mean_abs_diffs(out / "baseline" / "0", out / "fbml" / "0", names)
    baseline_s, fbml_s = seconds["baseline"], seconds["fbml"]
    speed_up = baseline_s / fbml_s
    print(f"{len(paths)} files from {args.src}, size {args.size}, {os.cpu_count()} cores, workers {args.workers or 'all'}, best of {REPEATS}")
    print(f"baseline (single-process PIL loop): {len(paths) / baseline_s:7.1f} images/s ({baseline_s:.2f} s)")
    print(f"fbml clean_images:                  {len(paths) / fbml_s:7.1f} images/s ({fbml_s:.2f} s)")
    print(f"speed-up: {speed_up:.2f}x; target: >= {TARGET_SPEED_UP}x ... {'MET' if speed_up >= TARGET_SPEED_UP else 'NOT MET'}")
    print(f"quality: mean abs pixel difference baseline vs fbml over {len(diffs)} files: mean {np.mean(diffs):.2f}, max {max(diffs):.2f} grey levels")


if __name__ == "__main__":
    main()
