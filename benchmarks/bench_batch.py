"""Batch scoring against the model's own speed: ``fbml predict`` as a whole process (start-up included) next to
``Bundle.predict_many`` in this process on batches of 32, on both runtimes, in the same run.

Each of ``--repeats`` rounds measures, on the catalogue (``--products``/``--images``/``--image-dir``, else the
sample marketplace the small bundle is trained on):

- the model: ``Bundle.predict_many`` here, batches of 32: photos (``combined``, each with its product's text,
  given decoded: the yardstick is the model, not the JPEG decoder) and texts (``text``); torch, then ONNX;
- the batch job: ``fbml predict`` in a fresh process over the whole catalogue (photos per second of wall time),
  and over the products table alone (texts per second; ``--text-products``, else the catalogue's), with
  ``--runtime torch`` and ``--runtime onnx``.

It prints each rate's median [min-max] over the rounds, the machine's load (its 1-minute average) at the start and
end of each round, and the paired ratios: process/model for photos and texts (target >= ``PROCESS_TARGET``) and
ONNX/torch for the process (target >= ``ONNX_TARGET``); beside them
the HTTP API's ``/predict/combined`` rate (``benchmarks/bench_api.py``'s load, ``--api-seconds``, 0 skips it);
then rows/s of ``fbml predict`` on a ``--catalogue-products`` generated catalogue (the sample's tables and small
photos repeated under new ids; 0 skips it). The bundle (``--bundle``, else one trained here on the sample at 64 px)
must have ONNX graphs (``fbml export-onnx``).

``--workers N`` is passed to ``fbml predict`` (default: its own, one worker process per core).

    uv run python benchmarks/bench_batch.py [--bundle DIR --products P --images I --image-dir D] [--text-products P] [--repeats 3]
        [--photos 512] [--texts 512] [--api-seconds 10] [--catalogue-products 100000] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytecode import compiled_here

PROCESS_TARGET = 0.8
ONNX_TARGET = 1.8
BATCH = 32
SAMPLE_PHOTO_SIZE = 96
RUNTIMES = ("torch", "onnx")


@attrs.frozen
class Inputs:
    """A catalogue to score."""

    products: Path
    images: Path
    image_dir: Path


@attrs.frozen
class Round:
    """One round's rates (per second): the model in-process and the batch process, by runtime; and the machine's
    load (1-minute average) at its start and end."""

    model_photos: dict[str, float]
    model_texts: dict[str, float]
    process_photos: dict[str, float]
    process_texts: dict[str, float]
    load: list[float] = attrs.field(factory=list)


def main() -> None:
    args = _arguments()
    print(compiled_here(), flush=True)
    with tempfile.TemporaryDirectory(prefix="fbml-bench-batch-") as scratch_name:
        scratch = Path(scratch_name)
        if args.bundle is None:
            bundle_dir, inputs = small_bundle(scratch, args.sample_products)
        else:
            if args.products is None or args.images is None or args.image_dir is None:
                raise SystemExit("--bundle needs --products, --images and --image-dir")
            bundle_dir, inputs = args.bundle, Inputs(args.products, args.images, args.image_dir)
        text_inputs = inputs if args.text_products is None else attrs.evolve(inputs, products=args.text_products)
        photos, texts = model_inputs(bundle_dir, inputs, text_inputs, args.photos, args.texts)
        print(f"catalogue: {inputs.products}, texts of {text_inputs.products}; model measured on {len(photos)} photos and "
              f"{len(texts)} texts", flush=True)  # fmt: skip
        rounds = []
        for repeat in range(args.repeats):
            found = one_round(bundle_dir, inputs, text_inputs, photos, texts, scratch / f"round-{repeat}",
                              runtimes=RUNTIMES if repeat % 2 == 0 else RUNTIMES[::-1], workers=args.workers)  # fmt: skip
            print(f"round {repeat + 1}: {found}", flush=True)
            rounds.append(found)
        print(summary(rounds))
        if args.api_seconds > 0:
            print(f"HTTP API /predict/combined (torch, 32 clients, {args.api_seconds:g} s): {api_rate(bundle_dir, inputs, args.api_seconds):.1f} photos/s")
        if args.catalogue_products > 0:
            catalogue = generated_catalogue(inputs, scratch / "catalogue", args.catalogue_products)
            for runtime in RUNTIMES:
                seconds = process_seconds(bundle_dir, catalogue, scratch / f"catalogue-{runtime}", runtime=runtime, workers=args.workers)
                rows = pl.read_parquet(scratch / f"catalogue-{runtime}" / "predictions.parquet").height
                print(f"generated catalogue, {args.catalogue_products} product rows, --runtime {runtime}: {rows} rows in "
                      f"{seconds:.1f} s = {rows / seconds:.1f} rows/s")  # fmt: skip


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="a bundle with ONNX graphs (default: train a small one)")
    parser.add_argument("--products", type=Path, default=None, help="with --bundle: the raw products table")
    parser.add_argument("--images", type=Path, default=None, help="with --bundle: the raw images table")
    parser.add_argument("--image-dir", type=Path, default=None, help="with --bundle: the photo folder")
    parser.add_argument("--sample-products", type=int, default=650, help="without --bundle: the sample's size (default 650)")
    parser.add_argument("--text-products", type=Path, default=None,
                        help="the raw products table the texts are scored from (default: the catalogue's)")
    parser.add_argument("--photos", type=int, default=512, help="photos the model is timed on in-process (default 512)")
    parser.add_argument("--texts", type=int, default=512, help="texts the model is timed on in-process (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--api-seconds", type=float, default=10.0, help="load on the HTTP API (default 10; 0 skips it)")
    parser.add_argument("--catalogue-products", type=int, default=100_000,
                        help="product rows of the generated catalogue (default 100000; 0 skips it)")
    parser.add_argument("--workers", type=int, default=None, help="fbml predict's --workers (default: its own)")
    return parser.parse_args()


def small_bundle(scratch: Path, products: int) -> tuple[Path, Inputs]:
    """Text, image and combined models (one epoch each, 64 px) trained on a sample marketplace whose photos are
    cleaned to ``SAMPLE_PHOTO_SIZE`` px, exported to ONNX and indexed."""
    from fbml.sample.marketplace import write_sample
    from fbml.tables.clean import clean_tables
    from fbml.vision.cleaning import clean_images
    from fbml.workflows.export import export_onnx
    from fbml.workflows.train import train_into_bundle, train_request

    print(f"no --bundle: training a small one on a {products}-product sample marketplace", file=sys.stderr, flush=True)
    sample = write_sample(scratch / "sample", products=products, seed=0, progress=False)
    clean_images(sample.image_dir, scratch / "images", size=SAMPLE_PHOTO_SIZE, progress=False)
    tables = clean_tables(sample.products_csv, sample.images_csv)
    for kind in ("text", "image", "combined"):
        request = train_request(kind, epochs=1, image_size=64)
        train_into_bundle(tables, scratch / "images", scratch / "bundle", request, work_dir=scratch / "work", progress=False)
    export_onnx(scratch / "bundle")
    return scratch / "bundle", Inputs(sample.products_csv, sample.images_csv, scratch / "images")


def model_inputs(bundle_dir: Path, inputs: Inputs, text_inputs: Inputs, count: int,
                 text_count: int) -> tuple[list[tuple[str, np.ndarray]], list[str]]:  # fmt: skip
    """The first ``count`` photos of the catalogue, decoded as ``fbml predict`` decodes them, each with its
    product's text; and the first ``text_count`` texts of ``text_inputs``' products."""
    from fbml.bundle.store import load_bundle
    from fbml.tables.clean import clean_tables
    from fbml.text.listings import listing_texts
    from fbml.vision.cache import load_photos

    bundle = load_bundle(bundle_dir)
    tables = clean_tables(inputs.products, inputs.images)
    assert tables.manifest is not None and bundle.image is not None
    manifest = tables.manifest.images.head(count + count // 8)
    loaded = load_photos(manifest, inputs.image_dir, size=bundle.image.size, progress=False)
    decoded = manifest[loaded.rows]
    pairs = list(zip(listing_texts(decoded), (pixels.transpose(1, 2, 0) for pixels in loaded.pixels), strict=True))[:count]
    return pairs, listing_texts(clean_tables(text_inputs.products).cleaned.products.head(text_count))


def one_round(bundle_dir: Path, inputs: Inputs, text_inputs: Inputs, photos: list[tuple[str, np.ndarray]], texts: list[str],
              scratch: Path, *, runtimes: tuple[str, ...], workers: int | None) -> Round:  # fmt: skip
    """Each runtime's model rates here and process rates in a fresh process (texts: ``text_inputs``' products)."""
    from fbml.bundle.store import load_bundle

    found = Round({}, {}, {}, {}, [os.getloadavg()[0]])
    photo_count = _photo_rows(inputs)
    text_count = _product_rows(text_inputs)
    for runtime in runtimes:
        bundle = load_bundle(bundle_dir, runtime=runtime)
        bundle.predict_many(texts=[text for text, _ in photos[:BATCH]], images=[pixels for _, pixels in photos[:BATCH]],
                            role="combined")  # warm up  # fmt: skip
        started = time.perf_counter()
        bundle.predict_many(texts=[text for text, _ in photos], images=[pixels for _, pixels in photos], role="combined", batch_size=BATCH)
        found.model_photos[runtime] = len(photos) / (time.perf_counter() - started)
        started = time.perf_counter()
        bundle.predict_many(texts=texts, role="text", batch_size=BATCH)
        found.model_texts[runtime] = len(texts) / (time.perf_counter() - started)
        found.process_photos[runtime] = photo_count / process_seconds(bundle_dir, inputs, scratch / f"photos-{runtime}", runtime=runtime,
                                                                      workers=workers)  # fmt: skip
        found.process_texts[runtime] = text_count / process_seconds(bundle_dir, text_inputs, scratch / f"texts-{runtime}", runtime=runtime,
                                                                    with_photos=False, workers=workers)  # fmt: skip
    found.load.append(os.getloadavg()[0])
    return found


def process_seconds(bundle_dir: Path, inputs: Inputs, out: Path, *, runtime: str, with_photos: bool = True,
                    workers: int | None = None) -> float:  # fmt: skip
    """Wall seconds of ``fbml predict`` in a fresh process, start-up included (photos with their texts, or texts alone;
    its default worker processes, or ``workers``)."""
    photos = ["--images", str(inputs.images), "--image-dir", str(inputs.image_dir)] if with_photos else []
    chosen = [] if workers is None else ["--workers", str(workers)]
    command = [sys.executable, "-m", "fbml.cli", "predict", str(bundle_dir), "--products", str(inputs.products), *photos,
               "--out", str(out), "--runtime", runtime, "--device", "cpu", *chosen]  # fmt: skip
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"fbml predict failed ({completed.returncode}): {completed.stderr.strip().splitlines()[-1:]}")
    return seconds


def _photo_rows(inputs: Inputs) -> int:
    """Photos ``fbml predict`` scores: the manifest's rows whose photo decodes (the run's rejected rows say which do not)."""
    from fbml.tables.clean import clean_tables

    tables = clean_tables(inputs.products, inputs.images)
    assert tables.manifest is not None
    return tables.manifest.images.height


def _product_rows(inputs: Inputs) -> int:
    from fbml.tables.clean import clean_tables

    return clean_tables(inputs.products).cleaned.products.height


def summary(rounds: list[Round]) -> str:
    """Each rate's median [min-max] and the paired ratios against their targets."""
    lines = [f"{'rate (per s)':34}{'torch':>22}{'onnx':>22}{'onnx/torch':>22}"]
    for name in ("model_photos", "process_photos", "model_texts", "process_texts"):
        rates = {runtime: [getattr(found, name)[runtime] for found in rounds] for runtime in RUNTIMES}
        ratio = [onnx / torch for torch, onnx in zip(rates["torch"], rates["onnx"], strict=True)]
        lines.append(f"{name.replace('_', ' '):34}{_spread(rates['torch']):>22}{_spread(rates['onnx']):>22}{_spread(ratio, 2, 'x'):>22}")
    for kind in ("photos", "texts"):
        for runtime in RUNTIMES:
            ratio = [getattr(r, f"process_{kind}")[runtime] / getattr(r, f"model_{kind}")[runtime] for r in rounds]
            lines.append(_target(f"{kind}: fbml predict / predict_many in-process ({runtime})", ratio, PROCESS_TARGET))
    onnx = [r.process_photos["onnx"] / r.process_photos["torch"] for r in rounds]
    lines.append(_target("photos: fbml predict --runtime onnx / --runtime torch", onnx, ONNX_TARGET))
    lines.append("load (1-minute average) at each round's start-end: " + ", ".join(f"{r.load[0]:.1f}-{r.load[-1]:.1f}" for r in rounds))
    return "\n".join(lines)


