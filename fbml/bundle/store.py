"""Bundles on disk: one directory with the models, the predictors each role serves, and their shared settings.

Weights are safetensors, everything else JSON (or ``.npy`` loaded without pickle). The manifest
``bundle.json`` is a typed ``contracts.bundle.Manifest`` that pins every factory argument, so a bundle
rebuilds what was trained whatever today's defaults are. Every other file is named after its
content's hash and written before the manifest, which is replaced atomically last: a crash leaves
the previous bundle whole, never half a new one. Loading reads only files the manifest names inside
the bundle, checks each checksum, and never downloads anything (models are built without weights,
then loaded from the bundle).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
from contracts.bundle import (
    BUNDLE_FORMAT,
    CombinedNnEntry,
    CombinedOptions,
    FileRef,
    ImageEntry,
    ImageModelEntry,
    ImageOptions,
    IndexEntry,
    Manifest,
    Member,
    ModelEntry,
    ModelKind,
    OnnxEntry,
    PredictorEntry,
    Role,
    SubcategoryEntry,
    TextCnnEntry,
    TextCnnOptions,
    TextEntry,
    TextLinearEntry,
)

from fbml.bundle.arrays import finite, plain_array, safetensors_arrays
from fbml.bundle.bundle import Bundle, BundleModel, Predictor, StoredGraph, checked_role
from fbml.bundle.listings import IMAGE_MODEL, TEXT_MODEL
from fbml.bundle.locks import bundle_files
from fbml.bundle.profile import profile_from_json, profile_to_json
from fbml.bundle.search import SearchIndex
from fbml.bundle.vector_index import HnswIndex, Patch, VectorIndex, appended_start, chunks_of, load_vector_index, npy_bytes
from fbml.errors import FbmlError
from fbml.files import temporary_target, write_atomically
from fbml.modeling.ensembles import Ensemble
from fbml.modeling.linear_text import LinearTextModel
from fbml.modeling.onnx_runtime import OnnxGraph
from fbml.modeling.settings import ImageSettings, TextSettings
from fbml.text.labels import LabelCodec
from fbml.text.vocabulary import Vocabulary
from fbml.text.word2vec import WordVectors

MANIFEST = "bundle.json"
MAX_MANIFEST_BYTES = 16 * 2**20
CONTENT_NAME = re.compile(r"[a-z][a-z-]*-[0-9a-f]{16}\.(json|npy|safetensors|onnx|faiss)")
RUNTIMES = ("torch", "onnx")
LOADING_THREADS = 4
"""Threads reading a bundle's parts (its models, subcategory model, index and profile) at once."""
VECTOR_CHUNK = "index-chunk"
"""The name stem of an HNSW graph's vector chunk files."""
GRAPH_PATCH = "graph-patch"
"""The name stem of an HNSW graph's patch files."""
CATALOGUE = "catalogue"
"""The name stem of a search index's catalogue chunk files (and of the one catalogue file of a bundle saved before)."""
if TYPE_CHECKING:
    from torch import nn

    from fbml.modeling.onnx_runtime import OnnxModel
    from fbml.modeling.subcategories import SubcategoryModel


def save_bundle(bundle: Bundle, path: Path) -> None:
    """Write ``bundle`` to the directory ``path`` (created, or updated in place atomically).

    A read-modify-write holds ``fbml.bundle.locks.bundle_writer`` around its load and this save."""
    if path.exists() and not path.is_dir():
        raise FbmlError(f"{path}: exists and is not a bundle folder")
    path.mkdir(parents=True, exist_ok=True)
    with bundle_files(path, shared=False):
        _save(bundle, path)


