"""The ``fbml`` command line: thin wrappers that compose the library's stages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fbml.errors import FbmlError

Command = Callable[[argparse.Namespace], None]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``fbml`` command; user errors print one line and exit 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except FbmlError as error:
        print(f"fbml: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fbml: interrupted", file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per stage."""
    parser = argparse.ArgumentParser(prog="fbml", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_sample(commands)
    _add_clean_products(commands)
    _add_clean_images(commands)
    _add_quickstart(commands)
    return parser


def _command(commands: argparse._SubParsersAction, name: str, run: Command, help: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help, description=help)
    parser.set_defaults(run=run)
    return parser


def _add_sample(commands: argparse._SubParsersAction) -> None:
    parser = _command(commands, "sample", _run_sample, "Write the built-in sample marketplace (raw CSVs and photos).")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--products", type=_positive_int, default=650, help="number of product rows (default 650)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_clean_products(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands, "clean-products", _run_clean_products, "Clean a raw products table and join its images table."
    )
    parser.add_argument("products", metavar="PRODUCTS_CSV", help="local path or s3:// URI")
    parser.add_argument("--images", metavar="IMAGES_CSV", help="local path or s3:// URI of the images table")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the parquet outputs")


def _add_clean_images(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands, "clean-images", _run_clean_images, "Scale photos to a square on black, RGB JPEG, in parallel."
    )
    parser.add_argument("src", type=Path, metavar="SRC_DIR")
    parser.add_argument("dst", type=Path, metavar="DST_DIR")
    parser.add_argument("--size", type=_positive_int, default=512, help="output side in pixels (default 512)")
    parser.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")


def _add_quickstart(commands: argparse._SubParsersAction) -> None:
    parser = _command(commands, "quickstart", _run_quickstart, "Run the whole pipeline on the sample marketplace.")
    parser.add_argument("--out", type=Path, default=Path("fbml-quickstart"), help="working folder")
    parser.add_argument("--products", type=_positive_int, default=650, help="sample size (default 650)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _run_sample(args: argparse.Namespace) -> None:
    from fbml.sample import write_sample

    sample = write_sample(args.out_dir, products=args.products, seed=args.seed, progress=True)
    print(f"wrote {sample.products_csv}, {sample.images_csv} and photos in {sample.image_dir}")


def _run_clean_products(args: argparse.Namespace) -> None:
    from fbml.pipeline import clean_tables, write_clean_tables

    tables = clean_tables(args.products, args.images)
    write_clean_tables(tables, args.out)
    print(tables.summary())
    print(f"wrote {', '.join(str(path) for path in tables.output_paths(args.out))}")


def _run_clean_images(args: argparse.Namespace) -> None:
    from fbml.images import clean_images

    report = clean_images(args.src, args.dst, size=args.size, workers=args.workers)
    print(f"photos: {report.cleaned + report.rejected} read, {report.cleaned} cleaned, {report.rejected} rejected")
    for reason, count in report.rejected_by_reason().items():
        print(f"  rejected {count:>6}  {reason}")


def _run_quickstart(args: argparse.Namespace) -> None:
    from fbml.quickstart import quickstart

    quickstart(args.out, products=args.products, seed=args.seed)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


if __name__ == "__main__":
    sys.exit(main())
