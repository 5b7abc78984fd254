"""The ``fbml`` command line: thin wrappers that compose the library's stages."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeAlias

from fbml.errors import FbmlError

if TYPE_CHECKING:
    from fbml.modeling.distributed import World
    from fbml.tables.clean import CleanTables
    from fbml.workflows.train import TrainRequest

Command = Callable[[argparse.Namespace], int | None]
"""A command: its exit status (None: 0)."""
Commands: TypeAlias = "argparse._SubParsersAction[Parser]"
POLARS_ALLOCATOR = ("_RJEM_MALLOC_CONF", "dirty_decay_ms:2000,muzzy_decay_ms:2000")
"""How long polars' allocator (jemalloc) keeps freed memory before giving it back to the system. polars'
own defaults are 0.5 s and 1 s, and ``clean-products`` cleans a batch in about a second, so each batch
faulted its memory in afresh (half a million page faults on 1M rows; the kernel's page handling took a
sixth of the command's CPU time); kept 2 s, the next batch reuses the last one's. polars reads the
variable when it is imported (after its own defaults, so these win); a value the user set is kept."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit 2), as every other fbml error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fbml: error: {self.prog}: {message} (see {self.prog} --help)\n")


def console_script() -> NoReturn:
    """The ``fbml`` executable: ``main`` on the process's arguments, then exit with its status.

    The collector's heap is frozen before the exit: the interpreter's last collections would otherwise walk every
    object alive, about 0.5 s of each torch-loading command's wall time here (atexit handlers still run). Not once
    triton is loaded (torchvision loads it: training does): its bindings report objects left uncollected as leaks."""
    status = main()
    if "triton" not in sys.modules:
        gc.freeze()
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``fbml`` command; user errors print one line and exit 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.run(args)
    except FbmlError as error:
        print(f"fbml: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fbml: interrupted", file=sys.stderr)
        return 130
    return status or 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per stage."""
    parser = Parser(prog="fbml", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND", parser_class=Parser)
    _add_sample(commands)
    _add_clean_products(commands)
    _add_clean_images(commands)
    _add_baselines(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_index(commands)
    _add_predict(commands)
    _add_export_onnx(commands)
    _add_serve(commands)
    _add_quickstart(commands)
    _add_monitor(commands)
    return parser


def _command(commands: Commands, name: str, run: Command, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=help)
    parser.set_defaults(run=run)
    return parser


def _add_sample(commands: Commands) -> None:
    parser = _command(commands, "sample", _run_sample, "Write the built-in sample marketplace (raw CSVs and photos).")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--products", type=_positive_int, default=650, help="number of product rows (default 650)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_clean_products(commands: Commands) -> None:
    parser = _command(
        commands, "clean-products", _run_clean_products, "Clean a raw products table and join its images table."
    )
    parser.add_argument("products", metavar="PRODUCTS_CSV", help="local path or s3:// URI")
    parser.add_argument("--images", metavar="IMAGES_CSV", help="local path or s3:// URI of the images table")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the parquet outputs")
    parser.add_argument("--engine", choices=("polars", "ray"), default="polars",
                        help="polars: its streaming engine, in bounded memory (default); ray: Ray Data map_batches "
                             "on a Ray cluster (install fbml[ray])")
    parser.add_argument("--address", metavar="ADDR", default=None,
                        help="with --engine ray: the cluster (ray://HOST:10001, or auto for the one this machine "
                             "belongs to); default: a local cluster started for the run")


def _add_clean_images(commands: Commands) -> None:
    parser = _command(
        commands, "clean-images", _run_clean_images, "Scale photos to a square on black, RGB JPEG, in parallel."
    )
    parser.add_argument("src", type=Path, metavar="SRC_DIR")
    parser.add_argument("dst", type=Path, metavar="DST_DIR")
    parser.add_argument("--size", type=_positive_int, default=512, help="output side in pixels (default 512)")
    parser.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")


def _add_baselines(commands: Commands) -> None:
    parser = _command(
        commands,
        "baselines",
        _run_baselines,
        "Price from category and category from pixels, on the product-level test split of raw inputs.",
    )
    _add_raw_inputs(parser)
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("--pixel-size", type=_positive_int, default=32, help="photo side for the pixel baseline")
    parser.add_argument(
        "--price-range", type=float, nargs=2, default=(1.0, 1000.0), metavar=("LOW", "HIGH"),
        help="keep LOW < price < HIGH (default 1 1000, as the original)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_raw_inputs(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--products", required=required, metavar="PRODUCTS_CSV", help="raw products table (path or s3://)")
    parser.add_argument("--images", required=required, metavar="IMAGES_CSV", help="raw images table (path or s3://)")
    parser.add_argument("--image-dir", type=Path, metavar="DIR", help="photos named <image id>.<ext>, raw or cleaned")


def _add_train(commands: Commands) -> None:
    parser = _command(commands, "train", _run_train, "Train a model on raw inputs and add it to a bundle.")
    parser.add_argument("--model", required=True, choices=("image", "text", "combined"), help="which model")
    _add_raw_inputs(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="BUNDLE", help="bundle directory (created or extended)")
    parser.add_argument("--epochs", type=_positive_int, default=None, help="most epochs (default: the model's recipe)")
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="image backbone: efficientnet_lite0 (default: ImageNet weights shipped offline) or resnet50")
    parser.add_argument("--image-size", type=_positive_int, default=None, help="photo side in pixels (default: the backbone's)")
    parser.add_argument("--weights", default=None,
                        help="backbone start: none, imagenet or a weights file (default: the backbone's; "
                             "resnet50's imagenet weights download)")
    parser.add_argument("--trainable-stages", type=int, default=None, help="backbone stages trained (default: the backbone's)")
    parser.add_argument("--no-feature-cache", action="store_true", help="run the frozen stages every epoch")
    parser.add_argument("--no-refit", action="store_true",
                        help="keep the models trained on the training split (default: once chosen on validation, "
                             "train them again on training + validation, score the test split with those, then "
                             "train them on every product and ship those)")
    parser.add_argument("--keep-test-split", action="store_true",
                        help="ship the models trained on training + validation, which never saw the test split")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    parser.add_argument("--logdir", type=Path, default=None, help="TensorBoard folder (default BUNDLE.work/runs/MODEL)")
    parser.add_argument("--work-dir", type=Path, default=None, help="caches and checkpoints (default BUNDLE.work)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--nproc", type=_positive_int, default=None,
                        help="training processes on this machine, in data parallel (default 1; gloo on CPU, NCCL on "
                             "CUDA, one GPU each); leave it out under torchrun, which starts the processes itself")


def _add_evaluate(commands: Commands) -> None:
    parser = _command(commands, "evaluate", _run_evaluate, "Score every predictor and model of a bundle on raw inputs.")
    parser.add_argument("bundle", type=Path, metavar="BUNDLE")
    _add_raw_inputs(parser)
    parser.add_argument("--report", type=Path, default=None, metavar="DIR", help="write an HTML report with pictures here")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N or mps")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_index(commands: Commands) -> None:
    parser = _command(
        commands, "index", _run_index,
        "Rebuild a bundle's similar-listings index over a catalogue and print its precision@10; or add, replace or "
        "remove listings of the index without rebuilding it.",
    )
    parser.add_argument("bundle", type=Path, metavar="BUNDLE")
    _add_raw_inputs(parser, required=False)
    change = parser.add_mutually_exclusive_group()
    change.add_argument("--add", action="store_true",
                        help="add the products of --products/--images to the index (replacing those of the same id)")
    change.add_argument("--remove", nargs="+", metavar="ID", help="remove these product ids from the index")
    change.add_argument("--remove-file", type=Path, metavar="FILE", help="remove the product ids of FILE (one a line)")
    parser.add_argument("--work-dir", type=Path, default=None, help="photo and feature caches (default BUNDLE.work)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N or mps")
    parser.add_argument("--method", choices=("auto", "exact", "hnsw"), default="auto",
                        help="similar-listings search: exact, HNSW (approximate) or auto (exact while small; default)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a line")


def _add_predict(commands: Commands) -> None:
    parser = _command(commands, "predict", _run_predict,
                      "Score every clean product of a catalogue with a bundle, in parts a killed run resumes from.")
    parser.add_argument("bundle", type=Path, metavar="BUNDLE")
    parser.add_argument("--products", required=True, metavar="PRODUCTS_CSV", help="raw products table (path or s3://)")
    parser.add_argument("--images", default=None, metavar="IMAGES_CSV", help="raw images table (path or s3://); none: text alone")
    parser.add_argument("--image-dir", type=Path, metavar="DIR", help="photos named <image id>.<ext>, raw or cleaned")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for predictions.parquet, rejected.parquet and the parts of the run")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="run the networks with torch, or with ONNX Runtime (after `fbml export-onnx`)")
    parser.add_argument("--device", default="auto", help="torch runtime: auto (CUDA when present), cpu, cuda, cuda:N or mps")
    parser.add_argument("--engine", choices=("polars", "ray"), default="polars",
                        help="polars: score here, decoding photos while the model runs (default); ray: Ray Data "
                             "map_batches over an actor pool, each loading the bundle once (install fbml[ray])")
    parser.add_argument("--address", metavar="ADDR", default=None,
                        help="with --engine ray: the cluster (ray://HOST:10001, or auto); default: a local cluster "
                             "started for the run")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="listings per model run (default 32)")
    parser.add_argument("--part-size", type=_positive_int, default=None,
                        help="products per part written: what a kill can lose (default 512, or fewer to make 8 parts, "
                             "so that the workers share a small catalogue)")
    parser.add_argument("--embeddings", action="store_true", help="add each listing's vector (the bundle needs an index)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="processes that score parts side by side, each loading the bundle once (default: one per "
                             "core on the CPU, one on a GPU; 1: score in this process)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="inference threads of each scoring process (default: its share of the cores, as torch and "
                             "ONNX Runtime choose in a program of their own; the next part's photos decode beside them)")
    parser.add_argument("--resume", action="store_true", help="continue the run whose parts are in DIR")


def _run_predict(args: argparse.Namespace) -> None:
    from fbml.bundle.store import read_manifest
    from fbml.files import check_destination, check_output_folder
    from fbml.vision.cache import check_photo_folder
    from fbml.workflows.predict import PredictOptions, available_cores, predict_catalogue

    if args.address is not None and args.engine != "ray":
        raise FbmlError("--address is for --engine ray")
    if args.workers is not None and args.engine != "polars":
        raise FbmlError("--workers is for --engine polars (Ray runs an actor per CPU of its cluster)")
    read_manifest(args.bundle)  # not a bundle: stop before cleaning the tables
    check_photo_folder(args.image_dir)
    check_destination(args.out, "output folder", photo_folder=args.image_dir, bundle=args.bundle)
    check_output_folder(args.out)
    device = _runtime_device(args.runtime, args.device)
    if args.engine == "ray":
        # Workers run this interpreter, not a fresh `uv run` environment each (set it to 1 to have them).
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    workers = args.workers or (available_cores() if device == "cpu" else 1)
    threads = args.threads or max(1, available_cores() // workers)
    if args.runtime == "torch" and args.engine == "polars" and workers == 1 and args.threads:
        # Asked for: set here (torch is imported for it). Else torch keeps its own choice, one per core, and is
        # imported where the bundle loads, beside the cleaning of the tables. Worker processes set their own.
        from fbml.modeling.torch_runtime import set_threads

        set_threads(threads)
    options = PredictOptions(runtime=args.runtime, device=device, batch_size=args.batch_size, part_size=args.part_size,
                             embeddings=args.embeddings, threads=threads, workers=workers if args.engine == "polars" else 1)
    summary = predict_catalogue(args.bundle, args.products, args.images, args.image_dir, args.out, options=options,
                                resume=args.resume, engine=args.engine, address=args.address)
    print(summary.summary())


def _runtime_device(runtime: str, device: str) -> str:
    """Where ``runtime`` runs the networks: torch on ``device`` resolved (``auto``: CUDA when present), ONNX Runtime
    on the CPU (``auto``), or on what was asked (which loading the bundle refuses). torch is imported only for torch
    on another device than ``cpu``."""
    if runtime == "onnx":
        return "cpu" if device == "auto" else device
    if device == "cpu":
        return device  # always there: nothing to import torch for
    from fbml.modeling.devices import resolve_device

    return str(resolve_device(device))


def _add_export_onnx(commands: Commands) -> None:
    parser = _command(commands, "export-onnx", _run_export_onnx,
                      "Add ONNX graphs of a bundle's networks (for `fbml serve --runtime onnx`), checked against torch.")
    parser.add_argument("bundle", type=Path, metavar="BUNDLE")


def _add_serve(commands: Commands) -> None:
    parser = _command(commands, "serve", _run_serve, "Serve a bundle over HTTP (predictions and recommendations).")
    parser.add_argument("bundle", type=Path, metavar="BUNDLE")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    parser.add_argument("--workers", type=_positive_int, default=1, help="server processes (default 1)")
    parser.add_argument("--decode-workers", type=_positive_int, default=1,
                        help="photo-decoding threads per server process (default 1)")
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="run the networks with torch, or with ONNX Runtime without torch (after `fbml export-onnx`)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines as text or JSON (default text)")
    parser.add_argument("--log-predictions", type=Path, default=None, metavar="DIR",
                        help="append a row per prediction (no text or photo) to size-bounded Parquet parts here, "
                             "for `fbml monitor --predictions DIR` (default: off)")
    parser.add_argument("--max-queue", type=_positive_int, default=None, metavar="N",
                        help="at most N inference requests at once per server process; more get 503 with Retry-After (default: no bound)")
    parser.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                        help="answer 504 to a request not answered within S seconds (default: none)")
    parser.add_argument("--grace", type=_positive_float, default=30.0, metavar="S",
                        help="on SIGTERM, seconds for the requests in flight to be answered (default 30)")
    parser.add_argument("--otel", action="store_true",
                        help="trace requests with OpenTelemetry (install fbml[otel]; OTLP over HTTP when its exporter is installed)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", dest="cors_origins",
                        help="let pages from ORIGIN (e.g. https://shop.example) read the answers; repeatable (default: none)")
    parser.add_argument("--photos", type=Path, default=None, metavar="DIR",
                        help="the cleaned photo folder (`fbml clean-images`' output): serve the listings' photos at /photos/{id}")


def _add_quickstart(commands: Commands) -> None:
    parser = _command(commands, "quickstart", _run_quickstart, "Run the whole pipeline on the sample marketplace.")
    parser.add_argument("--out", type=Path, default=Path("fbml-quickstart"), help="working folder")
    parser.add_argument("--products", type=_positive_int, default=650, help="sample size (default 650)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_monitor(commands: Commands) -> None:
    parser = _command(commands, "monitor", _run_monitor,
                      "Compare new listings (or served predictions) with what a bundle was trained on; exit 1 on drift.")
    parser.add_argument("bundle", type=Path, metavar="BUNDLE")
    parser.add_argument("--products", default=None, metavar="PRODUCTS_CSV", help="raw products table of new listings")
    parser.add_argument("--images", default=None, metavar="IMAGES_CSV", help="raw images table of new listings")
    parser.add_argument("--image-dir", type=Path, default=None, metavar="DIR", help="their photos named <image id>.<ext>")
    parser.add_argument("--predictions", type=Path, default=None, metavar="DIR",
                        help="a prediction log folder (`fbml serve --log-predictions DIR`) to check instead of or as well as listings")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR", help="write an HTML page with a picture per drifted check")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    parser.add_argument("--json", action="store_true", help='print {"drift": ..., "checks": [...]} instead of a table')


def _run_monitor(args: argparse.Namespace) -> int:
    """Exit 0 when nothing drifted, 1 when something did (2, by ``main``, on bad input)."""
    import json

    from fbml.workflows.monitor import monitor_command

    if args.products is None and (args.images is not None or args.image_dir is not None):
        raise FbmlError("monitor: --images and --image-dir come with --products")
    if args.products is None and args.predictions is None:
        raise FbmlError("monitor: give --products (with --images and --image-dir) and/or --predictions DIR")
    _check_folders(args, report=args.report)
    result = monitor_command(args.bundle, products=args.products, images=args.images, image_dir=args.image_dir,
                             predictions=args.predictions, report=args.report, device=args.device, progress=not args.json)  # fmt: skip
    print(json.dumps(result.to_json(), indent=2) if args.json else result.table())
    if args.json:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
    if args.report is not None:
        print(f"report: {args.report / 'index.html'}", file=sys.stderr if args.json else sys.stdout)
    return 1 if result.drift else 0


def _run_sample(args: argparse.Namespace) -> None:
    from fbml.files import check_output_folder
    from fbml.sample.marketplace import write_sample

    check_output_folder(args.out_dir)
    sample = write_sample(args.out_dir, products=args.products, seed=args.seed, progress=True)
    print(f"wrote {sample.products_csv}, {sample.images_csv} and photos in {sample.image_dir}")


def _run_clean_products(args: argparse.Namespace) -> None:
    os.environ.setdefault(*POLARS_ALLOCATOR)
    from fbml.files import check_output_folder
    from fbml.tables.clean import output_paths
    from fbml.tables.streaming import RawTables, stream_clean_tables

    if args.address is not None and args.engine != "ray":
        raise FbmlError("--address is for --engine ray")
    check_output_folder(args.out)
    raw = RawTables(args.products, args.images)
    if args.engine == "ray":
        from fbml.tables.ray_engine import ray_clean_tables

        # Workers run this interpreter, not a fresh `uv run` environment each (set it to 1 to have them).
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        counts = ray_clean_tables(raw, args.out, address=args.address)
    else:
        counts = stream_clean_tables(raw, args.out)
    print(counts.summary())
    print(f"wrote {', '.join(str(path) for path in output_paths(args.out, with_images=args.images is not None))}")


def _run_clean_images(args: argparse.Namespace) -> None:
    from fbml.files import check_destination, check_output_folder
    from fbml.vision.cleaning import clean_images

    check_destination(args.dst, "destination", source_folder=args.src)
    check_output_folder(args.dst)
    report = clean_images(args.src, args.dst, size=args.size, workers=args.workers)
    print(f"photos: {report.cleaned + report.rejected} read, {report.cleaned} cleaned, {report.rejected} rejected")
    for reason, count in report.rejected_by_reason().items():
        print(f"  rejected {count:>6}  {reason}")


def _run_baselines(args: argparse.Namespace) -> None:
    import json

    from fbml.tables.clean import clean_tables
    from fbml.workflows.baselines import run_baselines

    tables = clean_tables(args.products, args.images)
    baselines = run_baselines(
        tables, args.image_dir, seed=args.seed, price_range=tuple(args.price_range), pixel_size=args.pixel_size,
        progress=not args.json,
    )
    print(json.dumps(baselines.to_json(), indent=2) if args.json else baselines.table())


def _run_train(args: argparse.Namespace) -> None:
    """Check the request and clean the tables once, then train: here, in ``--nproc`` processes started through
    torch's elastic launcher, or as one of the processes torchrun started (RANK, WORLD_SIZE, LOCAL_RANK set)."""
    import os

    from fbml.modeling.devices import resolve_device
    from fbml.modeling.distributed import launch, world_from_environment
    from fbml.tables.clean import clean_tables
    from fbml.workflows.train import train_request

    _check_folders(args, bundle=args.out, work_dir=args.work_dir or args.out.with_name(args.out.name + ".work"), logdir=args.logdir)
    launched = world_from_environment(os.environ)
    if launched is not None and args.nproc is not None:
        raise FbmlError(f"--nproc {args.nproc}: this is already one of {launched.size} processes a launcher started "
                        "(RANK, WORLD_SIZE and LOCAL_RANK are set); leave --nproc out: torchrun's --nproc-per-node "
                        "says how many")
    request = train_request(
        args.model, epochs=args.epochs, backbone=args.backbone, image_size=args.image_size, weights=args.weights,
        trainable_stages=args.trainable_stages, feature_cache=not args.no_feature_cache, seed=args.seed,
        device=str(resolve_device(args.device)), refit=not args.no_refit, keep_test_split=args.keep_test_split,
    )
    tables = clean_tables(args.products, args.images)
    if launched is None and (args.nproc or 1) > 1:
        launch(args.nproc, _train_process, args, request, tables)
    else:
        _train_process(args, request, tables)