def _save(bundle: Bundle, path: Path) -> None:
    if bundle.partial:
        raise FbmlError(f"{path}: a bundle loaded with only some roles lacks the rest of its models; load it whole to save it")
    manifest = Manifest(
        format=BUNDLE_FORMAT,
        codec=_write_json(path, "codec", bundle.codec.to_json()),
        image=None if bundle.image is None else _image_entry(bundle.image),
        text=None if bundle.text is None else _write_text(path, bundle.text),
        models={kind: _write_model(path, model) for kind, model in bundle.models.items()},
        predictors={role: _predictor_entry(predictor) for role, predictor in bundle.predictors.items()},
        index=None if bundle.index is None else _write_index(path, bundle.index),
        subcategories=None if bundle.subcategories is None else _write_subcategories(path, bundle.subcategories),
        profile=None if bundle.profile is None else _write_json(path, "profile", profile_to_json(bundle.profile)),
    )
    write_atomically(path / MANIFEST, msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    _remove_unreferenced(path, manifest)


def load_bundle(path: str | os.PathLike[str], *, runtime: str = "torch", device: str = "cpu", onnx_threads: int | None = None,
                roles: Collection[Role | str] | None = None) -> Bundle:  # fmt: skip
    """Read and check a bundle: every file present and unchanged, every model fitting the codec. Its
    ``model_version`` is the SHA-256 of the manifest read (which names every other file by its own SHA-256).

    ``runtime="onnx"``: the networks are ONNX Runtime sessions over their exported graphs, and
    nothing imports torch (``fbml export-onnx`` must have run since the networks were trained).
    ``device``: where the torch runtime's networks run (``cpu``, ``cuda[:N]``, ``mps``, ``auto``).
    ``onnx_threads``: each ONNX Runtime session's intra-op threads (default: ONNX Runtime's own choice; torch's
    threads are the process's, its owner sets them).
    ``roles``: load only these predictors, the models they use and the subcategory model, without the index and
    the training profile: what a job that only predicts needs. Such a bundle is ``partial`` and cannot be saved.
    Default: the whole bundle.
    """
    folder = Path(path)
    if runtime not in RUNTIMES:
        raise FbmlError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    if runtime == "onnx" and device != "cpu":
        raise FbmlError(f"the onnx runtime runs on the CPU, not {device}")
    if not folder.is_dir():
        raise FbmlError(f"{folder}: not a bundle (no such folder)" if not folder.exists() else f"{folder}: not a bundle (not a folder)")
    wanted = None if roles is None else frozenset(checked_role(role) for role in roles)
    with bundle_files(folder, shared=True), collection_paused():
        bundle = _load(folder, runtime, onnx_threads, wanted)
    return bundle if device == "cpu" else _on_device(bundle, device)


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside, and on again after unless it was off before; what was made inside
    joins the oldest generation without a collection (unless the process holds frozen objects, which stay frozen).

    A load makes hundreds of thousands of long-lived objects (torch's modules when it imports torch, the networks, the
    catalogue rows); the collections their allocations trigger walk them again and again, and the first one after the
    collector is back on would walk them all: together about a fifth of a real bundle's load beyond ``import torch``.
    ``gc.freeze`` then ``gc.unfreeze`` moves every tracked object to the oldest generation in constant time, as if
    collections had found it alive; full collections still look at them. Reference counting frees what loading drops."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def _on_device(bundle: Bundle, device: str) -> Bundle:
    """``bundle`` with its torch networks moved to ``device``."""
    from torch import nn

    from fbml.modeling.devices import resolve_device

    target = resolve_device(device)
    for model in bundle.models.values():
        if isinstance(model.module, nn.Module):
            model.module.to(target)
    return bundle


def _load(path: Path, runtime: str, onnx_threads: int | None, roles: frozenset[Role] | None) -> Bundle:
    content = manifest_bytes(path)
    manifest = parsed_manifest(path, content)
    whole = roles is None
    predictor_entries, model_entries = (manifest.predictors, manifest.models) if roles is None else _chosen(path, manifest, roles)
    codec = _read(path, manifest.codec, "codec", LabelCodec.from_json)
    reads_photos = any(kind.reads_photos for kind in model_entries)
    text = None if manifest.text is None else _read_text(path, manifest.text)
    # Each part in a thread of its own: reading, hashing and copying arrays release the GIL, so the linear models, the
    # index and the profile load while torch is imported (about 2 s here: checking the backbone, or the first network),
    # instead of after it. The text-linear model comes first: the subcategory model, once its files are read, takes its
    # n-gram counters when the two count over the same vocabularies. The networks come last: their threads wait for torch
    # once their weights are read. Results are taken in a fixed order: a broken bundle always names the same first problem.
    with ThreadPoolExecutor(max_workers=LOADING_THREADS, thread_name_prefix="fbml-bundle") as pool:
        image_read = None if manifest.image is None else pool.submit(
            _read_image, path, manifest.image, check_backbone=runtime == "torch" and (whole or reads_photos))

        def read_model(kind: ModelKind) -> Future[BundleModel]:
            return pool.submit(_read_model, path, kind, model_entries[kind], codec, text, runtime, onnx_threads)

        linear_read = read_model(ModelKind.TEXT_LINEAR) if ModelKind.TEXT_LINEAR in model_entries else None
        subcategory_read = None if manifest.subcategories is None else pool.submit(
            _read_subcategories, path, manifest.subcategories, codec, functools.partial(_linear_module, linear_read))
        index_read = None if manifest.index is None or not whole else pool.submit(_read_index, path, manifest.index)
        profile_read = None if manifest.profile is None or not whole else pool.submit(
            _read, path, manifest.profile, "training profile", profile_from_json)
        reads = {kind: linear_read if kind is ModelKind.TEXT_LINEAR and linear_read is not None else read_model(kind) for kind in model_entries}
        image = None if image_read is None else image_read.result()
        models = {kind: read.result() for kind, read in reads.items()}
        predictors = {role: _read_predictor(path, role, entry, models, codec) for role, entry in predictor_entries.items()}
        index = None if index_read is None else index_read.result()
        profile = None if profile_read is None else profile_read.result()
        subcategories = None if subcategory_read is None else subcategory_read.result()
    shared = sharing_backbones(models) if runtime == "torch" else models
    bundle = Bundle(codec, image, text, shared, predictors, index, _version(content), subcategories, profile,
                    partial=not whole)  # fmt: skip
    _check_settings(path, bundle)
    return bundle


def _linear_module(read: Future[BundleModel] | None) -> LinearTextModel | None:
    """The text-linear model ``read`` loads (waiting for it), or None without one."""
    if read is None:
        return None
    module = read.result().module
    assert isinstance(module, LinearTextModel)  # the manifest's text-linear entry is read as one
    return module


def _chosen(path: Path, manifest: Manifest, roles: frozenset[Role]) -> tuple[dict[Role, PredictorEntry], dict[ModelKind, ModelEntry]]:
    """The manifest's entries of the predictors ``roles`` and of the models they use; ``FbmlError`` for a role
    the bundle has no predictor for."""
    missing = sorted(roles - set(manifest.predictors))
    if missing:
        raise FbmlError(f"{path}: the bundle has no {' or '.join(missing)} predictor (it has: {', '.join(manifest.predictors) or 'none'})")
    predictors = {role: entry for role, entry in manifest.predictors.items() if role in roles}
    used = {member.model for entry in predictors.values() for member in entry.members}
    return predictors, {kind: entry for kind, entry in manifest.models.items() if kind in used}


def read_manifest(path: Path) -> Manifest:
    """``path/bundle.json`` as a typed ``Manifest``; ``FbmlError`` saying what is wrong otherwise."""
    return parsed_manifest(path, manifest_bytes(path))


def model_version(path: Path) -> str:
    """The model version of the bundle at ``path``, as loading it gives it: the SHA-256 of its manifest."""
    return _version(manifest_bytes(path))


def _version(manifest: bytes) -> str:
    return hashlib.sha256(manifest).hexdigest()


def manifest_bytes(path: Path) -> bytes:
    """The content of ``path/bundle.json``; ``FbmlError`` when ``path`` is not a bundle or it cannot be read."""
    file = path / MANIFEST
    if not path.is_dir():
        raise FbmlError(f"{path}: not a bundle (not a directory)")
    try:
        with file.open("rb") as reading:
            content = reading.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise FbmlError(f"{path}: not a bundle (no {MANIFEST})") from None
    except OSError as error:
        raise FbmlError(f"{file}: cannot read ({error.strerror})") from None
    if len(content) > MAX_MANIFEST_BYTES:
        raise FbmlError(f"{file}: over {MAX_MANIFEST_BYTES // 2**20} MiB; a bundle's manifest names its files, it holds none")
    return content


def parsed_manifest(path: Path, content: bytes) -> Manifest:
    """``content`` (of ``path/bundle.json``) as a typed ``Manifest``; ``FbmlError`` saying what is wrong otherwise."""
    file = path / MANIFEST
    other = _other_format(content)
    if other is not None and _format_version(other) < _format_version(BUNDLE_FORMAT):
        raise FbmlError(f"{file}: bundle format {other!r} is no longer read (this fbml reads {BUNDLE_FORMAT!r}); "
                        "train the models again with `fbml train` to make a new bundle")
    if other is not None:
        raise FbmlError(f"{file}: bundle format {other!r} is newer than this fbml reads ({BUNDLE_FORMAT!r}); "
                        "upgrade fbml to load it")
    try:
        return msgspec.json.decode(content, type=Manifest)
    except msgspec.ValidationError as error:
        raise FbmlError(f"{file}: not a valid {BUNDLE_FORMAT} manifest: {error}") from None
    except msgspec.DecodeError as error:
        raise FbmlError(f"{file}: not valid JSON ({error})") from None


def _other_format(content: bytes) -> str | None:
    """The format of a manifest of another version of fbml's bundles (``fbml.bundle/N``), or None."""
    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
    found = value.get("format") if isinstance(value, dict) else None
    if isinstance(found, str) and re.fullmatch(r"fbml\.bundle/[0-9]{1,6}", found) and found != BUNDLE_FORMAT:
        return found
    return None


def _format_version(name: str) -> int:
    return int(name.rsplit("/", 1)[1])


def _image_entry(image: ImageSettings) -> ImageEntry:
    return ImageEntry(image.backbone, image.size, list(image.mean), list(image.std))


def _read_image(path: Path, entry: ImageEntry, *, check_backbone: bool) -> ImageSettings:
    if check_backbone:
        from fbml.modeling.backbones import backbone

        try:
            backbone(entry.backbone)
        except FbmlError as error:
            raise FbmlError(f"{path / MANIFEST}: {error}") from None
    mean, std = entry.mean, entry.std
    return ImageSettings(entry.backbone, entry.size, (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]))


