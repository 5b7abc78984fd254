"""``fbml quickstart``: the whole pipeline on the built-in sample marketplace, with a summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl

from fbml.errors import FbmlError
from fbml.modeling.backbones import DEFAULT_BACKBONE
from fbml.sample.marketplace import SampleMarketplace, write_sample
from fbml.tables.clean import CleanTables, clean_tables, restricted_tables, write_clean_tables
from fbml.vision.cleaning import clean_images
from fbml.workflows.baselines import run_baselines
from fbml.workflows.train import TrainResult, train_into_bundle, train_request

QUICKSTART_IMAGE_SIZE = 128
TRAINING_IMAGE_SIZE = 96
QUICK_RECIPES = {"text": (15, 16), "image": (20, 32), "combined": (6, 32)}


def quickstart(out: Path, *, products: int = 650, seed: int = 0, image_size: int = QUICKSTART_IMAGE_SIZE) -> None:
    """Write the sample, clean it, run the baselines, train the three models into a bundle, summarise."""
    started = time.perf_counter()
    _step(f"1. sample marketplace ({products} products, seed {seed}) -> {out / 'sample'}")
    sample = write_sample(out / "sample", products=products, seed=seed, progress=True)

    _step(f"2. clean products and join images -> {out / 'clean'}")
    tables = clean_tables(sample.products_csv, sample.images_csv)
    write_clean_tables(tables, out / "clean")
    print(tables.summary())

    _step(f"3. clean photos to {image_size} px -> {out / 'images'}")
    report = clean_images(sample.image_dir, out / "images", size=image_size)
    print(f"photo files: {report.files.height} read, {report.cleaned} cleaned, {report.rejected} rejected")
    for reason, count in report.rejected_by_reason().items():
        print(f"  rejected {count:>6}  {reason}")
    usable = _photos_with_files(_photos(tables), out / "images")
    print(f"photos ready for training: {usable} of {_photos(tables).height} manifest rows")

    _step("4. baselines on the product-level test split")
    print(run_baselines(tables, out / "images", seed=seed).table())

    _step(f"5. train the text, image (pretrained {DEFAULT_BACKBONE}) and combined models -> {out / 'bundle'}")
    results = _train_all(tables, out, seed)
    print(_results_table(results))

    _step(f"6. evaluate the bundle on the test products -> {out / 'report'}")
    page = _test_report(out, tables, seed)
    print(f"report: {page}")

    _serve_demo(out / "bundle", sample)

    _step(f"done in {time.perf_counter() - started:.1f} s")


def _train_all(tables: CleanTables, out: Path, seed: int) -> list[TrainResult]:
    """The three models, small and fast, into one bundle (TensorBoard runs under ``out/runs``)."""
    results = []
    for kind, (epochs, batch_size) in QUICK_RECIPES.items():
        request = train_request(kind, epochs=epochs, batch_size=batch_size, image_size=TRAINING_IMAGE_SIZE, seed=seed)
        result = train_into_bundle(
            tables, out / "images", out / "bundle", request,
            work_dir=out / "work", logdir=out / "runs" / kind, progress=False,
        )
        print(result.summary(), flush=True)
        results.append(result)
    return results


def _results_table(results: list[TrainResult]) -> str:
    lines = [f"{'model':10}{'seconds':>9}{'test acc/example':>18}{'test acc/product':>18}{'macro-F1':>10}  chosen on validation"]
    for result in results:
        example, product = result.test.per_example, result.test.per_product
        lines.append(
            f"{result.kind:10}{result.seconds:>9.0f}"
            f"{example.accuracy:>18.3f}{product.accuracy:>18.3f}{product.macro_f1:>10.3f}  {' + '.join(result.choice['members'])}"
        )
    return "\n".join(lines)


def _test_report(out: Path, tables: CleanTables, seed: int) -> Path:
    """The HTML report of the bundle on the test split's products (the products no model trained on)."""
    from fbml.bundle.store import load_bundle
    from fbml.tables.splits import split_tables
    from fbml.workflows.evaluate import evaluations, write_evaluation_report

    test_ids = split_tables(tables, seed=seed).products.test["id"]
    test = restricted_tables(tables, pl.col("id").is_in(test_ids.implode()))
    bundle = load_bundle(out / "bundle")
    results = evaluations(bundle, test, out / "images", work_dir=out / "work", progress=False)
    manifest = None if test.manifest is None else test.manifest.images
    return write_evaluation_report(out / "report", bundle, results, bundle_path=out / "bundle",
                                   products="the sample's test products", manifest=manifest, image_dir=out / "images")


def _photos(tables: CleanTables) -> pl.DataFrame:
    """The sample's photo manifest (the sample always has an images table)."""
    if tables.manifest is None:
        raise FbmlError("the sample has no images table")
    return tables.manifest.images


def _photos_with_files(manifest: pl.DataFrame, image_dir: Path) -> int:
    cleaned = {path.stem for path in image_dir.glob("*.jpg")}
    return int(manifest["image_id"].is_in(list(cleaned)).sum())


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _serve_demo(bundle_dir: Path, sample: SampleMarketplace) -> None:
    """Serve the bundle on a free loopback port, ask each endpoint once about a sample listing, stop."""
    import httpx

    from fbml.bundle.store import load_bundle
    from fbml.serving.app import create_app
    from fbml.serving.server import serving

    _step(f"7. serve {bundle_dir} on 127.0.0.1 and ask each endpoint once")
    bundle = load_bundle(bundle_dir)
    listing, photo = _demo_listing(sample)
    text = f"{listing['product_name']} {listing['product_description']}"
    image = {"image": (photo.name, photo.read_bytes())}
    print(f"listing {listing['id']} ({listing['category']}): {text[:70]!r}, photo {photo.name}")
    with serving(create_app(bundle)) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        answers = {
            "GET  /health": client.get("/health"),
            "POST /predict/text": client.post("/predict/text", json={"text": text}),
            "POST /predict/image": client.post("/predict/image", files=image),
            "POST /predict/combined": client.post("/predict/combined", files={**image, "text": (None, text)}),
            "POST /recommend": client.post("/recommend", json={"product_id": listing["id"], "k": 5}),
        }
    for request, response in answers.items():
        print(f"  {request:24} {response.status_code}  {_gist(response.json())}")


def _demo_listing(sample: SampleMarketplace) -> tuple[dict[str, Any], Path]:
    """The first clean listing whose raw photo decodes, and that photo."""
    from fbml.vision.cleaning import open_image

    tables = clean_tables(sample.products_csv, sample.images_csv)
    files = {path.stem: path for path in sample.image_dir.iterdir()}
    for row in _photos(tables).filter(pl.col("image_id").is_in(list(files))).iter_rows(named=True):
        try:
            with open_image(files[row["image_id"]], size=None, max_pixels=50_000_000):
                return row, files[row["image_id"]]
        except Exception:  # the sample breaks some photos on purpose: try the next
            continue
    raise FbmlError(f"{sample.image_dir}: no readable photo")


def _gist(body: dict[str, Any]) -> str:
    """What an answer says, in one line."""
    if "top" in body:
        return ", ".join(f"{entry['category']} {entry['probability']:.2f}" for entry in body["top"][:3])
    if "results" in body:
        return "; ".join(f"{hit['name'][:30]!r} ({hit['category']}, {hit['score']:.2f})" for hit in body["results"][:3])
    return str(body)