def _train_process(args: argparse.Namespace, request: TrainRequest, tables: CleanTables) -> None:
    """One training process: the only one, or one of several (its place read from the launcher's variables).

    Rank 0 prints the summary, and the line of an error that stops every rank; the others, stopped by it,
    exit 2 without a word."""
    import os

    from fbml.modeling.distributed import RankZeroError, World, world_from_environment
    from fbml.workflows.train import train_into_bundle

    world = world_from_environment(os.environ) or World()
    _share_cores(world)
    work_dir = args.work_dir or args.out.with_name(args.out.name + ".work")
    try:
        result = train_into_bundle(
            tables, args.image_dir, args.out, request, work_dir=work_dir,
            logdir=args.logdir or work_dir / "runs", resume=args.resume, world=world,
        )
    except RankZeroError:
        raise SystemExit(2) from None
    if world.is_main:
        print(result.summary())


def _share_cores(world: World) -> None:
    """Several training processes on one machine share its cores (torch would give each all of them); an
    ``OMP_NUM_THREADS`` in the environment (torchrun sets 1) is kept."""
    import os

    import torch

    if world.local_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // world.local_size))


def _run_evaluate(args: argparse.Namespace) -> None:
    import json
    import tempfile

    from fbml.bundle.store import load_bundle
    from fbml.modeling.devices import resolve_device
    from fbml.tables.clean import clean_tables
    from fbml.workflows.evaluate import evaluations, scores_table, similar_listings

    device = str(resolve_device(args.device))
    _check_folders(args, report=args.report)
    if args.report is not None:
        from fbml.workflows.report.folder import report_files

        report_files(args.report)  # a folder the report may not replace stops here, before any work
    bundle = load_bundle(args.bundle, device=device)
    tables = clean_tables(args.products, args.images)
    with tempfile.TemporaryDirectory(prefix="fbml-evaluate-") as work_dir:
        results = evaluations(bundle, tables, args.image_dir, work_dir=Path(work_dir), progress=not args.json)
        similar = similar_listings(bundle, tables, args.image_dir, work_dir=Path(work_dir), progress=not args.json)
    scores = {name: result.scores for name, result in results.items()}
    if args.report is not None:
        from fbml.workflows.evaluate import write_evaluation_report

        manifest = None if tables.manifest is None else tables.manifest.images
        page = write_evaluation_report(args.report, bundle, results, bundle_path=args.bundle, products=str(args.products),
                                       manifest=manifest, image_dir=args.image_dir, similar=similar)
        print(f"report: {page}", file=sys.stderr if args.json else sys.stdout)
    figures = {} if similar is None else {"similar_listings": dict(similar.figures)}
    if args.json:
        print(json.dumps({**{kind: score.to_json() for kind, score in scores.items()}, **figures}, indent=2))
    else:
        print(scores_table(scores, bundle.codec.classes))
        if similar is not None:
            print("similar listings (ten nearest among these products): "
                  + ", ".join(f"{name} {value:.3f}" for name, value in similar.figures.items()))