def _target(what: str, ratios: list[float], target: float) -> str:
    ratio = statistics.median(ratios)
    return f"{'MET' if ratio >= target else 'NOT MET':8} {what} >= {target}x: {_spread(ratios, 2, 'x')}"


def _spread(values: list[float], digits: int = 1, unit: str = "") -> str:
    """``median [min-max]``."""
    return f"{statistics.median(values):.{digits}f}{unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def api_rate(bundle_dir: Path, inputs: Inputs, seconds: float) -> float:
    """Photos/s of ``fbml serve``'s ``/predict/combined`` under 32 clients (``bench_api``'s load)."""
    from fbml.tables.clean import clean_tables
    from fbml.text.listings import listing_texts

    from bench_api import Payloads, load, server

    tables = clean_tables(inputs.products, inputs.images)
    assert tables.manifest is not None
    files = {path.stem: path for path in inputs.image_dir.iterdir()}
    rows = tables.manifest.images.filter(pl.col("image_id").is_in(list(files))).head(64)
    payloads = Payloads(tuple(files[image_id].read_bytes() for image_id in rows["image_id"]), tuple(listing_texts(rows)))
    with server(bundle_dir, "torch", workers=1) as base_url:
        result = asyncio.run(load(base_url, "torch", "/predict/combined", payloads, clients=32, seconds=seconds))
    return result.rate


