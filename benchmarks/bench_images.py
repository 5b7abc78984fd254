"""Benchmark `fbml.vision.cleaning.clean_images` against the original system's single-process PIL loop.

Usage: uv run python benchmarks/bench_images.py [--src DIR] [--size 512] [--workers N] [--repeats 3]

First in this process (imports off the clock, best of two runs each); then the whole process, as a
user runs it: ``fbml clean-images SRC DST`` (imports, worker start, cleaning, the report's check)
against a fresh interpreter running the PIL loop, taking turns ``--repeats`` times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytecode import compiled_here

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "marketplace" / "raw_images"
TARGET_SPEED_UP = 2.3
WHOLE_PROCESS_TARGET = 3.0
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
    from fbml.vision.cleaning import clean_images

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
    import numpy as np

    diffs = []
    for name in names:
        with Image.open(a / name) as left, Image.open(b / name) as right:
            diffs.append(float(np.abs(np.asarray(left, dtype=np.int16) - np.asarray(right, dtype=np.int16)).mean()))
    return diffs


def wall_seconds(command: list[str]) -> float:
    """Wall-clock seconds of ``command`` run to completion in a fresh process."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def whole_process(src: Path, out: Path, size: int, repeats: int) -> None:
    """``fbml clean-images`` and the PIL loop, each a whole process, in turns; the ratio each time."""
    fbml = [str(Path(sys.executable).with_name("fbml")), "clean-images", str(src), "", "--size", str(size)]
    baseline = [sys.executable, __file__, "--src", str(src), "--size", str(size), "--child-baseline", ""]
    print(f"whole process ({repeats} turns, load average {os.getloadavg()[0]:.1f}): fbml clean-images against the PIL loop")
    ratios = []
    for turn in range(1, repeats + 1):
        fbml[3], baseline[-1] = str(out / f"fbml-{turn}"), str(out / f"loop-{turn}")
        Path(baseline[-1]).mkdir()
        ours, theirs = wall_seconds(fbml), wall_seconds(baseline)
        ratios.append(theirs / ours)
        print(f"  turn {turn}: fbml {ours:6.2f} s  PIL loop {theirs:6.2f} s  {ratios[-1]:5.2f}x")
    verdict = "MET" if min(ratios) > WHOLE_PROCESS_TARGET else "NOT MET"
    print(f"target: whole process > {WHOLE_PROCESS_TARGET:.0f}x the PIL loop: {min(ratios):.2f}x-{max(ratios):.2f}x "
          f"(median {sorted(ratios)[len(ratios) // 2]:.2f}x) {verdict}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder of photos (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="output side in pixels (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="fbml processes (default: all cores)")
    parser.add_argument("--repeats", type=int, default=3, help="turns of the whole-process comparison (0: none)")
    parser.add_argument("--child-baseline", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Time both pipelines, then print throughput, speed-up and a quality check."""
    args = parse_args(argv)
    if not args.src.is_dir():
        sys.exit(f"no photos to benchmark: {args.src} is not a folder (pass --src DIR)")
    paths = sorted(path for path in args.src.iterdir() if path.is_file())
    if args.child_baseline:
        baseline_clean(paths, args.child_baseline, args.size)
        return
    print(compiled_here(), flush=True)
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
    print(f"quality: mean abs pixel difference baseline vs fbml over {len(diffs)} files: mean {sum(diffs) / len(diffs):.2f}, max {max(diffs):.2f} grey levels")
    if args.repeats:
        with tempfile.TemporaryDirectory() as scratch:
            whole_process(args.src, Path(scratch), args.size, args.repeats)


if __name__ == "__main__":
    main()
