"""The three classifiers on the real marketplace data: accuracy per product and training time.

    uv run python benchmarks/bench_models.py [--data DIR] [--image-size 96] [--out DIR] [--models text,image,combined]

Trains exactly what ``fbml train`` trains (``train_request`` + ``train_into_bundle``: product-level
70/15/15 split, seed 0, word2vec and vocabulary from the training products only, no pretrained
weights) into one bundle, in the order text, image, combined, and scores each on the test products.
In the same run, a TF-IDF + logistic-regression reference is fitted on the same training products.
Targets (issue "Models and training"): text >= 0.80 per product and above the reference, text
training under 5 minutes; combined at least as good as text, its whole training (the text and
image branches it starts from, then itself) under 30 minutes. The image model (from ``weights=None``)
has no target: its figures are reported as they are.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fbml.experiment import TrainResult
    from fbml.splits import Splits

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "marketplace"
TEXT_TARGET = 0.80
TEXT_SECONDS = 5 * 60
COMBINED_SECONDS = 30 * 60
REFERENCE_C = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA, help="folder with Products.csv, Images.csv, images_224/")
    parser.add_argument("--image-size", type=int, default=96, help="photo side the image branches train at")
    parser.add_argument("--out", type=Path, default=None, help="keep the bundle here (default: a temporary folder)")
    parser.add_argument("--models", default="text,image,combined", help="comma-separated, in training order")
    args = parser.parse_args(argv)
    if not (args.data / "Products.csv").is_file():
        print(f"skipped: {args.data / 'Products.csv'} not found (the real marketplace data is not on this machine)")
        return 0
    with tempfile.TemporaryDirectory(prefix="fbml-bench-models-") as scratch:
        run(args.data, args.out or Path(scratch), args.image_size, args.models.split(","))
    return 0


def run(data: Path, out: Path, image_size: int, kinds: list[str]) -> None:
    from fbml.experiment import train_into_bundle, train_request
    from fbml.pipeline import clean_tables, split_tables

    tables = clean_tables(data / "Products.csv", data / "Images.csv")
    results: dict[str, TrainResult] = {}
    for kind in kinds:
        request = train_request(kind, image_size=image_size, seed=0)
        results[kind] = train_into_bundle(
            tables, data / "images_224", out / "bundle", request,
            work_dir=out / "work", logdir=out / "runs" / kind, progress=False,
        )
        print(results[kind].summary(), flush=True)

    started = time.perf_counter()
    reference = tfidf_reference(split_tables(tables, seed=0).products)
    reference_seconds = time.perf_counter() - started

    print(f"\n{'model':28}{'seconds':>9}{'acc/product':>13}{'macro-F1':>10}{'acc/example':>13}")
    for kind, result in results.items():
        scores = result.test
        print(f"{kind:28}{result.seconds:>9.0f}{scores.per_product.accuracy:>13.3f}"
              f"{scores.per_product.macro_f1:>10.3f}{scores.per_example.accuracy:>13.3f}")
    print(f"{'TF-IDF + logistic regression':28}{reference_seconds:>9.0f}{reference:>13.3f}")
    print(f"(image models at {image_size} px, from weights=None; {len(tables.cleaned.products)} products)\n")
    report_targets(results, reference)


def report_targets(results: dict[str, TrainResult], reference: float) -> None:
    """Print each target this run can judge, MET or NOT MET."""
    lines = []
    if "text" in results:
        text = results["text"]
        accuracy = text.test.per_product.accuracy
        lines.append(("text >= 0.80 per product", accuracy >= TEXT_TARGET, f"{accuracy:.3f}"))
        lines.append(("text above the TF-IDF reference", accuracy > reference, f"{accuracy:.3f} vs {reference:.3f}"))
        lines.append(("text training < 5 min", text.seconds < TEXT_SECONDS, f"{text.seconds:.0f} s"))
    if {"text", "image", "combined"} <= results.keys():
        combined, text = results["combined"].test.per_product.accuracy, results["text"].test.per_product.accuracy
        whole = sum(result.seconds for result in results.values())
        lines.append(("combined >= text per product", combined >= text, f"{combined:.3f} vs {text:.3f}"))
        lines.append(("combined whole training < 30 min", whole < COMBINED_SECONDS, f"{whole:.0f} s"))
    for name, met, figure in lines:
        print(f"target {name}: {figure}: {'MET' if met else 'NOT MET'}")


def tfidf_reference(products: Splits) -> float:
    """Test accuracy (per product) of TF-IDF on name + description, sublinear tf, and logistic regression."""
    import polars as pl
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from fbml.text import TOKEN_PATTERN, product_text

    text = product_text(pl.col("product_name"), pl.col("product_description"))
    train, test = (frame.select(text).to_series().to_list() for frame in (products.train, products.test))
    vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN, sublinear_tf=True)
    classifier = LogisticRegression(C=REFERENCE_C, max_iter=2000)
    classifier.fit(vectorizer.fit_transform(train), products.train["category"].to_list())
    predicted = classifier.predict(vectorizer.transform(test))
    return float((predicted == products.test["category"].to_numpy()).mean())


if __name__ == "__main__":
    sys.exit(main())