def _write_text(path: Path, text: TextSettings) -> TextEntry:
    return TextEntry(
        length=text.length,
        vocabulary=_write_json(path, "vocabulary", text.vocabulary.to_json()),
        words=_write_json(path, "words", list(text.word_vectors.words)),
        vectors=_write_file(path, "vectors", ".npy", npy_bytes(text.word_vectors.vectors)),
    )


def _read_text(path: Path, entry: TextEntry) -> TextSettings:
    vocabulary = _read(path, entry.vocabulary, "vocabulary", Vocabulary.from_json)
    words = _read(path, entry.words, "word list", _string_list)
    vectors = _read_npy(path, entry.vectors, np.float32)
    try:
        return TextSettings(vocabulary, WordVectors(words, vectors), entry.length)
    except FbmlError as error:
        raise FbmlError(f"{path}: the word vectors do not fit their words: {error}") from None


def _write_model(path: Path, model: BundleModel) -> ModelEntry:
    report = dict(model.report)
    if isinstance(model.module, LinearTextModel):
        from safetensors.numpy import save

        parameters = _write_json(path, "text-linear", model.module.to_json())
        arrays = _write_file(path, "text-linear", ".safetensors", save(dict(model.module.arrays())))
        return TextLinearEntry(parameters, arrays, report)
    from fbml.modeling.onnx_runtime import OnnxModel

    if isinstance(model.module, OnnxModel):
        raise FbmlError(f"{path}: a bundle loaded for ONNX Runtime cannot be saved; load it with the torch runtime")
    weights = _write_file(path, model.kind, ".safetensors", _safetensors_bytes(model.module))
    options = model.options
    onnx = None if model.onnx is None else _write_onnx(path, model.kind, model.onnx)
    if isinstance(options, ImageOptions):
        return ImageModelEntry(weights, options, report, onnx)
    if isinstance(options, TextCnnOptions):
        return TextCnnEntry(weights, options, report, onnx)
    if isinstance(options, CombinedOptions):
        return CombinedNnEntry(weights, options, report, onnx)
    raise FbmlError(f"the {model.kind} model has no factory options to save")


