"""Cold start of serving: a fresh interpreter's imports, ``load_bundle`` and first text and photo predictions,
against ``import torch`` alone in a fresh interpreter, in the same run.

Each round starts both interpreters (their order alternating) and times, inside each, from before its
first import: ``import torch``; and fbml's imports, ``load_bundle(--bundle, runtime=--runtime)``, then
one text through the ``text`` predictor and one photo through the ``image`` predictor (``Bundle.predict``). Prints each
round, the median [min-max] of every figure and of the per-round ratio, and MET / NOT MET for
``TARGET`` x ``import torch``. The bundle is ``--bundle``, or a small one trained here on the sample
marketplace (as ``bench_api.py`` trains it).
fbml's own modules are compiled first, as installing the wheel compiles them (``bytecode.py``).

    uv run python benchmarks/bench_load.py [--bundle DIR] [--runtime torch|onnx] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytecode import compiled_here

TARGET = 1.5
TORCH_ONLY = """
import time
start = time.perf_counter()
import torch
print(time.perf_counter() - start)
"""
SERVE_FIRST = """
import json, sys, time
start = time.perf_counter()
import fbml

imported = time.perf_counter()
bundle = fbml.load_bundle(sys.argv[1], runtime=sys.argv[2])
loaded = time.perf_counter()
if "text" in bundle.predictors:
    bundle.predict(text="Red kettle, hardly used")
if "image" in bundle.predictors and bundle.image is not None:
    import numpy as np

    bundle.predict(image=np.full((480, 640, 3), 127, np.uint8))
done = time.perf_counter()
heavy = sorted(name for name in ("timm", "sklearn", "scipy", "pandera", "pandas", "gensim", "litestar") if name in sys.modules)
print(json.dumps({"imports": imported - start, "load": loaded - imported, "predict": done - loaded, "total": done - start,
                  "heavy": heavy}))
"""


def main() -> None:
    args = _arguments()
    print(compiled_here(), flush=True)
    with tempfile.TemporaryDirectory(prefix="fbml-bench-load-") as scratch:
        bundle_dir = args.bundle or _small_bundle(Path(scratch))
        rounds, heavy = [], []
        for repeat in range(args.repeats):
            figures: dict[str, float] = {}
            for which in ("torch", "fbml") if repeat % 2 == 0 else ("fbml", "torch"):
                if which == "torch":
                    figures["import torch"] = float(_last_line([sys.executable, "-c", TORCH_ONLY]))
                else:
                    served = json.loads(_last_line([sys.executable, "-c", SERVE_FIRST, str(bundle_dir), args.runtime]))
                    heavy = served.pop("heavy")
                    figures |= served
            figures["ratio"] = figures["total"] / figures["import torch"]
            rounds.append(figures)
            print(f"round {repeat + 1}: " + ", ".join(f"{name} {value:.2f}" for name, value in figures.items()), flush=True)
    print(f"{bundle_dir}, runtime {args.runtime}, {args.repeats} round(s): median [min-max]; "
          f"heavy modules imported: {', '.join(heavy) or 'none'}")
    for name in rounds[0]:
        print(f"  {name:>12}: {_spread([figures[name] for figures in rounds], 'x' if name == 'ratio' else ' s')}")
    ratio = statistics.median(figures["ratio"] for figures in rounds)
    print(f"{'MET' if ratio <= TARGET else 'NOT MET'}: load and first predictions <= {TARGET}x import torch (median {ratio:.2f}x)")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to load (default: train a small one)")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="the networks' runtime (default torch)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    return parser.parse_args()


def _small_bundle(scratch: Path) -> Path:
    from bench_api import small_bundle

    return small_bundle(scratch)


def _last_line(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{command[:3]} failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def _spread(values: list[float], unit: str) -> str:
    return f"{statistics.median(values):.2f}{unit} [{min(values):.2f}-{max(values):.2f}]"


if __name__ == "__main__":
    main()
