"""Benchmark one epoch of photos through a DataLoader: the original PIL-per-item dataset against the
decoded cache (`fbml.vision.cache.build_image_cache` + `fbml.modeling.datasets.ImageDataset`), same eval transform.

Usage: uv run python benchmarks/bench_datasets.py [--image-dir DIR] [--size 224] [--limit 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from fbml.modeling.datasets import ImageBatch, ImageDataset, eval_transform
from fbml.sample.marketplace import write_sample
from fbml.tables.clean import clean_tables
from fbml.text.labels import label_codec
from fbml.vision.cache import build_image_cache
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional

REPO = Path(__file__).resolve().parents[1]
MARKETPLACE = REPO.parent / "shared" / "data" / "marketplace"
BATCH_SIZE = 64
BASELINE_WORKERS = 2
REPEATS = 3
SAMPLE_PRODUCTS_PER_PHOTO = 0.65


class PilDataset(Dataset[tuple[torch.Tensor, int]]):
    """The original loader: open, decode and transform each JPEG in ``__getitem__``."""

    def __init__(self, paths: list[Path], labels: list[int], transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.paths = paths
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            pixels = functional.pil_to_tensor(image.convert("RGB"))
        return self.transform(pixels), self.labels[index]


def epoch_seconds(loader: Iterable[object]) -> float:
    """Seconds for one full pass of ``loader``."""
    start = time.perf_counter()
    for _batch in loader:
        pass
    return time.perf_counter() - start


def best_rates(loaders: dict[str, DataLoader], items: int) -> dict[str, float]:
    """Samples per second of each loader's fastest of ``REPEATS`` epochs, interleaved so background load hits all alike."""
    seconds: dict[str, list[float]] = {name: [] for name in loaders}
    for _repeat in range(REPEATS):
        for name, loader in loaders.items():
            seconds[name].append(epoch_seconds(loader))
    return {name: items / min(times) for name, times in seconds.items()}


def manifest_and_folder(image_dir: Path | None, limit: int, scratch: Path) -> tuple[pl.DataFrame, Path]:
    """The first ``limit`` manifest rows and their photo folder: the real data, or a generated sample."""
    if image_dir is None and (MARKETPLACE / "images_224").is_dir():
        image_dir = MARKETPLACE / "images_224"
    if image_dir is not None:
        tables = clean_tables(MARKETPLACE / "Products.csv", MARKETPLACE / "Images.csv")
        print(f"photos: {image_dir}")
        return tables.manifest.images.head(limit), image_dir
    print(f"real data not found at {MARKETPLACE}: using a generated sample (raw photos of varied sizes)")
    sample = write_sample(scratch / "sample", products=max(1, round(limit * SAMPLE_PRODUCTS_PER_PHOTO)), seed=0)
    return clean_tables(sample.products_csv, sample.images_csv).manifest.images.head(limit), sample.image_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", type=Path, default=None, help="photo folder (default: the real images_224)")
    parser.add_argument("--size", type=int, default=224, help="model input side in pixels (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=2000, help="manifest rows to use (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Build the cache, then time an epoch of each loader and print the figures."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        manifest, image_dir = manifest_and_folder(args.image_dir, args.limit, Path(scratch))
        start = time.perf_counter()
        cache = build_image_cache(manifest, image_dir, Path(scratch) / "cache", size=args.size, progress=False)
        build_seconds = time.perf_counter() - start
        codec = label_codec(manifest["category"])
        transform = eval_transform(args.size)
        kept = manifest.filter(pl.Series(cache.cached(manifest["image_id"])))
        cached = ImageDataset(cache.pixels, codec.encode(kept["category"]), np.arange(kept.height), transform,
                              positions=cache.rows_for(kept["image_id"]))
        paths = {path.stem: path for path in image_dir.iterdir()}
        baseline = PilDataset([paths[image_id] for image_id in cache.image_ids], cached.labels.tolist(), transform)
        items = len(cached)
        print(f"{items} photos ({cache.rejected.height} rejected), size {args.size}, batch {BATCH_SIZE}")
        print(f"cache build (one-off, all cores): {build_seconds:.2f} s = {items / build_seconds:.0f} photos/s")
        loaders = {
            "PIL per item, num_workers=0": DataLoader(baseline, batch_size=BATCH_SIZE),
            f"PIL per item, num_workers={BASELINE_WORKERS}": DataLoader(
                baseline, batch_size=BATCH_SIZE, num_workers=BASELINE_WORKERS
            ),
            "cached ImageDataset, num_workers=0": DataLoader(cached, batch_size=BATCH_SIZE, collate_fn=ImageBatch.collate),
        }
        rates = best_rates(loaders, items)
    print(f"one epoch each, best of {REPEATS} (torch intra-op threads: 1):")
    for name, rate in rates.items():
        print(f"  {name:<38} {rate:8.0f} samples/s")
    cached_rate = rates["cached ImageDataset, num_workers=0"]
    for name in list(rates)[:2]:
        print(f"cached (num_workers=0) vs {name}: {cached_rate / rates[name]:.1f}x")


if __name__ == "__main__":
    main()