def _read_model(
    path: Path, kind: str, entry: ModelEntry, codec: LabelCodec, text: TextSettings | None, runtime: str, onnx_threads: int | None
) -> BundleModel:
    tag = type(entry).__struct_config__.tag
    if tag != kind:
        raise FbmlError(f"{path / MANIFEST}: model '{kind}' is described as a '{tag}' model")
    if isinstance(entry, TextLinearEntry):
        return BundleModel(kind, _read_linear(path, entry, codec), None, entry.report)
    if runtime == "onnx":
        graph = None if entry.onnx is None else _read_onnx(path, entry.onnx)
        return BundleModel(kind, _onnx_session(path, kind, graph, onnx_threads), entry.options, entry.report, graph)
    stored = None if entry.onnx is None else _stored_graph(path, entry.onnx)
    weights = _read_weights(path, entry.weights)  # first: this thread may then wait for torch's import
    from fbml.modeling.models import build_model

    words = None if text is None else (len(text.vocabulary), text.word_vectors.dim)
    try:
        module = build_model(kind, entry.options, codec.num_classes, words)
    except FbmlError as error:
        raise FbmlError(f"{path}: cannot rebuild the {kind} model: {error}") from None
    _assign_weights(path, kind, module, weights)
    return BundleModel(kind, module.eval(), entry.options, entry.report, stored)


