"""How long a service takes to be ready to predict: ``load_bundle`` plus its first text and photo predictions,
against ``import torch`` alone, each in a fresh interpreter, alternating, in the same run.

The target: loading the default bundle (torch runtime) and answering one text and one photo within
``TARGET`` x the time of ``import torch`` (median of ``--repeats``). It also lists which heavy modules the
load path imported (none of timm, scikit-learn, pandera or pandas should be).

    uv run python benchmarks/bench_load.py --bundle BUNDLE [--photo PHOTO.jpg] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

TARGET = 1.5
HEAVY = ("torch", "timm", "sklearn", "pandera", "pandas", "scipy.optimize", "gensim", "litestar", "onnxruntime")
IMPORT_TORCH = "import time; started = time.perf_counter(); import torch; print(time.perf_counter() - started)"
LOAD_AND_PREDICT = """
import json, sys, time
started = time.perf_counter()
import fbml
bundle = fbml.load_bundle(sys.argv[1], runtime=sys.argv[3])
bundle.predict(text="Oak dining table and four chairs, barely used")
if sys.argv[2]:
    from pathlib import Path
    bundle.predict(image=Path(sys.argv[2]))
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "modules": sorted(name for name in %r if name in sys.modules)}))
""" % (HEAVY,)


def timed(code: str, *args: str) -> str:
    """The last line ``code`` printed, run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=600)
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle with a text and an image predictor")
    parser.add_argument("--photo", type=Path, default=None, help="a photo to predict (default: none, text only)")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    timed(IMPORT_TORCH)  # warm the file cache once for both
    torch_seconds, load_seconds, modules = [], [], []
    for _ in range(args.repeats):
        torch_seconds.append(float(timed(IMPORT_TORCH)))
        result = json.loads(timed(LOAD_AND_PREDICT, str(args.bundle), str(args.photo or ""), args.runtime))
        load_seconds.append(result["seconds"])
        modules = result["modules"]
    ratio = statistics.median(load_seconds) / statistics.median(torch_seconds)
    print(f"import torch alone:            {statistics.median(torch_seconds):.2f} s "
          f"(runs: {', '.join(f'{value:.2f}' for value in torch_seconds)})")
    print(f"load_bundle + first {'text and photo' if args.photo else 'text'} prediction: {statistics.median(load_seconds):.2f} s "
          f"(runs: {', '.join(f'{value:.2f}' for value in load_seconds)})")
    print(f"heavy modules imported: {', '.join(modules) or 'none'}")
    print(f"ratio {ratio:.2f}x import torch (target <= {TARGET}x): {'MET' if ratio <= TARGET else 'NOT MET'}")


if __name__ == "__main__":
    main()
