"""``fbml predict``: a bundle's prediction for every clean product of a catalogue, written in parts that a killed
run resumes from.

The tables are cleaned as ``fbml clean-products`` cleans them (polars' streaming engine, the contracts checked by
their rules: the tables ``fbml evaluate`` cleans, without importing pandera); the clean products are cut into
parts of ``part_size`` (with their photos), and each part is scored through the bundle's prediction path
(``fbml.workflows.predict_parts``): in this process, the bundle loading while the tables are cleaned and the next
part's photos decoding in a thread pool while this one's are scored; by worker processes on this machine, each
scoring whole parts (``fbml.workflows.predict_pool``); or on a Ray cluster (``fbml.workflows.predict_ray``).
Each part is written as ``DIR/parts/part-NNNNN.parquet`` (its rejected rows first, as ``rejected-NNNNN.parquet``),
each file through a temporary file and a rename, beside ``DIR/parts/state.json``, which names the bundle's model
version and the inputs' fingerprints: ``--resume`` scores only the parts not written yet, and refuses parts of
another bundle or other inputs. At the end ``DIR/predictions.parquet`` (the parts in product order) and
``DIR/rejected.parquet`` (cleaning's rejections and the parts') are assembled, every input row predicted or
rejected.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import polars as pl
from contracts.bundle import Manifest, Role
from tqdm import tqdm

from fbml.bundle.bundle import Bundle
from fbml.bundle.predictions import DEFAULT_BATCH
from fbml.bundle.store import load_bundle, model_version, read_manifest
from fbml.errors import FbmlError
from fbml.files import temporary_target, write_atomically
from fbml.tables.clean import CleanTables
from fbml.tables.streaming import RawTables, streamed_tables
from fbml.tables.validation import rejected_checked
from fbml.vision.cache import PhotoFolder
from fbml.workflows.predict_parts import (
    MANIFEST_ROW,
    PART,
    PRODUCT_ROW,
    DecodedPart,
    Part,
    ScoredPart,
    Sources,
    decoded_part,
    photo_role,
    scored_part,
)

PART_SIZE = 512
"""The most products per part by default: what a kill can lose, and (with their photos, decoded, twice over) what a
part holds in memory."""
MIN_PARTS = 8
"""The fewest parts a catalogue is cut into by default (its parts then smaller than ``PART_SIZE``): enough for worker
processes to share a small catalogue's work (each scores a part at a time)."""
STATE_FORMAT = "fbml.predict/1"
PARTS, STATE = "parts", "state.json"
PREDICTIONS, REJECTED = "predictions.parquet", "rejected.parquet"


@attrs.frozen
class PredictOptions:
    """How a catalogue is scored: the bundle's runtime and device, listings per model run, products per part (default:
    ``default_part_size``),
    whether to add each listing's vector, the photo-decoding threads (default: one per core), the inference
    threads (ONNX Runtime's sessions', and torch's in worker processes; default: the runtimes' own choice, and
    here torch's are the process's, set by the caller) and the worker processes of the default engine (1: score
    here, in this process; more: ``fbml.workflows.predict_pool``)."""

    runtime: str = "torch"
    device: str = "cpu"
    batch_size: int = DEFAULT_BATCH
    part_size: int | None = None
    embeddings: bool = False
    decode_workers: int | None = None
    threads: int | None = None
    workers: int = attrs.field(default=1, validator=attrs.validators.ge(1))


@attrs.frozen
class Catalogue:
    """A catalogue to score: its cleaned tables, where its rows came from, the photo folder, and its parts (of
    ``part_size`` products, the last one perhaps fewer)."""

    tables: CleanTables
    sources: Sources
    image_dir: Path | None
    parts: tuple[Part, ...]
    part_size: int


