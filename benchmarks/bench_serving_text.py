"""Text at the machine's speed: ``/predict/text`` over HTTP against ``Bundle.predict_many`` in-process, and one
text against a text in a batch, in the same run.

Each round times, in this process on one inference thread (as ``fbml serve`` runs on two cores): ``predict_many``
of ``--batch`` texts at a time (texts/s, and ms a text), and of one text at a time (ms a text); then serves the
bundle with ``fbml serve`` (one worker) on a free 127.0.0.1 port and runs ``--clients`` keep-alive clients
posting ``/predict/text`` for ``--seconds`` (``bench_api.load``). The texts are real listings' names and
descriptions (``--data``'s Products.csv) when present, else stock texts. Prints each round, the median
[min-max] of every figure and ratio, and MET / NOT MET for the targets: HTTP >= ``HTTP_TARGET`` x
``predict_many``'s texts/s, one text <= ``SINGLE_TARGET`` x a batched text's cost.

    uv run python benchmarks/bench_serving_text.py --bundle DIR [--seconds 10] [--clients 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from bench_api import Payloads, load, server

HTTP_TARGET = 0.5
SINGLE_TARGET = 3.0
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "marketplace"
STOCK_TEXTS = ("red mountain bike, 21 gears, good condition", "oak dining table and chairs", "Café crème sofa – barely used")


def main() -> None:
    args = _arguments()
    from fbml.bundle.store import load_bundle
    from fbml.modeling.torch_runtime import set_threads

    set_threads(1)
    bundle = load_bundle(args.bundle)
    texts = listing_texts(args.data, 256)
    rounds: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        figures = in_process(bundle, texts, batch=args.batch, seconds=args.seconds / 2)
        with server(args.bundle, "torch", workers=1) as base_url:
            result = asyncio.run(load(base_url, "torch", "/predict/text", Payloads((b"",), tuple(texts)), clients=args.clients,
                                      seconds=args.seconds))  # fmt: skip
        figures["http_rate"] = result.rate
        figures["http_errors"] = result.errors
        figures["http_p50_ms"] = result.percentile(50)
        figures["http_ratio"] = figures["http_rate"] / figures["batch_rate"]
        figures["single_ratio"] = figures["single_ms"] / figures["batch_ms"]
        rounds.append(figures)
        print(f"round {repeat + 1}: " + ", ".join(f"{name} {value:.3g}" for name, value in figures.items()), flush=True)
    print(f"{len(texts)} texts, batches of {args.batch}, {args.clients} clients, {args.seconds:g} s, {args.repeats} round(s)")
    for name in rounds[0]:
        print(f"  {name:14}{_spread([figures[name] for figures in rounds])}")
    http = statistics.median(figures["http_ratio"] for figures in rounds)
    single = statistics.median(figures["single_ratio"] for figures in rounds)
    print(f"{'MET' if http >= HTTP_TARGET else 'NOT MET':8} /predict/text at {args.clients} clients >= {HTTP_TARGET}x predict_many's "
          f"texts/s (median {http:.2f}x)")  # fmt: skip
    print(f"{'MET' if single <= SINGLE_TARGET else 'NOT MET':8} one text <= {SINGLE_TARGET}x a batched text's cost (median {single:.2f}x)")


def in_process(bundle: object, texts: list[str], *, batch: int, seconds: float) -> dict[str, float]:
    """``predict_many``'s texts/s and ms a text in batches of ``batch``, and ms a text one at a time."""
    from fbml.bundle.bundle import Bundle

    assert isinstance(bundle, Bundle)
    batches = [texts[start : start + batch] for start in range(0, len(texts) - batch + 1, batch)]
    bundle.predict_many(texts=batches[0], role="text", batch_size=batch)  # warm up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        chunk = batches[done // batch % len(batches)]
        bundle.predict_many(texts=chunk, role="text", batch_size=batch)
        done += len(chunk)
    batch_seconds = time.perf_counter() - started
    singles, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        bundle.predict_many(texts=[texts[singles % len(texts)]], role="text", batch_size=1)
        singles += 1
    single_seconds = time.perf_counter() - started
    return {"batch_rate": done / batch_seconds, "batch_ms": 1000 * batch_seconds / done, "single_ms": 1000 * single_seconds / singles}


def listing_texts(data: Path, count: int) -> list[str]:
    """The first ``count`` listings' raw names and descriptions (as a client would send them), else stock texts."""
    import polars as pl

    products = data / "Products.csv"
    if not products.is_file():
        return list(STOCK_TEXTS * (count // len(STOCK_TEXTS) + 1))[:count]
    frame = pl.read_csv(products, n_rows=count, infer_schema=False).select(
        pl.concat_str("product_name", "product_description", separator=" ", ignore_nulls=True)
    )
    return [text[:2000] for text in frame.to_series().to_list()]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle with a text predictor")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with Products.csv (default ../shared/data/marketplace)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per round (default 10)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--batch", type=int, default=32, help="texts per predict_many call (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    return parser.parse_args()


def _spread(values: list[float]) -> str:
    """``median [min-max]``."""
    return f"{statistics.median(values):.3g} [{min(values):.3g}-{max(values):.3g}]"


if __name__ == "__main__":
    main()