def _write_onnx(path: Path, kind: str, graph: OnnxGraph | StoredGraph) -> OnnxEntry:
    if isinstance(graph, StoredGraph):
        ref = _write_chunk(path, f"{kind}-graph", ".onnx", graph.entry.graph.sha256, functools.partial(_checked, graph.folder, graph.entry.graph))
        return msgspec.structs.replace(graph.entry, graph=ref)
    ref = _write_file(path, f"{kind}-graph", ".onnx", graph.content)
    return OnnxEntry(ref, graph.opset, list(graph.inputs), list(graph.outputs))  # type: ignore[arg-type]


def _read_onnx(path: Path, entry: OnnxEntry) -> OnnxGraph:
    return OnnxGraph(_checked(path, entry.graph), entry.opset, tuple(entry.inputs), tuple(entry.outputs))


def _stored_graph(path: Path, entry: OnnxEntry) -> StoredGraph:
    """The graph ``entry`` names, left unread in the bundle (the torch runtime runs none): a plain file of the bundle."""
    _bundle_file(path, entry.graph)
    return StoredGraph(path, entry)


def _onnx_session(path: Path, kind: str, graph: OnnxGraph | None, threads: int | None) -> OnnxModel:
    """The ONNX Runtime session of ``kind``'s graph on ``threads``; ``FbmlError`` when the bundle has none or it does not fit."""
    from fbml.modeling.onnx_runtime import onnx_model

    if graph is None:
        raise FbmlError(f"{path}: the {kind} model has no ONNX graph; run `fbml export-onnx {path}` first")
    try:
        return onnx_model(kind, graph, threads=threads)
    except FbmlError as error:
        raise FbmlError(f"{path}: {error}") from None


def _read_linear(path: Path, entry: TextLinearEntry | SubcategoryEntry, codec: LabelCodec, what: str = "text-linear",
                 like: Callable[[], LinearTextModel | None] = lambda: None) -> LinearTextModel:  # fmt: skip
    """A linear model of the bundle, sharing the n-gram counters of ``like()`` (called once its files are read) when
    it counts over the same vocabularies."""
    parameters = _read(path, entry.parameters, f"{what} parameters", lambda value: value)
    arrays = _read_safetensors(path, entry.arrays)
    try:
        model = LinearTextModel.from_parts(parameters, arrays, like=like())
    except FbmlError as error:
        raise FbmlError(f"{path}: the {what} model is broken: {error}") from None
    if model.num_classes != codec.num_classes:
        raise FbmlError(f"{path}: the {what} model has {model.num_classes} classes, its codec {codec.num_classes}")
    return model


def _write_subcategories(path: Path, subcategories: SubcategoryModel) -> SubcategoryEntry:
    from safetensors.numpy import save

    return SubcategoryEntry(
        _write_json(path, "subcategory-codec", subcategories.codec.to_json()),
        _write_json(path, "subcategory-linear", subcategories.model.to_json()),
        _write_file(path, "subcategory-linear", ".safetensors", save(dict(subcategories.model.arrays()))),
        dict(subcategories.report),
    )


def _read_subcategories(path: Path, entry: SubcategoryEntry, categories: LabelCodec,
                        like: Callable[[], LinearTextModel | None]) -> SubcategoryModel:  # fmt: skip
    """The subcategory model, each subcategory a child of one of the codec's categories, sharing the n-gram counters of
    ``like()`` (the text-linear model) when the two count over the same vocabularies."""
    from fbml.modeling.subcategories import SubcategoryModel, parent_of

    codec = _read(path, entry.codec, "subcategory codec", LabelCodec.from_json)
    model = _read_linear(path, entry, codec, "subcategory", like)
    orphans = sorted({parent_of(name) for name in codec.classes} - set(categories.classes))
    if orphans:
        raise FbmlError(f"{path}: subcategories of categories the codec lacks: {orphans[:5]}")
    try:
        return SubcategoryModel(codec, model, dict(entry.report))
    except FbmlError as error:
        raise FbmlError(f"{path}: {error}") from None


def _read_weights(path: Path, ref: FileRef) -> dict[str, np.ndarray]:
    """A network's weights in the bundle's safetensors file ``ref``: copies of its arrays, for the network to hold."""
    return {name: np.array(array) for name, array in _read_safetensors(path, ref).items()}