@attrs.frozen
class PredictSummary:
    """What became of every input row."""

    predicted_by_role: dict[str, int]
    rejected_by_stage_and_reason: dict[tuple[str, str], int]
    products_read: int
    photos_read: int
    resumed_parts: int
    paths: tuple[Path, Path]

    def summary(self) -> str:
        """Counts that account for every input row, and the files written."""
        predicted = sum(self.predicted_by_role.values())
        roles = ", ".join(f"{count} {role}" for role, count in sorted(self.predicted_by_role.items()))
        lines = [f"products: {self.products_read} read, {predicted} predicted ({roles or 'none'})"]
        if self.photos_read:
            lines.append(f"photos: {self.photos_read} read")
        lines += [f"  rejected {count:>6}  {stage}: {reason}" for (stage, reason), count in self.rejected_by_stage_and_reason.items()]
        if self.resumed_parts:
            lines.append(f"resumed: {self.resumed_parts} part(s) were written already")
        lines.append(f"wrote {self.paths[0]}, {self.paths[1]}")
        return "\n".join(lines)


def catalogue(products: str | Path, images: str | Path | None, image_dir: Path | None, *, scratch: Path,
              part_size: int | None = None) -> Catalogue:  # fmt: skip
    """The products and images tables cleaned (``streamed_tables``: as ``fbml clean-products`` cleans them, into a
    temporary folder in ``scratch``, removed after) and cut into parts of ``part_size`` (default:
    ``default_part_size``)."""
    if part_size is not None and part_size < 1:
        raise FbmlError(f"part size must be at least 1, got {part_size}")
    raw = RawTables(str(products), None if images is None else str(images))
    with tempfile.TemporaryDirectory(prefix=".fbml-predict-clean.", dir=scratch) as work:
        tables = streamed_tables(raw, Path(work))
    size = part_size or default_part_size(tables.cleaned.products.height)
    return Catalogue(tables, Sources.of(products, image_dir), image_dir, tuple(catalogue_parts(tables, size)), size)