def _run_index(args: argparse.Namespace) -> None:
    import json

    from fbml.bundle.store import read_manifest
    from fbml.modeling.devices import resolve_device
    from fbml.tables.clean import clean_tables
    from fbml.workflows.index import index_bundle, index_summary

    if args.remove is not None or args.remove_file is not None:
        return _run_remove(args)
    if args.products is None or args.images is None:
        raise FbmlError("fbml index needs --products and --images (or --remove/--remove-file)")
    device = str(resolve_device(args.device))
    read_manifest(args.bundle)  # not a bundle: stop before cleaning the tables
    work_dir = args.work_dir or args.bundle.with_name(args.bundle.name + ".work")
    if args.add:
        return _run_add(args, device, work_dir)
    _check_folders(args, work_dir=work_dir)
    tables = clean_tables(args.products, args.images)
    report = index_bundle(args.bundle, tables, args.image_dir, work_dir=work_dir, device=device, progress=not args.json,
                          method=args.method)
    print(json.dumps(dict(report), indent=2) if args.json else index_summary(report))


def _run_add(args: argparse.Namespace, device: str, work_dir: Path) -> None:
    import json

    from fbml.tables.clean import clean_tables
    from fbml.workflows.catalogue import add_listings

    _check_folders(args, work_dir=work_dir)
    tables = clean_tables(args.products, args.images)
    change = add_listings(args.bundle, tables, args.image_dir, work_dir=work_dir, device=device, progress=not args.json)
    print(json.dumps(change.to_json(), indent=2) if args.json else change.summary())