def _assign_weights(path: Path, kind: str, module: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Give ``module`` (``build_model``'s) ``weights`` (``_read_weights``'), checked."""
    from fbml.modeling.models import assign_weights

    try:
        state = assign_weights(module, weights)
    except RuntimeError as error:
        detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise FbmlError(f"{path}: the {kind} weights do not fit its options, codec or vocabulary: {detail}") from None
    except FbmlError as error:
        raise FbmlError(f"{path}: the {kind} weights do not fit its options, codec or vocabulary: {error}") from None
    for name, tensor in state.items():
        values = tensor.numpy()  # numpy's checks of a few hundred small tensors take a sixth of torch's time
        if tensor.is_floating_point() and not np.isfinite(values).all():
            raise FbmlError(f"{path}: the {kind} weights {name} hold values that are not finite numbers (NaN or infinite)")
        if name.endswith("running_var") and (values < 0).any():
            raise FbmlError(f"{path}: the {kind} weights {name} hold negative variances")


def _read_safetensors(path: Path, ref: FileRef) -> dict[str, np.ndarray]:
    """The arrays of the bundle's safetensors file ``ref``, read-only views of its checked bytes."""
    content = _checked(path, ref)
    try:
        return safetensors_arrays(content)
    except FbmlError as error:
        raise FbmlError(f"{path}: bundle file {ref.file} is not a safetensors file ({error})") from None


def _predictor_entry(predictor: Predictor) -> PredictorEntry:
    members = [Member(ModelKind(name), weight) for name, weight in predictor.ensemble.members]
    return PredictorEntry(members, list(predictor.ensemble.bias), dict(predictor.report))


def _read_predictor(
    path: Path, role: Role, entry: PredictorEntry, models: Mapping[ModelKind, BundleModel], codec: LabelCodec
) -> Predictor:
    missing = [member.model for member in entry.members if member.model not in models]
    if missing:
        raise FbmlError(f"{path / MANIFEST}: the {role} predictor uses model(s) the bundle lacks: {', '.join(missing)}")
    if len(entry.bias) != codec.num_classes:
        raise FbmlError(f"{path / MANIFEST}: the {role} predictor has {len(entry.bias)} biases for {codec.num_classes} classes")
    ensemble = Ensemble(tuple((member.model, member.weight) for member in entry.members), tuple(entry.bias))
    return Predictor(ensemble, entry.report)


def _write_index(path: Path, index: SearchIndex) -> IndexEntry:
    engine = index.engine
    catalogue = _write_catalogue(path, index)
    if not isinstance(engine, HnswIndex):
        return IndexEntry(vectors=_write_file(path, "index", ".npy", npy_bytes(index.vectors)), catalogue=None,
                          catalogue_chunks=catalogue, report=dict(index.report))  # fmt: skip
    graph, patches = _write_graph(path, engine)
    return IndexEntry(
        vectors=None,  # the graph's chunks hold them
        catalogue=None,
        catalogue_chunks=catalogue,
        method="hnsw",
        graph=graph,
        graph_patches=patches,
        parameters=engine.parameters(),
        report=dict(index.report),
        removed=_write_file(path, "removed", ".npy", engine.removed_bytes()) if len(engine.removed) else None,
        vector_chunks=[_write_chunk(path, VECTOR_CHUNK, ".npy", chunk.sha256, functools.partial(engine.chunk_bytes, number))
                       for number, chunk in enumerate(engine.chunks)],  # fmt: skip
    )


def _write_catalogue(path: Path, index: SearchIndex) -> list[FileRef]:
    """The files of the catalogue's chunks: those its first rows were read or saved in (``catalogue_chunks``) as they
    are, and one of the rows past them (merged with the last of them as ``appended_start`` says)."""
    count = len(index)
    start = appended_start(index.catalogue_chunks, count)
    files = [_write_chunk(path, CATALOGUE, ".json", chunk.sha256, functools.partial(_catalogue_bytes, index, chunk.start, chunk.stop))
             for chunk in index.catalogue_chunks if chunk.stop <= start]  # fmt: skip
    if start < count:
        files.append(_write_file(path, CATALOGUE, ".json", _catalogue_bytes(index, start, count)))
    return files


def _catalogue_bytes(index: SearchIndex, start: int, stop: int) -> bytes:
    return index.catalogue_json(start, stop) + b"\n"


def _write_graph(path: Path, engine: HnswIndex) -> tuple[FileRef, list[FileRef] | None]:
    """The graph's links: the file they were read from and the patches after it (those the bundle lacks written) when
    the bundle holds that file and each patch (or knows its content), else written whole."""
    graph = None if engine.graph_sha256 is None else _held(path, "graph", ".faiss", engine.graph_sha256)
    patches = [_patch_file(path, patch) for patch in engine.patches] if graph is not None else []
    files = [patch for patch in patches if patch is not None]
    if graph is None or len(files) < len(patches):
        return _write_file(path, "graph", ".faiss", engine.graph_bytes()), None
    return graph, files or None


def _patch_file(path: Path, patch: Patch) -> FileRef | None:
    """The file of a graph patch: the bundle's, or written from the content it holds until saved; None without either."""
    held = _held(path, GRAPH_PATCH, ".npy", patch.sha256)
    return held if held is not None or patch.content is None else _write_file(path, GRAPH_PATCH, ".npy", patch.content)


def _write_chunk(path: Path, stem: str, suffix: str, digest: str, content: Callable[[], bytes]) -> FileRef:
    """The file of a chunk whose content has the known SHA-256 ``digest``: written (``content()``) unless the bundle
    holds it already (its name and checksum come from ``digest``, so an unchanged chunk is neither made again nor read)."""
    return _held(path, stem, suffix, digest) or _write_file(path, stem, suffix, content())


def _held(path: Path, stem: str, suffix: str, digest: str) -> FileRef | None:
    """The bundle's file of content with the SHA-256 ``digest`` (as ``_write_file`` names it), when it holds one."""
    name = f"{stem}-{digest[:16]}{suffix}"
    return FileRef(name, digest) if (path / name).is_file() else None


def _read_index(path: Path, entry: IndexEntry) -> SearchIndex:
    """The search index, checked: one vector per catalogue row (the rows of its catalogue chunks in turn, or of its one
    catalogue file), and the graph (if any) over those vectors (its own, or those of its vector chunks) and the
    tombstones of removed rows."""
    files = entry.catalogue_chunks if entry.catalogue is None else [entry.catalogue]
    assert files is not None  # the manifest's contract: one or the other
    parts = [_read(path, ref, "catalogue", _json_list) for ref in files]
    catalogue_chunks = chunks_of([(len(part), ref.sha256) for part, ref in zip(parts, files, strict=True)])
    chunks = None if entry.vector_chunks is None else [(_read_npy(path, ref, np.float32), ref.sha256) for ref in entry.vector_chunks]
    patches = [(_checked(path, ref), ref.sha256) for ref in entry.graph_patches or []]
    try:
        removed = None if entry.removed is None else _checked(path, entry.removed)
        engine = None if entry.graph is None else load_vector_index(entry.parameters, _checked(path, entry.graph), removed, chunks, patches)
        vectors = _read_npy(path, entry.vectors, np.float32) if entry.vectors is not None else _graph_rows(engine)
        return SearchIndex.from_json(vectors, [row for part in parts for row in part], entry.report, engine, catalogue_chunks)
    except FbmlError as error:
        raise FbmlError(f"{path}: {error}") from None


def _graph_rows(engine: VectorIndex | None) -> np.ndarray:
    """The vectors of an HNSW graph's rows (its tombstones left out), checked finite."""
    assert isinstance(engine, HnswIndex)  # the manifest's contract: only a graph may hold the vectors
    return finite(engine.row_vectors(), "the index graph's vectors")


def _check_settings(path: Path, bundle: Bundle) -> None:
    """Image models need image settings of their backbone; the index needs what embeds its queries."""
    for kind, model in bundle.models.items():
        options = model.options.image if isinstance(model.options, CombinedOptions) else model.options
        if isinstance(options, ImageOptions):
            if bundle.image is None:
                raise FbmlError(f"{path / MANIFEST}: the {kind} model needs image settings")
            if options.backbone != bundle.image.backbone:
                raise FbmlError(f"{path / MANIFEST}: the {kind} model's backbone {options.backbone} is not the "
                                f"bundle's {bundle.image.backbone}")
    if bundle.index is not None:
        try:
            _check_index(bundle)
        except FbmlError as error:
            raise FbmlError(f"{path}: {error}") from None


def _check_index(bundle: Bundle) -> None:
    """The index's vectors are as wide as the bundle's models make a listing's, and their weights known."""
    assert bundle.index is not None
    for needed in (TEXT_MODEL, IMAGE_MODEL):
        bundle.model(needed)
    for role in Role:
        bundle.predictor(role)
    bundle.listing_recipe()
    if bundle.index.dim != bundle.listing_width():
        raise FbmlError(f"the search index has {bundle.index.dim}-dim vectors, the bundle's models make {bundle.listing_width()}")


def sharing_backbones(models: dict[ModelKind, BundleModel]) -> dict[ModelKind, BundleModel]:
    """``models`` (torch networks) with the combined network's frozen backbone replaced, in place, by the image
    model's when their weights are equal (training copies it, and frozen stages never change), so that the prediction
    path runs it once per photo. (ONNX Runtime runs each graph whole.)"""
    image, combined = models.get(ModelKind.IMAGE_CNN), models.get(ModelKind.COMBINED_NN)
    if image is None or combined is None:
        return models
    from fbml.modeling.models import CombinedClassifier, ImageClassifier

    assert isinstance(image.module, ImageClassifier) and isinstance(combined.module, CombinedClassifier)
    ours, theirs = image.module.frozen.state_dict(), combined.module.image.frozen.state_dict()
    if ours.keys() == theirs.keys() and all(ours[name].equal(theirs[name]) for name in ours):
        combined.module.image.frozen = image.module.frozen
    return models


def _write_json(path: Path, stem: str, value: Any) -> FileRef:
    return _write_file(path, stem, ".json", (json.dumps(value, indent=1) + "\n").encode())


def _read(path: Path, ref: FileRef, what: str, parse: Any) -> Any:
    """A JSON file of the bundle through ``parse``; ``FbmlError`` naming the file when either fails."""
    content = _checked(path, ref)
    try:
        return parse(_json(content))
    except (ValueError, UnicodeDecodeError) as error:
        raise FbmlError(f"{path}: bundle file {ref.file} is not valid JSON ({error})") from None
    except FbmlError as error:
        raise FbmlError(f"{path}: bundle file {ref.file} is not a valid {what}: {error}") from None


def _json(content: bytes) -> Any:
    """``json.loads`` of UTF-8 ``content``, by msgspec's parser where it can (a sixth of the time on a profile's numbers,
    a fifth less on strings), else by Python's (for what msgspec refuses and Python reads, as NaN or a lone surrogate
    escape, and for the error)."""
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError:
        return json.loads(content.decode("utf-8"))


def _read_npy(path: Path, ref: FileRef, dtype: type[np.floating[Any]]) -> np.ndarray:
    """The 2-D ``dtype`` array of finite values in a bundle's ``.npy`` file (its header checked against its size first)."""
    content = _checked(path, ref)
    try:
        return finite(plain_array(content, dtype, 2), "it")
    except FbmlError as error:
        raise FbmlError(f"{path}: bundle file {ref.file}: {error}") from None


def _json_list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise FbmlError("expected a JSON list")
    return value


def _string_list(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FbmlError("expected a JSON list of strings")
    return value


def _write_file(path: Path, stem: str, suffix: str, content: bytes) -> FileRef:
    digest = hashlib.sha256(content).hexdigest()
    name = f"{stem}-{digest[:16]}{suffix}"
    if not (path / name).is_file():
        write_atomically(path / name, content)
    return FileRef(name, digest)


def _checked(path: Path, ref: FileRef) -> bytes:
    """The content of the bundle's file ``ref`` names (a plain file inside the bundle), its checksum
    verified on the very bytes that are then parsed."""
    content = _bundle_file(path, ref).read_bytes()
    if hashlib.sha256(content).hexdigest() != ref.sha256:
        raise FbmlError(f"{path}: bundle file {ref.file} does not match its checksum")
    return content


def _bundle_file(path: Path, ref: FileRef) -> Path:
    """The file ``ref`` names: a plain file inside the bundle; ``FbmlError`` when it is a link or missing."""
    file = path / ref.file
    if file.is_symlink():
        raise FbmlError(f"{path}: bundle file {ref.file} is a symbolic link; a bundle's files must be its own")
    if not file.is_file():
        raise FbmlError(f"{path}: bundle file {ref.file} is missing")
    return file


def _remove_unreferenced(path: Path, manifest: Manifest) -> None:
    """Remove the content files the manifest no longer names, and temporary files a killed write left."""
    referenced = {MANIFEST, *_file_names(msgspec.to_builtins(manifest))}
    for file in path.iterdir():
        if not file.is_file() or file.is_symlink():
            continue
        unreferenced = _is_content(file.name) and file.name not in referenced
        if unreferenced or _is_content(temporary_target(file.name)):
            file.unlink()


def _is_content(name: str | None) -> bool:
    """Whether ``name`` is the manifest's or a content file's."""
    return name is not None and (name == MANIFEST or CONTENT_NAME.fullmatch(name) is not None)


def _file_names(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        own = [value["file"]] if isinstance(value.get("file"), str) and "sha256" in value else []
        return own + [name for item in value.values() for name in _file_names(item)]
    if isinstance(value, list):
        return [name for item in value for name in _file_names(item)]
    return []


def _safetensors_bytes(module: nn.Module) -> bytes:
    from safetensors.torch import save

    return save({name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()})

