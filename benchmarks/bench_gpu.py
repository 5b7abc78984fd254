"""The three classifiers trained on the real data on a GPU, with the figures of ``bench_models.py``.

    uv run python benchmarks/bench_gpu.py [--data DIR] [--out DIR] [--device cuda]

For a machine with CUDA (CI has none): the same trainings, choices and references as
``bench_models.py``, on ``--device`` (mixed precision there), followed by the device's name and its
peak memory. Without CUDA it says so and exits 0 without training.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench_models import REAL_DATA, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA, help="folder with Products.csv, Images.csv, images_224/")
    parser.add_argument("--out", type=Path, default=None, help="keep the bundle here (default: a temporary folder)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA device on this machine (torch.cuda.is_available() is False)")
        return 0
    if not (args.data / "Products.csv").is_file():
        print(f"skipped: {args.data / 'Products.csv'} not found (the real marketplace data is not on this machine)")
        return 0
    device = torch.device(args.device)
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fbml-bench-gpu-") as scratch:
        run(args.data, args.out or Path(scratch), args.device)
    print(f"\ndevice: {torch.cuda.get_device_name(device)}; whole run {time.perf_counter() - started:.0f} s; "
          f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