def _run_remove(args: argparse.Namespace) -> None:
    import json

    from fbml.bundle.store import read_manifest
    from fbml.workflows.catalogue import checked_ids, ids_of_file, remove_listings

    if args.products is not None or args.images is not None:
        raise FbmlError("fbml index --remove takes product ids, not --products/--images")
    ids = checked_ids(args.remove, "--remove") if args.remove is not None else ids_of_file(args.remove_file)
    read_manifest(args.bundle)
    change = remove_listings(args.bundle, ids)
    print(json.dumps(change.to_json(), indent=2) if args.json else change.summary())


def _run_export_onnx(args: argparse.Namespace) -> None:
    import warnings

    from fbml.bundle.store import read_manifest
    from fbml.workflows.export import export_onnx

    read_manifest(args.bundle)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the CLI's own output: the exporter's notices are noise
    for kind, difference in export_onnx(args.bundle).items():
        print(f"{kind}: ONNX graph added; largest probability difference from torch {difference:.1e}")


def _run_serve(args: argparse.Namespace) -> None:
    from fbml.bundle.store import read_manifest
    from fbml.serving.photos import checked_photo_folder
    from fbml.serving.server import AppOptions, serve

    photo_dir = None if args.photos is None else str(checked_photo_folder(args.photos))
    read_manifest(args.bundle)
    _check_port(args.host, args.port)
    if args.log_predictions is not None:
        from fbml.serving.prediction_log import check_log_folder

        check_log_folder(args.log_predictions)
    if args.otel and importlib.util.find_spec("opentelemetry") is None:
        raise FbmlError("--otel needs OpenTelemetry: install fbml[otel]")
    options = AppOptions(decode_workers=args.decode_workers, runtime=args.runtime, log_format=args.log_format,
                         max_queue=args.max_queue, timeout=args.timeout, cors_origins=tuple(args.cors_origins), grace=args.grace,
                         otel=args.otel, log_predictions=None if args.log_predictions is None else str(args.log_predictions.resolve()),
                         photo_dir=photo_dir)

    serve(args.bundle, host=args.host, port=args.port, workers=args.workers, options=options)


def _run_quickstart(args: argparse.Namespace) -> None:
    from fbml.files import check_output_folder
    from fbml.quickstart import quickstart

    check_output_folder(args.out)
    quickstart(args.out, products=args.products, seed=args.seed)


def _check_folders(args: argparse.Namespace, **outputs: Path | None) -> None:
    """Refuse, before any work, a ``--image-dir`` that is missing (even where the command could do without it)
    and an output folder inside what the command reads: the photo folder, or the bundle for what is not it."""
    from fbml.files import check_destination
    from fbml.vision.cache import check_photo_folder

    check_photo_folder(args.image_dir)
    bundle = getattr(args, "bundle", None)
    for name, folder in outputs.items():
        sources = {"photo_folder": args.image_dir, "bundle": None if name == "bundle" else outputs.get("bundle", bundle)}
        check_destination(folder, name.replace("_", " "), **sources)


def _check_port(host: str, port: int) -> None:
    """Refuse, before loading anything, an address this machine cannot listen on."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as error:
        raise FbmlError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _port(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 1 and 65535, got {value}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None


if __name__ == "__main__":
    console_script()