def generated_catalogue(inputs: Inputs, root: Path, products: int) -> Inputs:
    """A catalogue of about ``products`` product rows: the raw tables repeated with ``-k`` added to every id, and
    each copy's photos hard links to the originals (so the photos are the sample's small ones, on no more disk)."""
    from fbml.sample.marketplace import write_raw_table

    raw_products = pl.read_csv(inputs.products, infer_schema=False)
    raw_images = pl.read_csv(inputs.images, infer_schema=False)
    copies = max(1, -(-products // raw_products.height))
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    files = {path.stem: path for path in inputs.image_dir.iterdir() if path.is_file()}
    product_frames, image_frames = [], []
    for copy in range(copies):
        suffix = pl.lit(f"-{copy}")
        product_frames.append(raw_products.with_columns(pl.col("id") + suffix))
        image_frames.append(raw_images.with_columns(pl.col("id") + suffix, pl.col("product_id") + suffix))
        for image_id in raw_images["id"].to_list():
            if image_id in files:
                os.link(files[image_id], image_dir / f"{image_id}-{copy}{files[image_id].suffix}")
    write_raw_table(pl.concat(product_frames).head(products), root / "Products.csv")
    write_raw_table(pl.concat(image_frames), root / "Images.csv")
    return Inputs(root / "Products.csv", root / "Images.csv", image_dir)


if __name__ == "__main__":
    main()