def default_part_size(products: int) -> int:
    """Products per part of a catalogue of ``products``: ``PART_SIZE``, or fewer so that there are ``MIN_PARTS`` or more
    (fewer than twice as many)."""
    return max(1, min(PART_SIZE, products // MIN_PARTS))


def catalogue_parts(tables: CleanTables, part_size: int) -> list[Part]:
    """The clean products (each with its raw table's record number) in parts of ``part_size``, each with its
    products' photos (each with its manifest row)."""
    products = tables.cleaned.products.with_columns(pl.Series(PRODUCT_ROW, _raw_records(tables)))
    numbered = products.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) // part_size).alias(PART))
    photos = None
    if tables.manifest is not None:
        photos = (tables.manifest.images.with_row_index(MANIFEST_ROW).with_columns(pl.col(MANIFEST_ROW).cast(pl.Int64))
                  .join(numbered.select("id", PART), on="id", how="left", maintain_order="left"))  # fmt: skip
        if photos[PART].null_count():
            raise FbmlError("the photo manifest names products the clean products table lacks")
    product_parts = numbered.partition_by(PART, maintain_order=True, as_dict=True)
    photo_parts = {} if photos is None else photos.partition_by(PART, maintain_order=True, as_dict=True)
    parts = []
    for (number,), frame in product_parts.items():
        part_photos = None if photos is None else photo_parts.get((number,), photos.clear()).drop(PART)
        parts.append(Part(int(number), frame.drop(PART), part_photos))
    return parts


def _raw_records(tables: CleanTables) -> np.ndarray:
    """The 1-based record of each clean product in the raw products table (cleaning keeps the rows' order)."""
    rejected = tables.cleaned.rejected["source_row"].to_numpy()
    records = np.setdiff1d(np.arange(1, tables.products_read + 1, dtype=np.int64), rejected)
    if records.size != tables.cleaned.products.height:
        raise FbmlError(f"{records.size} raw records for {tables.cleaned.products.height} clean products")
    return records


def run_state(model_version: str, catalogue: Catalogue, options: PredictOptions) -> dict[str, Any]:
    """What the parts of a run are of: the bundle (its model version), the inputs (the clean tables' contents), the photo folder and
    the options that change the rows; a resumed run must have the same."""
    manifest = catalogue.tables.manifest
    return {
        "format": STATE_FORMAT,
        "model_version": model_version,
        "runtime": options.runtime,
        "products": fingerprint(catalogue.tables.cleaned.products),
        "images": None if manifest is None else fingerprint(manifest.images),
        "image_dir": None if catalogue.image_dir is None else str(catalogue.image_dir.resolve()),
        "part_size": catalogue.part_size,
        "parts": len(catalogue.parts),
        "embeddings": options.embeddings,
    }


def fingerprint(frame: pl.DataFrame) -> str:
    """A digest of a frame's columns and rows."""
    digest = hashlib.sha256(json.dumps(frame.columns).encode())
    digest.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return digest.hexdigest()


def done_parts(out: Path, state: dict[str, Any], *, resume: bool) -> set[int]:
    """The parts of this run ``out/parts`` holds already (``resume``: else they are deleted, and the state written
    afresh); ``FbmlError`` when resuming parts of another bundle or other inputs."""
    folder = out / PARTS
    found = _read_state(folder)
    if resume and found is not None and found != state:
        changed = ", ".join(key for key in state if found.get(key) != state[key])
        raise FbmlError(f"{folder}: its parts are of another run ({changed} differ); leave out --resume to start afresh")
    if not resume or found is None:
        if folder.exists():
            if found is None and any(folder.iterdir()):
                raise FbmlError(f"{folder}: exists and is not the parts of an fbml predict run; choose another --out")
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        write_atomically(folder / STATE, json.dumps(state, indent=2).encode())
        return set()
    for path in folder.iterdir():
        if temporary_target(path.name) is not None:  # a file a killed run was writing
            path.unlink()
    return {number for number in range(state["parts"]) if _part_path(out, number).is_file()}


def _read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FbmlError(f"{path}: not a run's state ({error})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise FbmlError(f"{path}: not a {STATE_FORMAT} state")
    return state


def _part_path(out: Path, number: int, kind: str = "part") -> Path:
    return out / PARTS / f"{kind}-{number:05d}.parquet"


def write_part(out: Path, scored: ScoredPart) -> None:
    """A scored part's files: its rejected rows, then its predictions (whose presence marks the part done)."""
    for kind, frame in (("rejected", scored.rejected), ("part", scored.predictions)):
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        write_atomically(_part_path(out, scored.number, kind), buffer.getvalue())


@attrs.frozen
class PhotoSource:
    """How a run reads photos: the photo folder, listed once (None: no photo is read, the bundle or the catalogue
    has none), the side the bundle's networks read (None: they read no photo), and the decoding threads."""

    folder: PhotoFolder | None
    size: int | None
    workers: int | None = None

    @classmethod
    def of(cls, size: int | None, catalogue: Catalogue, workers: int | None) -> PhotoSource:
        """The photos of ``catalogue`` at ``size``."""
        if size is None or catalogue.image_dir is None or catalogue.tables.manifest is None:
            return cls(None, size, workers)
        return cls(PhotoFolder.listed(catalogue.image_dir), size, workers)

    def decoded(self, part: Part) -> DecodedPart:
        """``part``'s photos decoded (none when no photo is read)."""
        return decoded_part(part, self.folder, self.size or 0, self.workers)


@attrs.frozen
class Decoding:
    """Parts' photos decoding from ``source`` in the thread ``pool``; ``started``: the parts (by number) whose
    decoding began already."""

    source: PhotoSource
    pool: ThreadPoolExecutor
    started: Mapping[int, Future[DecodedPart]] = attrs.field(factory=dict)

    @classmethod
    def early(cls, manifest: Manifest, catalogue: Catalogue, options: PredictOptions, pool: ThreadPoolExecutor,
              first: Part | None) -> Decoding:  # fmt: skip
        """``first``'s photos decoding already (at the side the bundle's ``manifest`` names), while the bundle loads."""
        source = PhotoSource.of(None if manifest.image is None else manifest.image.size, catalogue, options.decode_workers)
        return cls(source, pool, {} if first is None else {first.number: pool.submit(source.decoded, first)})

    def part(self, part: Part) -> Future[DecodedPart]:
        """``part``'s photos, decoding."""
        return self.started.get(part.number) or self.pool.submit(self.source.decoded, part)

    def for_bundle(self, bundle: Bundle, catalogue: Catalogue) -> Decoding:
        """This decoding, or one afresh when ``bundle`` reads photos at another side (it changed since its
        manifest was read)."""
        side = None if bundle.image is None else bundle.image.size
        return self if side == self.source.size else Decoding(PhotoSource.of(side, catalogue, self.source.workers), self.pool)


def locally_scored(bundle: Bundle, parts: Sequence[Part], catalogue: Catalogue, options: PredictOptions, bar: tqdm[Any],
                   decoding: Decoding) -> Iterator[ScoredPart]:  # fmt: skip
    """Each part scored here, in order, the next part's photos decoding while one is scored."""
    pending = decoding.part(parts[0]) if parts else None
    for position in range(len(parts)):
        assert pending is not None
        decoded = pending.result()
        pending = decoding.part(parts[position + 1]) if position + 1 < len(parts) else None
        yield scored_part(bundle, decoded, catalogue.sources, batch_size=options.batch_size, embeddings=options.embeddings,
                          progress=bar.update)  # fmt: skip


def predict_catalogue(
    bundle_dir: Path, products: str | Path, images: str | Path | None, image_dir: Path | None, out: Path, *,
    options: PredictOptions = PredictOptions(), resume: bool = False, engine: str = "polars", address: str | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Score every clean product of the tables with the bundle at ``bundle_dir`` into ``out`` (see the module).

    While the tables are cleaned and the photo folder listed, the bundle loads: here, in a thread (and the first
    part's photos decode), or in the worker processes (``options.workers`` > 1), each loading its own."""
    if engine not in ("polars", "ray"):
        raise FbmlError(f"unknown engine {engine!r} (polars or ray)")
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(bundle_dir)
    roles = scoring_roles(manifest, photos=images is not None and image_dir is not None, embeddings=options.embeddings)
    sources = Sources.of(products, image_dir)
    with ExitStack() as stack:
        pool = None
        if engine == "polars" and options.workers > 1:
            from fbml.workflows.predict_pool import scorer_arguments, worker_pool

            arguments = scorer_arguments(bundle_dir, image_dir, options, sources, roles)
            pool = stack.enter_context(worker_pool(options.workers, arguments, model_version(bundle_dir)))
        loader = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbml-load"))
        decoder = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbml-decode"))
        loading = None if pool is not None else loader.submit(batch_bundle, bundle_dir, options, roles)
        scored_catalogue = catalogue(products, images, image_dir, scratch=out, part_size=options.part_size)
        first = _first_to_score(out, scored_catalogue, resume=resume)
        decoding = Decoding.early(manifest, scored_catalogue, options, decoder, first) if engine == "polars" and pool is None else None
        bundle = None if loading is None else loading.result()
        if bundle is not None and options.embeddings:
            bundle.listing_recipe()  # no index, no vectors: stop before the work
        if pool is not None:
            pool.ready()  # each worker's bundle loaded (and checked, as above): stop before the work if one is not
            version = pool.model_version
        else:
            assert bundle is not None  # loaded here when no worker process loads it
            version = bundle.model_version
        done = done_parts(out, run_state(version, scored_catalogue, options), resume=resume)
        todo = [part for part in scored_catalogue.parts if part.number not in done]
        total = scored_catalogue.tables.cleaned.products.height
        initial = total - sum(part.products.height for part in todo)
        with tqdm(total=total, initial=initial, desc="predicting", unit="row", file=sys.stderr, disable=not progress,
                  smoothing=0.1) as bar:  # fmt: skip
            scored: Iterable[ScoredPart]
            sizes = {part.number: part.products.height for part in todo}
            if engine == "ray":
                from fbml.workflows.predict_ray import ray_scored

                scored = counted(ray_scored(bundle_dir, todo, scored_catalogue, options, roles, address=address), sizes, bar)
            elif pool is not None:
                scored = counted(pool.scored(todo), sizes, bar)
            else:
                assert decoding is not None and bundle is not None
                scored = locally_scored(bundle, todo, scored_catalogue, options, bar, decoding.for_bundle(bundle, scored_catalogue))
            for part in scored:
                write_part(out, part)
    return assembled(out, scored_catalogue, resumed=len(done))


def counted(scored: Iterable[ScoredPart], sizes: Mapping[int, int], bar: tqdm[Any]) -> Iterator[ScoredPart]:
    """``scored``'s parts, the bar moved on by each one's products (``sizes``, by part number) as it comes."""
    for part in scored:
        yield part
        bar.update(sizes[part.number])


def _first_to_score(out: Path, catalogue: Catalogue, *, resume: bool) -> Part | None:
    """The part a run will score first, as far as can be told before its state is checked: the first part, or when
    resuming the first one not written yet."""
    parts = catalogue.parts if not resume else [part for part in catalogue.parts if not _part_path(out, part.number).is_file()]
    return parts[0] if parts else None


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def scoring_roles(manifest: Manifest, *, photos: bool, embeddings: bool) -> frozenset[Role] | None:
    """The predictors a run uses (``Roles.of`` picks them from what is loaded): ``text`` for products without
    photos; ``combined``, else ``image``, for those with photos when the run reads photos (or when the bundle has
    no text predictor). None, the whole bundle, with ``embeddings`` (a listing's vector needs every model) or
    when the bundle has none of these predictors (loading it whole says so)."""
    if embeddings:
        return None
    chosen = {Role.TEXT} & set(manifest.predictors)
    photo = photo_role(manifest.predictors)
    if photo is not None and manifest.image is not None and (photos or not chosen):
        chosen.add(photo)
    return frozenset(chosen) or None


def batch_bundle(bundle_dir: Path, options: PredictOptions, roles: frozenset[Role] | None) -> Bundle:
    """The bundle loaded with the predictors ``roles`` (None: whole) for ``options``' runtime and device, its ONNX
    sessions (if any) on ``options.threads``."""
    return load_bundle(bundle_dir, runtime=options.runtime, device=options.device, onnx_threads=options.threads, roles=roles)


def assembled(out: Path, catalogue: Catalogue, *, resumed: int = 0) -> PredictSummary:
    """``predictions.parquet`` and ``rejected.parquet`` from the parts (all written), and what they hold."""
    numbers = range(len(catalogue.parts))
    missing = [number for number in numbers if not _part_path(out, number).is_file()]
    if missing:
        raise FbmlError(f"{out / PARTS}: {len(missing)} part(s) not written, e.g. {_part_path(out, missing[0]).name}")
    predictions = pl.concat([pl.read_parquet(_part_path(out, number)) for number in numbers], how="vertical")
    rejected = rejected_checked(pl.concat([catalogue.tables.rejected, *(pl.read_parquet(_part_path(out, number, "rejected"))
                                                                         for number in numbers)]))  # fmt: skip
    paths = (out / PREDICTIONS, out / REJECTED)
    for frame, path in zip((predictions, rejected), paths, strict=True):
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        write_atomically(path, buffer.getvalue())
    by_role = predictions.group_by("role").len()
    by_reason = rejected.group_by("stage", "reason", maintain_order=True).len()
    return PredictSummary(
        dict(zip(by_role["role"].to_list(), by_role["len"].to_list(), strict=True)),
        {(stage, reason): count for stage, reason, count in by_reason.iter_rows()},
        catalogue.tables.products_read, catalogue.tables.images_read, resumed, paths,
    )
