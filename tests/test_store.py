"""Bundles (format ``fbml.bundle/2``): round trips of every model kind, predictor and index; a bundle
grown as ``fbml train`` grows one; a manifest that pins every factory argument; one clear line for
every kind of damage (and for random damage, by hypothesis); nothing downloaded or read outside the
bundle; saves that leave the previous bundle whole when they crash."""

from __future__ import annotations

import builtins
import gc
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import fbml.bundle.store as bundle_module
import fbml.modeling.backbones
import fbml.modeling.models
import msgspec
import numpy as np
import polars as pl
import pytest
import torch
from contracts.bundle import BUNDLE_FORMAT, CombinedOptions, ImageOptions, Manifest, TextCnnOptions
from fbml.bundle.bundle import Bundle, BundleModel, Predictor
from fbml.bundle.locks import FILES_LOCK, WRITER_LOCK
from fbml.bundle.search import CATALOGUE_SCHEMA, SearchIndex, unit_rows
from fbml.bundle.store import MANIFEST, load_bundle, read_manifest, save_bundle
from fbml.bundle.vector_index import HnswIndex
from fbml.errors import FbmlError
from fbml.modeling.ensembles import Ensemble
from fbml.modeling.linear_text import LinearTextModel, LinearTextOptions, fit_linear_text
from fbml.modeling.models import (
    CombinedClassifier,
    ImageClassifier,
    TextClassifier,
    build_model,
    combined_model,
    image_from_options,
    text_cnn_from_options,
)
from fbml.modeling.settings import ImageSettings, TextSettings
from fbml.modeling.subcategories import SubcategoryModel, fit_subcategory_model
from fbml.serving.server import free_port
from fbml.text.labels import LabelCodec
from fbml.text.vocabulary import RESERVED, Vocabulary
from fbml.text.word2vec import WordVectors, embedding_matrix
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

LOCK_FILES = (FILES_LOCK, WRITER_LOCK)
CLASSES = ("bikes", "books", "chairs", "phones")
CODEC = LabelCodec(CLASSES)
SIDE = 32
IMAGE_SETTINGS = ImageSettings("efficientnet_lite0", SIDE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE = ImageOptions(backbone="efficientnet_lite0", trainable_stages=1, embedding_dim=8, dropout=0.1)
TEXT_CNN = TextCnnOptions(
    embedding_dim=16, kernel_sizes=[2, 3], channels=8, dropout=0.2, freeze_embeddings=False,
    normalise_embeddings=True, positions=6, word_dropout=0.1, branch_scale=3.0,
)
COMBINED = CombinedOptions(IMAGE, TEXT_CNN)
LINEAR = LinearTextOptions(folds=2)
TORCH_KINDS = ("text-cnn", "image-cnn", "combined-nn")
TEXT_ENSEMBLE = Ensemble((("text-cnn", 0.75), ("text-linear", 1.25)), (0.125, -0.25, 0.0625, 0.0))
IMAGE_ENSEMBLE = Ensemble((("image-cnn", 1.1),), (0.0, 0.0, 0.0, 0.0))
COMBINED_ENSEMBLE = Ensemble((("combined-nn", 0.9),), (0.01, 0.02, -0.03, 0.0))
FUSION = Ensemble((("text-cnn", 0.5), ("text-linear", 0.8), ("image-cnn", 0.3)), (0.1, 0.2, -0.3, 0.4))
INDEX_WEIGHTS = {"text": 1.0, "image": 1.0, "classes": 1.0}
TOPICS = {
    "bikes": ("bike", "wheel", "pedal", "saddle", "gears"),
    "books": ("novel", "paperback", "author", "chapter", "hardback"),
    "chairs": ("chair", "seat", "oak", "armrest", "cushion"),
    "phones": ("phone", "screen", "battery", "charger", "android"),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- building blocks ---------------------------------------------------------------------------------


def text_settings() -> TextSettings:
    words = tuple(f"word{index}" for index in range(30))
    vectors = np.random.default_rng(0).normal(size=(len(words) - 4, 8)).astype(np.float32)
    return TextSettings(Vocabulary((*RESERVED, *words)), WordVectors(words[:-4], vectors), length=12)


def trained(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter and batch-norm statistic moved away from its initial value, as training
    leaves them, so that a round trip must carry parameters and buffers alike."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) - 0.5)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
            elif name.endswith("num_batches_tracked"):
                buffer.fill_(17)
    return model.eval()


def new_text_cnn(text: TextSettings, seed: int = 0) -> TextClassifier:
    torch.manual_seed(seed)
    model = text_cnn_from_options(TEXT_CNN, embedding_matrix(text.word_vectors, text.vocabulary, seed=seed), len(CLASSES))
    return trained(model, seed)


def new_image_cnn(seed: int = 1) -> ImageClassifier:
    torch.manual_seed(seed)
    return trained(image_from_options(IMAGE, len(CLASSES)), seed)


def new_combined(text: TextSettings, seed: int = 2) -> CombinedClassifier:
    torch.manual_seed(seed)
    text_branch = text_cnn_from_options(TEXT_CNN, embedding_matrix(text.word_vectors, text.vocabulary), len(CLASSES))
    return trained(combined_model(image_from_options(IMAGE, len(CLASSES)), text_branch, len(CLASSES)), seed)


def linear_texts() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    texts, labels = [], []
    for label, category in enumerate(CLASSES):
        for _ in range(8):
            words = rng.choice(TOPICS[category], size=3, replace=False).tolist()
            texts.append(" ".join([*words, "used", "good", f"item{int(rng.integers(0, 50))}"]))
            labels.append(label)
    return texts, np.array(labels)


QUERIES = ["red bike with gears", "old paperback novel", "oak chair cushion", "android phone charger", "nothing known"]


def inputs(kind: str, text: TextSettings) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(3, 3, SIDE, SIDE, generator=generator)
    tokens = torch.randint(2, len(text.vocabulary), (3, text.length), generator=generator)
    tokens[1:, -4:] = 0
    return {"image-cnn": (images,), "text-cnn": (tokens,), "combined-nn": (images, tokens)}[kind]


def outputs(model: nn.Module, kind: str, text: TextSettings) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.inference_mode():
        output = model(*inputs(kind, text))
    return output.logits.clone(), output.embedding.clone()


def assert_same_model(left: nn.Module, right: nn.Module, kind: str, text: TextSettings) -> None:
    """The same class, the same state (parameters and buffers), exactly the same logits and embeddings."""
    assert type(left) is type(right)
    theirs = right.state_dict()
    mine = left.state_dict()
    assert list(mine) == list(theirs)
    for name, value in mine.items():
        assert value.dtype == theirs[name].dtype and torch.equal(value, theirs[name]), name
    for mine_out, theirs_out in zip(outputs(left, kind, text), outputs(right, kind, text), strict=True):
        assert torch.equal(mine_out, theirs_out)


def make_index(bundle: Bundle, seed: int = 0, rows: int = 5) -> SearchIndex:
    vectors = unit_rows(np.random.default_rng(seed).normal(size=(rows, bundle.listing_width())))
    catalogue = pl.DataFrame(
        {
            "id": [f"p{seed}-{row}" for row in range(rows)],
            "product_name": [f"product {row} é" for row in range(rows)],
            "category": [CLASSES[row % len(CLASSES)] for row in range(rows)],
            "category_path": [f"{CLASSES[row % len(CLASSES)]} > part {row}" for row in range(rows)],
            "price": [1.5 * row + 0.25 for row in range(rows)],
            "photos": [[f"p{seed}-{row}-photo{number}" for number in range(row % 3)] for row in range(rows)],
        },
        schema=CATALOGUE_SCHEMA,
    )
    return SearchIndex(vectors, catalogue, {"weights": dict(INDEX_WEIGHTS), "products": rows})


def manifest_of(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    (path / MANIFEST).unlink(missing_ok=True)  # never write through a hard link (see ``linked_copy``)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def linked_copy(source: Path, target: Path) -> None:
    """A copy of a bundle made of hard links (the bundle is 30 MB, and copied for every test): tests
    replace files (unlink, then write) and never write into one, so the original stays as it was
    (``grown`` checks that when the module ends)."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        os.link(file, target / file.name)


def content_name(old: str, content: bytes) -> tuple[str, str]:
    digest = hashlib.sha256(content).hexdigest()
    stem, suffix = old.rsplit("-", 1)[0], old.rsplit(".", 1)[1]
    return f"{stem}-{digest[:16]}.{suffix}", digest


def replace_file(path: Path, ref: dict[str, str], content: bytes) -> None:
    """Put ``content`` in place of the file a manifest entry names, with a matching name and checksum
    (the caller writes the manifest afterwards)."""
    name, digest = content_name(ref["file"], content)
    (path / ref["file"]).unlink()
    (path / name).unlink(missing_ok=True)
    (path / name).write_bytes(content)
    ref.update(file=name, sha256=digest)


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def file_refs(value: Any, where: tuple = ()) -> Iterator[tuple[tuple, dict[str, str]]]:
    """Every ``{"file", "sha256"}`` of a manifest document, with where it is."""
    if isinstance(value, dict):
        if set(value) == {"file", "sha256"}:
            yield where, value
        for key, item in value.items():
            yield from file_refs(item, (*where, key))
    if isinstance(value, list):
        for number, item in enumerate(value):
            yield from file_refs(item, (*where, number))


def load_error(path: Path, pattern: str) -> FbmlError:
    """``load_bundle(path)`` fails with one line naming the bundle and matching ``pattern``."""
    with pytest.raises(FbmlError, match=re.escape(str(path)) + r"\b.*" + pattern) as info:
        load_bundle(path)
    assert "\n" not in str(info.value)
    return info.value


# --- fixtures ----------------------------------------------------------------------------------------


@attrs.frozen
class Parts:
    text: TextSettings
    text_cnn: TextClassifier
    linear: LinearTextModel
    image_cnn: ImageClassifier
    combined: CombinedClassifier


@attrs.frozen
class Grown:
    path: Path
    expected: Bundle  # what was saved last, with the original modules
    stages: dict[str, bytes]  # the manifest after each step


@pytest.fixture(scope="module")
def parts() -> Parts:
    text = text_settings()
    texts, labels = linear_texts()
    linear = fit_linear_text(texts, labels, len(CLASSES), options=LINEAR)
    return Parts(text, new_text_cnn(text), linear, new_image_cnn(), new_combined(text))


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory, parts: Parts) -> Iterator[Grown]:
    """A bundle grown as ``fbml train`` grows one: the text models, then the image model, then the
    combined one with the index, loading what is there before each step."""
    path = tmp_path_factory.mktemp("grown") / "bundle"
    stages: dict[str, bytes] = {}
    bundle = Bundle(CODEC, text=parts.text)
    bundle = bundle.with_model(BundleModel("text-cnn", parts.text_cnn, TEXT_CNN, {"history": {"best_epoch": 2}, "note": "é"}))
    bundle = bundle.with_model(BundleModel("text-linear", parts.linear, None, {"config": LINEAR.to_json()}))
    bundle = bundle.with_predictor("text", Predictor(TEXT_ENSEMBLE, {"choice": {"members": ["text-cnn", "text-linear"]}}))
    save_bundle(bundle, path)
    stages["text"] = (path / MANIFEST).read_bytes()

    bundle = attrs.evolve(load_bundle(path), image=IMAGE_SETTINGS)
    bundle = bundle.with_model(BundleModel("image-cnn", parts.image_cnn, IMAGE, {"history": {"best_epoch": 1}}))
    bundle = bundle.with_predictor("image", Predictor(IMAGE_ENSEMBLE))
    save_bundle(bundle, path)
    stages["image"] = (path / MANIFEST).read_bytes()

    bundle = load_bundle(path).with_model(BundleModel("combined-nn", parts.combined, COMBINED, {"history": {}}))
    bundle = bundle.with_predictor("combined", Predictor(COMBINED_ENSEMBLE, {"choice": {"bias": True}}))
    bundle = attrs.evolve(bundle, index=make_index(bundle))
    save_bundle(bundle, path)
    stages["combined"] = (path / MANIFEST).read_bytes()

    originals = {"text-cnn": parts.text_cnn, "text-linear": parts.linear, "image-cnn": parts.image_cnn,
                 "combined-nn": parts.combined}
    expected = attrs.evolve(bundle, models={kind: attrs.evolve(model, module=originals[kind])
                                            for kind, model in bundle.models.items()})
    yield Grown(path, expected, stages)
    # the tests' hard-linked copies left it as it was
    assert (path / MANIFEST).read_bytes() == stages["combined"]
    refs = [ref for _, ref in file_refs(manifest_of(path))]
    assert {file.name for file in path.iterdir() if file.name not in LOCK_FILES} == {MANIFEST, *(ref["file"] for ref in refs)}
    for ref in refs:
        assert hashlib.sha256((path / ref["file"]).read_bytes()).hexdigest() == ref["sha256"], ref["file"]


@pytest.fixture(scope="module")
def loaded(grown: Grown) -> Bundle:
    return load_bundle(grown.path)


@pytest.fixture
def copy(grown: Grown, tmp_path: Path) -> Path:
    """A copy of the grown bundle to damage."""
    target = tmp_path / "bundle"
    linked_copy(grown.path, target)
    return target


# --- 1. round trips ----------------------------------------------------------------------------------


def test_bundle_files_are_as_readable_as_plain_files(grown: Grown) -> None:
    """A bundle mounted into another user's container needs no chmod: its files get 0666 less the umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in grown.path.iterdir() if file.name not in LOCK_FILES}
    assert modes and set(modes.values()) == {0o666 & ~umask}, modes


@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_torch_models_round_trip_exactly(loaded: Bundle, grown: Grown, parts: Parts, kind: str) -> None:
    model = loaded.model(kind)
    assert not model.training
    assert_same_model(model, grown.expected.models[kind].module, kind, parts.text)
    tensors = [*model.parameters(), *model.buffers()]
    assert {tensor.device.type for tensor in tensors} == {"cpu"}  # none left on the meta device it was built on
    assert all(tensor.is_contiguous() and tensor.data_ptr() % 16 == 0 for tensor in tensors)
    entry = loaded.models[kind]
    assert entry == grown.expected.models[kind]  # kind, typed options, report
    assert type(entry.options) is type(grown.expected.models[kind].options)


def test_loading_rebuilds_image_networks_without_random_draws(grown: Grown) -> None:
    """Their random initial weights would be overwritten: they are built on the meta device, never initialised (the text
    branches, small, are built as training builds them)."""
    image_only = build_model("image-cnn", IMAGE, len(CLASSES), None)
    assert {tensor.device.type for tensor in [*image_only.parameters(), *image_only.buffers()]} == {"meta"}
    state = torch.get_rng_state()
    build_model("image-cnn", IMAGE, len(CLASSES), None)
    assert torch.equal(torch.get_rng_state(), state)
    fresh = image_from_options(IMAGE, len(CLASSES))  # training's image networks are initialised as ever
    assert not torch.equal(torch.get_rng_state(), state) and fresh.head.output_layer.weight.device.type == "cpu"


def test_batch_norm_statistics_were_moved_before_saving(parts: Parts) -> None:
    """Otherwise the round trip above would not show that buffers are saved."""
    fresh = image_from_options(IMAGE, len(CLASSES))
    moved = dict(parts.image_cnn.named_buffers())
    for name, buffer in fresh.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            assert not torch.equal(buffer, moved[name]), name


def test_linear_model_round_trips(loaded: Bundle, parts: Parts) -> None:
    model = loaded.model("text-linear")
    assert isinstance(model, LinearTextModel)
    assert model == parts.linear  # options, vocabularies, idf, coefficients, calibration
    assert loaded.models["text-linear"].options is None
    assert loaded.models["text-linear"].report == {"config": LINEAR.to_json()}
    np.testing.assert_array_equal(model.predict_proba(QUERIES), parts.linear.predict_proba(QUERIES))
    assert model.predict_proba(QUERIES).argmax(axis=1)[:4].tolist() == [0, 1, 2, 3]  # a fitted model, not noise


def test_codec_settings_predictors_and_index_round_trip(loaded: Bundle, grown: Grown) -> None:
    expected = grown.expected
    assert loaded.codec == CODEC
    assert loaded.image == IMAGE_SETTINGS
    assert loaded.text == expected.text
    assert loaded.text is not None and loaded.text.length == 12
    assert loaded.text.word_vectors.vectors.dtype == np.float32
    assert list(loaded.models) == ["text-cnn", "text-linear", "image-cnn", "combined-nn"]
    assert loaded.models["combined-nn"].options == COMBINED
    assert dict(loaded.predictors) == dict(expected.predictors)
    assert loaded.predictor("text").ensemble == TEXT_ENSEMBLE
    assert loaded.predictor("text").ensemble.bias == (0.125, -0.25, 0.0625, 0.0)
    assert loaded.predictor("image").ensemble.members == (("image-cnn", 1.1),)
    assert loaded.predictor("combined").report == {"choice": {"bias": True}}
    assert loaded.index is not None and expected.index is not None
    np.testing.assert_array_equal(loaded.index.vectors, expected.index.vectors)
    assert loaded.index.vectors.dtype == np.float32
    assert loaded.index.catalogue.equals(expected.index.catalogue)
    assert loaded.index.catalogue["product_name"][0] == "product 0 é"
    assert dict(loaded.index.report) == {"weights": INDEX_WEIGHTS, "products": 5}
    assert loaded.index == expected.index


def test_a_fusion_predictor_round_trips(copy: Path, loaded: Bundle) -> None:
    save_bundle(loaded.with_predictor("combined", Predictor(FUSION, {"choice": "fusion"})), copy)
    reloaded = load_bundle(copy)
    assert reloaded.predictor("combined") == Predictor(FUSION, {"choice": "fusion"})
    assert reloaded.predictor("combined").ensemble.names == ("text-cnn", "text-linear", "image-cnn")


def test_saving_a_loaded_bundle_writes_the_same_bytes(grown: Grown, loaded: Bundle, tmp_path: Path) -> None:
    save_bundle(loaded, tmp_path / "again")
    original = {file.name: file.read_bytes() for file in grown.path.iterdir() if file.name not in LOCK_FILES}
    again = {file.name: file.read_bytes() for file in (tmp_path / "again").iterdir() if file.name not in LOCK_FILES}
    assert again == original


def test_missing_model_or_predictor_is_a_clear_error(loaded: Bundle) -> None:
    small = Bundle(CODEC, models={"text-linear": loaded.models["text-linear"]})
    with pytest.raises(FbmlError, match=r"the bundle has no image-cnn model \(it has: text-linear\)"):
        small.model("image-cnn")
    with pytest.raises(FbmlError, match=r"the bundle has no text predictor \(it has: none\)"):
        small.predictor("text")
    with pytest.raises(FbmlError, match=r"unknown predictor 'audio'"):
        small.with_predictor("audio", loaded.predictor("text"))


def test_build_model_needs_text_settings_and_matching_options(parts: Parts) -> None:
    with pytest.raises(FbmlError, match="a text-cnn model needs text settings"):
        build_model("text-cnn", TEXT_CNN, len(CLASSES), None)
    with pytest.raises(FbmlError, match="a combined-nn model cannot be built from TextCnnOptions"):
        build_model("combined-nn", TEXT_CNN, len(CLASSES), (len(parts.text.vocabulary), parts.text.word_vectors.dim))
    model = build_model("image-cnn", IMAGE, len(CLASSES), None)
    assert isinstance(model, ImageClassifier) and model.embedding_dim == 8


# --- 2. a bundle grown step by step ------------------------------------------------------------------


def test_each_step_keeps_what_earlier_steps_wrote(grown: Grown) -> None:
    stages = {step: json.loads(content) for step, content in grown.stages.items()}
    assert list(stages["text"]["models"]) == ["text-cnn", "text-linear"]
    assert list(stages["image"]["models"]) == ["text-cnn", "text-linear", "image-cnn"]
    assert list(stages["combined"]["models"]) == ["text-cnn", "text-linear", "image-cnn", "combined-nn"]
    assert list(stages["combined"]["predictors"]) == ["text", "image", "combined"]
    assert stages["text"]["image"] is None and stages["text"]["index"] is None
    for step, keys in (("text", [("codec",), ("text",), ("models", "text-cnn"), ("models", "text-linear"),
                                 ("predictors", "text")]),
                       ("image", [("image",), ("models", "image-cnn"), ("predictors", "image")])):
        for key in keys:
            earlier, now = stages[step], stages["combined"]
            for part in key:
                earlier, now = earlier[part], now[part]
            # the same entry, key order included: the same text wherever it is written
            assert json.dumps(earlier) == json.dumps(now), (step, key)
    # and the entries' text appears verbatim in the final manifest
    final = grown.stages["combined"].decode()
    block = grown.stages["text"].decode()
    models = block[block.index('"text-cnn": {'):block.index('\n  },\n  "predictors"')]
    assert models in final


def test_manifest_is_the_typed_format(grown: Grown) -> None:
    manifest = read_manifest(grown.path)
    assert isinstance(manifest, Manifest)
    assert manifest.format == BUNDLE_FORMAT == "fbml.bundle/2"
    assert manifest.text is not None and manifest.text.tokenizer == "fbml.tokens/1"
    assert manifest.text.normalisation == "fbml.ascii-nfkd/1"
    assert manifest.models["image-cnn"].options == IMAGE  # type: ignore[union-attr]
    document = manifest_of(grown.path)
    assert document["models"]["text-cnn"]["type"] == "text-cnn"
    assert document["models"]["text-cnn"]["options"] == msgspec.to_builtins(TEXT_CNN)
    assert document["models"]["combined-nn"]["options"] == {"image": msgspec.to_builtins(IMAGE),
                                                            "text": msgspec.to_builtins(TEXT_CNN)}
    assert set(document["models"]["text-linear"]) == {"type", "parameters", "arrays", "report"}
    assert document["image"] == {"backbone": "efficientnet_lite0", "size": SIDE,
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    for settings_or_options in (document["image"], document["models"]["image-cnn"]["options"]):
        assert "weights" not in json.dumps(settings_or_options)  # no weights choice: nothing to download
    assert document["index"]["method"] == "exact"


def test_replacing_a_model_of_the_same_kind(copy: Path, loaded: Bundle, parts: Parts) -> None:
    before = manifest_of(copy)
    old_weights = before["models"]["text-cnn"]["weights"]["file"]
    replacement = new_text_cnn(parts.text, seed=9)
    save_bundle(loaded.with_model(BundleModel("text-cnn", replacement, TEXT_CNN, {"run": 2})), copy)
    after = manifest_of(copy)
    assert list(after["models"]) == list(before["models"])
    assert after["models"]["text-cnn"]["weights"] != before["models"]["text-cnn"]["weights"]
    for kind in ("text-linear", "image-cnn", "combined-nn"):
        assert after["models"][kind] == before["models"][kind]
    assert not (copy / old_weights).exists()
    reloaded = load_bundle(copy)
    assert_same_model(reloaded.model("text-cnn"), replacement, "text-cnn", parts.text)
    assert reloaded.models["text-cnn"].report == {"run": 2}
    assert_same_model(reloaded.model("image-cnn"), parts.image_cnn, "image-cnn", parts.text)


def test_unreferenced_files_are_removed_and_others_left_alone(copy: Path, loaded: Bundle) -> None:
    first = manifest_of(copy)
    (copy / "notes.txt").write_text("mine, not the bundle's")
    (copy / "Codec-0123456789abcdef.json").write_text("{}")  # not a content name: left alone
    stray = copy / "codec-0123456789abcdef.json"
    stray.write_text("{}")  # a content name nothing references: removed
    smaller = Bundle(CODEC, text=attrs.evolve(loaded.text, length=20), models={"text-linear": loaded.models["text-linear"]})
    save_bundle(smaller, copy)
    second = manifest_of(copy)
    names = {file.name for file in copy.iterdir() if file.name not in LOCK_FILES}
    assert second["text"]["vocabulary"] == first["text"]["vocabulary"]  # unchanged content keeps its file
    assert second["text"]["length"] == 20
    referenced = {MANIFEST, *(ref["file"] for _, ref in file_refs(second))}
    assert names == referenced | {"notes.txt", "Codec-0123456789abcdef.json"}
    for gone in (first["models"]["image-cnn"]["weights"], first["index"]["vectors"], first["index"]["catalogue_chunks"][0]):
        assert gone["file"] not in names
    assert set(load_bundle(copy).models) == {"text-linear"}


def test_json_everywhere_but_weights_and_arrays(grown: Grown) -> None:
    from safetensors import safe_open

    files = sorted(file for file in grown.path.iterdir() if file.name not in LOCK_FILES)
    assert all(file.is_file() and not file.is_symlink() for file in files)
    assert not [file.name for file in files if file.name.startswith(".") or file.name.endswith(".tmp")]
    suffixes = [file.suffix for file in files]
    assert suffixes.count(".safetensors") == 4  # text-cnn, text-linear arrays, image-cnn, combined-nn
    assert suffixes.count(".npy") == 2  # word vectors, index vectors
    for file in files:
        head = file.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x04", b"PK"), f"{file.name} looks like a pickle or a zip"
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="numpy") as tensors:
                assert list(tensors.keys())
        elif file.suffix == ".npy":
            array = np.load(file, allow_pickle=False)
            assert array.dtype == np.float32 and array.ndim == 2
        else:
            assert file.suffix == ".json"
            json.loads(file.read_text(encoding="utf-8"))
        if file.name != MANIFEST:
            assert re.fullmatch(r"[a-z][a-z-]*-[0-9a-f]{16}\.(json|npy|safetensors)", file.name), file.name
    manifest = manifest_of(grown.path)
    referenced = {MANIFEST}
    for _, ref in file_refs(manifest):
        content = (grown.path / ref["file"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == ref["sha256"]
        assert ref["file"].rsplit("-", 1)[1].startswith(ref["sha256"][:16])
        referenced.add(ref["file"])
    assert referenced == {file.name for file in files}  # nothing stray, nothing missing


# --- 3. the manifest pins every factory argument -----------------------------------------------------


def test_changed_defaults_do_not_change_a_saved_bundle(
    grown: Grown, parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("DEFAULT_EMBEDDING_DIM", 32), ("DEFAULT_KERNEL_SIZES", (4,)), ("DEFAULT_TEXT_CHANNELS", 3),
                        ("DEFAULT_TEXT_DROPOUT", 0.9), ("DEFAULT_WORD_DROPOUT", 0.9), ("DEFAULT_POSITIONS", 2),
                        ("DEFAULT_BRANCH_SCALE", 1.0)):
        monkeypatch.setattr(fbml.modeling.models, name, value)
    # the factories bind their defaults when defined: change those too, as an edit of models.py would
    monkeypatch.setattr(fbml.modeling.models.text_model, "__kwdefaults__", {
        "embedding_dim": 32, "kernel_sizes": (4,), "channels": 3, "dropout": 0.9, "freeze_embeddings": True,
        "normalise_embeddings": False, "positions": 2, "word_dropout": 0.9, "branch_scale": 1.0,
    })
    monkeypatch.setattr(fbml.modeling.models.image_model, "__kwdefaults__", {
        "backbone": "resnet50", "weights": "none", "trainable_stages": 3, "embedding_dim": 32, "dropout": 0.9,
    })
    lite = fbml.modeling.backbones.BACKBONES["efficientnet_lite0"]
    other_default = attrs.evolve(lite, default_trainable_stages=3)
    monkeypatch.setitem(fbml.modeling.backbones.BACKBONES, "efficientnet_lite0", other_default)  # type: ignore[arg-type]
    changed = fbml.modeling.models.text_model(np.ones((5, 4), np.float32), 3)
    assert changed.branch_scale == 1.0 and changed.embedding_dim == 32  # the patches do bite

    reloaded = load_bundle(grown.path)
    for kind in TORCH_KINDS:
        assert_same_model(reloaded.model(kind), grown.expected.models[kind].module, kind, parts.text)
    text_cnn = reloaded.model("text-cnn")
    assert isinstance(text_cnn, TextClassifier)
    assert (text_cnn.branch_scale, text_cnn.word_dropout) == (3.0, 0.1)  # not in the weights: from the options
    assert [conv.kernel_size for conv in text_cnn.convolutions] == [(2,), (3,)]
    combined = reloaded.model("combined-nn")
    assert isinstance(combined, CombinedClassifier) and combined.text.branch_scale == 3.0
    assert reloaded.models["image-cnn"].options == IMAGE


def test_linear_parameters_pin_every_option(grown: Grown) -> None:
    ref = manifest_of(grown.path)["models"]["text-linear"]["parameters"]
    parameters = json.loads((grown.path / ref["file"]).read_text())
    assert parameters["options"] == LINEAR.to_json()
    assert set(parameters["options"]) == {field.name for field in attrs.fields(LinearTextOptions)}


# --- 4. damaged bundles ------------------------------------------------------------------------------


def test_no_manifest(tmp_path: Path) -> None:
    load_error(tmp_path, r": not a bundle \(no bundle\.json\)")


def test_path_is_a_file_or_absent(tmp_path: Path) -> None:
    file = tmp_path / "bundle"
    file.write_text("{}")
    load_error(file, r": not a bundle \(not a folder\)")
    load_error(tmp_path / "absent", r": not a bundle \(no such folder\)")


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe\x00", b"{\"format\": \"fbml.bundle/2\", "])
def test_manifest_not_json(tmp_path: Path, content: bytes) -> None:
    (tmp_path / MANIFEST).write_bytes(content)
    load_error(tmp_path, r"bundle\.json: not valid JSON")


def test_the_old_format_says_how_to_retrain(copy: Path) -> None:
    write_manifest(copy, {"format": "fbml.bundle/1", "codec": "codec.json", "models": {"text": {"weights": "text.safetensors"}}})
    error = load_error(copy, r"bundle\.json: bundle format 'fbml\.bundle/1' is no longer read")
    assert "fbml train" in str(error) and "'fbml.bundle/2'" in str(error)


def test_a_newer_format_is_not_called_old(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["format"] = "fbml.bundle/3"
    write_manifest(copy, manifest)
    error = load_error(copy, r"fbml\.bundle/3' is newer than this fbml reads")
    assert "no longer read" not in str(error) and "upgrade fbml" in str(error)


@pytest.mark.parametrize("format_", ["acme.bundle/2", None, 2, "FBML.BUNDLE/2"])
def test_unknown_format(copy: Path, format_: object) -> None:
    manifest = manifest_of(copy)
    manifest["format"] = format_
    write_manifest(copy, manifest)
    load_error(copy, r"bundle\.json: not a valid fbml\.bundle/2 manifest: .*\$\.format")


def test_only_the_format(copy: Path) -> None:
    write_manifest(copy, {"format": BUNDLE_FORMAT})
    load_error(copy, r"not a valid fbml\.bundle/2 manifest: Object missing required field `codec`")


def test_not_an_object(copy: Path) -> None:
    write_manifest(copy, [BUNDLE_FORMAT])  # type: ignore[arg-type]
    load_error(copy, r"not a valid fbml\.bundle/2 manifest: Expected `object`, got `array`")


def test_models_as_a_list(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["models"] = list(manifest["models"].values())
    write_manifest(copy, manifest)
    load_error(copy, r"Expected `object`, got `array` - at `\$\.models`")


@pytest.mark.parametrize("where", [(), ("codec",), ("image",), ("text",), ("models", "text-cnn"),
                                   ("models", "text-cnn", "options"), ("models", "combined-nn", "options", "image"),
                                   ("models", "text-linear", "arrays"), ("predictors", "text"),
                                   ("predictors", "text", "members", 0), ("index",)])
def test_unknown_fields_are_refused(copy: Path, where: tuple) -> None:
    manifest = manifest_of(copy)
    target = manifest
    for part in where:
        target = target[part]
    target["weights_url"] = "https://example.com/weights.pth"
    write_manifest(copy, manifest)
    load_error(copy, r"Object contains unknown field `weights_url`")


def test_a_model_described_as_another_kind(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["models"]["text-cnn"] = manifest["models"]["image-cnn"]
    write_manifest(copy, manifest)
    load_error(copy, r"bundle\.json: model 'text-cnn' is described as a 'image-cnn' model")


def test_a_model_under_an_unknown_name(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["models"] = {"audio-cnn": manifest["models"]["image-cnn"]} | manifest["models"]
    write_manifest(copy, manifest)
    load_error(copy, r"not a valid fbml.bundle/2 manifest: Invalid enum value 'audio-cnn' - at `key` in `\$.models`")


@pytest.mark.parametrize("tag", ["audio", None, "Text-Cnn"])
def test_an_unknown_type_tag(copy: Path, tag: object) -> None:
    manifest = manifest_of(copy)
    manifest["models"]["text-cnn"]["type"] = tag
    write_manifest(copy, manifest)
    load_error(copy, r"not a valid fbml\.bundle/2 manifest: .* - at `\$\.models\[\.\.\.\]\.type`")


def test_a_tag_that_differs_from_its_fields(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["models"]["text-cnn"]["type"] = "image-cnn"  # text CNN options under an image tag
    write_manifest(copy, manifest)
    load_error(copy, r"not a valid fbml\.bundle/2 manifest: Object contains unknown field `kernel_sizes`"
                     r" - at `\$\.models\[\.\.\.\]\.options`")


def test_an_unknown_backbone_in_the_settings(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["image"]["backbone"] = "vgg99"
    write_manifest(copy, manifest)
    load_error(copy, r"bundle\.json: unknown backbone 'vgg99' \(choose from efficientnet_lite0, resnet50\)")


def test_an_unknown_backbone_in_the_options(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["models"]["image-cnn"]["options"]["backbone"] = "vgg99"
    write_manifest(copy, manifest)
    load_error(copy, r"cannot rebuild the image-cnn model: unknown backbone 'vgg99'")


def test_a_model_on_another_backbone_than_the_settings(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["image"]["backbone"] = "resnet50"
    write_manifest(copy, manifest)
    load_error(copy, r"bundle\.json: the image-cnn model's backbone efficientnet_lite0 is not the bundle's resnet50")


def test_trainable_stages_beyond_the_backbone(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["models"]["image-cnn"]["options"]["trainable_stages"] = 9  # in the manifest's bound, past lite0's 7
    write_manifest(copy, manifest)
    load_error(copy, r"cannot rebuild the image-cnn model: trainable_stages must be between 0 and 7")


@pytest.mark.parametrize(("where", "value", "message"), [
    (("image", "size"), 0, r"Expected `int` >= 8 - at `\$\.image\.size`"),
    (("image", "size"), 100000, r"Expected `int` <= 1024 - at `\$\.image\.size`"),
    (("image", "mean", 0), 50.0, r"Expected `float` < 10\.0 - at `\$\.image\.mean\[0\]`"),
    (("image", "std", 2), 0.0, r"Expected `float` > 0\.0 - at `\$\.image\.std\[2\]`"),
    (("text", "length"), 10**9, r"Expected `int` <= 4096 - at `\$\.text\.length`"),
    (("models", "text-cnn", "options", "embedding_dim"), 0, r"Expected `int` >= 1"),
    (("models", "image-cnn", "options", "embedding_dim"), 10**6, r"Expected `int` <= 8192"),
    (("models", "text-cnn", "options", "dropout"), 1.5, r"Expected `float` < 1\.0 - at `\$\.models\[\.\.\.\]\.options\.dropout`"),
    (("models", "image-cnn", "options", "dropout"), -0.1, r"Expected `float` >= 0\.0"),
    (("models", "text-cnn", "options", "kernel_sizes", 0), 999, r"Expected `int` <= 16"),
    (("models", "text-cnn", "options", "kernel_sizes"), [], r"Expected `array` of length >= 1"),
    (("models", "text-cnn", "options", "kernel_sizes"), [2] * 9, r"Expected `array` of length <= 8"),
    (("models", "text-cnn", "options", "channels"), -1, r"Expected `int` >= 1"),
    (("models", "text-cnn", "options", "positions"), 10**5, r"Expected `int` <= 4096"),
    (("models", "text-cnn", "options", "branch_scale"), 0.0, r"Expected `float` > 0\.0"),
    (("models", "text-cnn", "options", "freeze_embeddings"), 1, r"Expected `bool`, got `int`"),
    (("models", "combined-nn", "options", "image", "trainable_stages"), 17, r"Expected `int` <= 16"),
    (("predictors", "text", "members", 0, "weight"), -1.0, r"Expected `float` >= 0\.0"),
    (("predictors", "text", "members"), [], r"Expected `array` of length >= 1"),
    (("predictors", "text", "bias", 0), 1e300, r"Expected `float` <= 1000000\.0"),
    (("text", "tokenizer"), "fbml.tokens/2", r"Invalid enum value 'fbml\.tokens/2' - at `\$\.text\.tokenizer`"),
    (("index", "method"), "approximate", r"Invalid enum value 'approximate'"),
])
def test_out_of_bound_values(copy: Path, where: tuple, value: object, message: str) -> None:
    manifest = manifest_of(copy)
    target = manifest
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    write_manifest(copy, manifest)
    load_error(copy, r"bundle\.json: not a valid fbml\.bundle/2 manifest: " + message)


def test_an_unknown_predictor_role(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["predictors"]["audio"] = manifest["predictors"]["text"]
    write_manifest(copy, manifest)
    load_error(copy, r"not a valid fbml\.bundle/2 manifest: Invalid enum value 'audio' - at `key` in `\$\.predictors`")


@pytest.mark.parametrize("name", [
    "../codec-0123456789abcdef.json", "sub/codec-0123456789abcdef.json", "/etc/passwd",
    "/tmp/codec-0123456789abcdef.json", "codec.json", "codec-0123456789abcdef.pkl", "codec-0123456789ABCDEF.json",
    "codec-0123456789abcdef.json/..", "..",
])
def test_file_names_that_are_paths_are_refused(copy: Path, name: str) -> None:
    manifest = manifest_of(copy)
    manifest["codec"]["file"] = name
    write_manifest(copy, manifest)
    load_error(copy, r"not a valid fbml\.bundle/2 manifest: Expected `str` matching regex .* - at `\$\.codec\.file`")


def test_a_path_inside_the_bundle_is_refused_too(copy: Path) -> None:
    manifest = manifest_of(copy)
    (copy / "sub").mkdir()
    shutil.copy(copy / manifest["codec"]["file"], copy / "sub" / manifest["codec"]["file"])
    manifest["codec"]["file"] = "sub/" + manifest["codec"]["file"]
    write_manifest(copy, manifest)
    load_error(copy, r"Expected `str` matching regex")


@pytest.mark.parametrize("digest", ["0" * 63, "A" * 64, "g" * 64, ""])
def test_malformed_checksums(copy: Path, digest: str) -> None:
    manifest = manifest_of(copy)
    manifest["models"]["text-cnn"]["weights"]["sha256"] = digest
    write_manifest(copy, manifest)
    load_error(copy, r"Expected `str` matching regex .* - at `\$\.models\[\.\.\.\]\.weights\.sha256`")


def ref_at(manifest: dict[str, Any], where: tuple) -> dict[str, str]:
    target: Any = manifest
    for part in where:
        target = target[part]
    return target


REFS = [("codec",), ("text", "vocabulary"), ("text", "words"), ("text", "vectors"), ("models", "text-cnn", "weights"),
        ("models", "text-linear", "parameters"), ("models", "text-linear", "arrays"), ("models", "image-cnn", "weights"),
        ("models", "combined-nn", "weights"), ("index", "vectors"), ("index", "catalogue_chunks", 0)]


def test_the_list_of_references_is_complete(grown: Grown) -> None:
    assert sorted(where for where, _ in file_refs(manifest_of(grown.path))) == sorted(REFS)


@pytest.mark.parametrize("where", REFS)
def test_a_missing_file(copy: Path, where: tuple) -> None:
    ref = ref_at(manifest_of(copy), where)
    (copy / ref["file"]).unlink()
    load_error(copy, rf": bundle file {re.escape(ref['file'])} is missing")


@pytest.mark.parametrize("where", REFS)
def test_a_checksum_mismatch(copy: Path, where: tuple) -> None:
    ref = ref_at(manifest_of(copy), where)
    file = copy / ref["file"]
    content = bytearray(file.read_bytes())
    content[-2] ^= 0x01
    file.unlink()
    file.write_bytes(bytes(content))
    load_error(copy, rf": bundle file {re.escape(ref['file'])} does not match its checksum")


def test_a_directory_in_place_of_a_file(copy: Path) -> None:
    ref = manifest_of(copy)["codec"]
    (copy / ref["file"]).unlink()
    (copy / ref["file"]).mkdir()
    load_error(copy, rf"bundle file {re.escape(ref['file'])} is missing")


@pytest.mark.parametrize("where", [("codec",), ("models", "text-cnn", "weights"), ("index", "vectors")])
def test_a_symlink_out_of_the_bundle_is_refused(copy: Path, tmp_path: Path, where: tuple) -> None:
    ref = ref_at(manifest_of(copy), where)
    outside = tmp_path / "outside" / ref["file"]
    outside.parent.mkdir()
    shutil.move(copy / ref["file"], outside)  # the right content, the right checksum, but not in the bundle
    (copy / ref["file"]).symlink_to(outside)
    assert hashlib.sha256((copy / ref["file"]).read_bytes()).hexdigest() == ref["sha256"]
    load_error(copy, rf"bundle file {re.escape(ref['file'])} is a symbolic link")


@pytest.mark.parametrize("where", [("models", "text-cnn", "weights"), ("models", "text-linear", "arrays")])
@pytest.mark.parametrize("content", [
    b"\xff" * 8 + b"{}",  # a header length far past the end
    (20).to_bytes(8, "little") + b'{"a": "not a tensor"',  # a header that is not JSON
    b"",
    b"abc",
])
def test_a_safetensors_file_that_is_not_one(copy: Path, where: tuple, content: bytes) -> None:
    manifest = manifest_of(copy)
    ref = ref_at(manifest, where)
    replace_file(copy, ref, content)
    write_manifest(copy, manifest)
    load_error(copy, rf"bundle file {re.escape(ref['file'])} is not a safetensors file")


def safetensors_file(header: dict[str, Any], data: bytes) -> bytes:
    """A safetensors file of ``header`` (as JSON) and ``data``, however wrong either is."""
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + data


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
TAMPERED_SAFETENSORS = {
    "a gap": ({"a": F32, "b": {**F32, "data_offsets": [12, 20]}}, 20, r"tensor 'b' .*lies at bytes 12 to 20 of the data"),
    "an overlap": ({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, 12, r"tensor 'b' .*lies at bytes 4 to 12"),
    "past the end": ({"a": {**F32, "shape": [4], "data_offsets": [0, 16]}}, 8, r"tensor 'a' ends at byte 16 of the data"),
    "bytes left over": ({"a": F32}, 12, r"its tensors fill 8 bytes of the data, the file holds 12"),
    "a shape of other size": ({"a": {**F32, "shape": [3]}}, 8, r"tensor 'a' \(3 x 4 bytes\) lies at bytes 0 to 8"),
    "an unknown dtype": ({"a": {**F32, "dtype": "F128"}}, 8, r"tensor 'a' has dtype 'F128', not one of BOOL"),
    "bfloat16": ({"a": {**F32, "dtype": "BF16", "shape": [4]}}, 8, r"has dtype 'BF16'"),
    "a negative size": ({"a": {**F32, "shape": [-2]}}, 8, r"tensor 'a' needs a shape and two ascending data offsets"),
    "offsets backwards": ({"a": {**F32, "data_offsets": [8, 0]}}, 8, r"needs a shape and two ascending data offsets"),
    "not an entry": ({"a": [1, 2]}, 8, r"tensor 'a' has dtype None"),
    "a huge empty shape": ({"a": {**F32, "shape": [0, 2**62], "data_offsets": [0, 0]}}, 0, r"tensor 'a' cannot be an array"),
    "not an object": ([F32], 8, r"its header is not a JSON object"),
}


@pytest.mark.parametrize("where", [("models", "text-cnn", "weights"), ("models", "text-linear", "arrays")])
@pytest.mark.parametrize("case", TAMPERED_SAFETENSORS)
def test_a_safetensors_file_with_a_tampered_header(copy: Path, where: tuple, case: str) -> None:
    """The header is read as the safetensors library reads it (the arrays then view the bytes read, uncopied): one line
    naming the file and what is wrong."""
    header, size, message = TAMPERED_SAFETENSORS[case]
    manifest = manifest_of(copy)
    ref = ref_at(manifest, where)
    replace_file(copy, ref, safetensors_file(header, bytes(size)))
    write_manifest(copy, manifest)
    load_error(copy, rf"bundle file {re.escape(ref['file'])} is not a safetensors file \(.*{message}")


def test_a_safetensors_header_longer_than_the_file(copy: Path) -> None:
    manifest = manifest_of(copy)
    ref = manifest["models"]["text-linear"]["arrays"]
    replace_file(copy, ref, (10**6).to_bytes(8, "little") + b"{}")
    write_manifest(copy, manifest)
    load_error(copy, r"is not a safetensors file \(its header claims 1000000 bytes, the file holds 2 after the length\)")


def small_array(dtype: type, shape: list[int]) -> np.ndarray:
    return (np.arange(int(np.prod(shape)), dtype=np.int64) % 7).astype(dtype).reshape(shape)


safetensors_dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, bool])
safetensors_arrays_dicts = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6),
    st.tuples(safetensors_dtypes, st.lists(st.integers(0, 3), max_size=3)).map(lambda pair: small_array(*pair)),
    max_size=4,
)


@settings(max_examples=200)
@given(arrays=safetensors_arrays_dicts, data=st.data())
def test_safetensors_files_are_read_as_safetensors_reads_them(arrays: dict[str, np.ndarray], data: st.DataObject) -> None:
    """The same arrays from a file it wrote; the same refusal of one whose header was then changed (an offset, a size, a
    dtype, the header's length) or that gained or lost a byte."""
    from fbml.bundle.arrays import safetensors_arrays
    from safetensors import SafetensorError
    from safetensors.numpy import load, save

    content = save(arrays)
    length = int.from_bytes(content[:8], "little")
    header, body = json.loads(content[8 : 8 + length]), content[8 + length :]
    names = sorted(name for name in header if name != "__metadata__")
    changes = ["none", "offset", "shape", "dtype", "length", "append", "truncate"] if names else ["none", "append"]
    change = data.draw(st.sampled_from(changes))
    name = data.draw(st.sampled_from(names)) if names else ""
    if change == "offset":
        header[name]["data_offsets"][data.draw(st.integers(0, 1))] += data.draw(st.sampled_from([-4, -1, 1, 2, 8]))
    elif change == "shape":
        header[name]["shape"] = data.draw(st.lists(st.integers(0, 4), max_size=3))
    elif change == "dtype":
        header[name]["dtype"] = data.draw(st.sampled_from(["F32", "F64", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"]))
    changed = safetensors_file(header, body) if change in ("offset", "shape", "dtype") else content
    if change == "length":
        changed = (length + data.draw(st.sampled_from([-1, 1, 9]))).to_bytes(8, "little") + content[8:]
    changed = changed + b"\0" if change == "append" else changed[:-1] if change == "truncate" else changed
    try:
        expected = load(changed)
    except (SafetensorError, ValueError):
        event(f"{change}: refused")
        with pytest.raises(FbmlError):
            safetensors_arrays(changed)
    else:
        event(f"{change}: read")
        mine = safetensors_arrays(changed)
        assert mine.keys() == expected.keys()
        for key, array in mine.items():
            assert (array.dtype, array.shape) == (expected[key].dtype, expected[key].shape)
            assert np.array_equal(array, expected[key])
            assert not array.flags.writeable and array.base is not None  # a view of the bytes read


@pytest.mark.parametrize("where", [("text", "vectors"), ("index", "vectors")])
def test_an_object_array_is_not_unpickled(copy: Path, where: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    manifest = manifest_of(copy)
    ref = ref_at(manifest, where)
    replace_file(copy, ref, npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True))
    write_manifest(copy, manifest)

    def no_unpickling(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a bundle file was unpickled")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    load_error(copy, rf"bundle file {re.escape(ref['file'])}: holds object \(2,\), not a 2-D float32 array")


@pytest.mark.parametrize("where", [("text", "vectors"), ("index", "vectors")])
@pytest.mark.parametrize(("array", "described"), [
    (np.zeros((26, 8), np.float64), r"float64 \(26, 8\)"),
    (np.zeros(26, np.float32), r"float32 \(26,\)"),
    (np.zeros((2, 3, 4), np.float32), r"float32 \(2, 3, 4\)"),
    (np.zeros((5, 28), np.int32), r"int32 \(5, 28\)"),
])
def test_an_npy_of_the_wrong_dtype_or_ndim(copy: Path, where: tuple, array: np.ndarray, described: str) -> None:
    manifest = manifest_of(copy)
    ref = ref_at(manifest, where)
    replace_file(copy, ref, npy_bytes(array))
    write_manifest(copy, manifest)
    load_error(copy, rf"bundle file {re.escape(ref['file'])}: holds {described}, not a 2-D float32 array")


def test_an_npy_with_a_broken_header(copy: Path) -> None:
    manifest = manifest_of(copy)
    ref = manifest["index"]["vectors"]
    replace_file(copy, ref, npy_bytes(np.zeros((5, 28), np.float32))[:40])
    write_manifest(copy, manifest)
    load_error(copy, rf"bundle file {re.escape(ref['file'])}: not a plain \.npy array")


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, vectors=np.zeros((5, 28), np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip", _npz_bytes()], ids=["empty", "bad-zip", "npz"])
def test_an_npy_that_is_empty_or_a_zip(copy: Path, content: bytes) -> None:
    manifest = manifest_of(copy)
    ref = manifest["index"]["vectors"]
    replace_file(copy, ref, content)
    write_manifest(copy, manifest)
    load_error(copy, rf"bundle file {re.escape(ref['file'])}")


@pytest.mark.parametrize(("kind", "option", "value", "key"), [
    ("text-cnn", "channels", 9, r"convolutions\.0\.weight"),
    ("text-cnn", "positions", 7, r"position_weights"),
    ("text-cnn", "embedding_dim", 17, r"head\."),
    ("image-cnn", "embedding_dim", 9, r"head\."),
    ("image-cnn", "trainable_stages", 2, r""),
])
def test_weights_that_do_not_fit_the_options(copy: Path, kind: str, option: str, value: object, key: str) -> None:
    manifest = manifest_of(copy)
    manifest["models"][kind]["options"][option] = value
    write_manifest(copy, manifest)
    load_error(copy, rf": the {kind} weights do not fit its options, codec or vocabulary: .*{key}")


def test_combined_weights_that_do_not_fit_its_text_branch(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["models"]["combined-nn"]["options"]["text"]["kernel_sizes"] = [2]
    write_manifest(copy, manifest)
    load_error(copy, r"the combined-nn weights do not fit its options, codec or vocabulary: Unexpected key\(s\)")


def test_weights_of_another_model(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["models"]["image-cnn"]["weights"] = manifest["models"]["text-cnn"]["weights"]
    write_manifest(copy, manifest)
    load_error(copy, r"the image-cnn weights do not fit its options, codec or vocabulary")


def test_a_codec_with_another_number_of_classes(copy: Path) -> None:
    manifest = manifest_of(copy)
    replace_file(copy, manifest["codec"], json.dumps(LabelCodec((*CLASSES, "tables")).to_json()).encode())
    write_manifest(copy, manifest)
    load_error(copy, r"the text-cnn weights do not fit its options, codec or vocabulary: size mismatch for head\.classify")


def test_a_codec_the_linear_model_does_not_fit(copy: Path) -> None:
    manifest = manifest_of(copy)
    replace_file(copy, manifest["codec"], json.dumps(LabelCodec((*CLASSES, "tables")).to_json()).encode())
    manifest["models"] = {"text-linear": manifest["models"]["text-linear"]}  # read before any torch model
    write_manifest(copy, manifest)
    load_error(copy, r": the text-linear model has 4 classes, its codec 5")


@pytest.mark.parametrize(("content", "message"), [
    (b'{"format": "fbml.label-codec/0", "classes": ["a", "b"]}', r"is not a valid codec: not a label codec"),
    (b'{"format": "fbml.label-codec/1", "classes": ["b", "a"]}', r"is not a valid codec: label codec classes must be unique"),
    (b'{"format": "fbml.label-codec/1", "classes": []}', r"is not a valid codec: a label codec needs at least one class"),
    (b"[1, 2, 3]", r"is not a valid codec"),
    (b"\xff\xfe", r"is not valid JSON"),
    (b"{", r"is not valid JSON"),
])
def test_a_codec_file_that_is_not_one(copy: Path, content: bytes, message: str) -> None:
    manifest = manifest_of(copy)
    replace_file(copy, manifest["codec"], content)
    write_manifest(copy, manifest)
    load_error(copy, rf"bundle file codec-[0-9a-f]{{16}}\.json {message}")


def test_a_vocabulary_of_another_size(copy: Path, parts: Parts) -> None:
    manifest = manifest_of(copy)
    vocabulary = Vocabulary((*parts.text.vocabulary.tokens, "extra"))
    replace_file(copy, manifest["text"]["vocabulary"], json.dumps(vocabulary.to_json()).encode())
    write_manifest(copy, manifest)
    load_error(copy, r"the text-cnn weights do not fit .*size mismatch for embedding\.weight")


@pytest.mark.parametrize(("where", "value", "message"), [
    (("text", "vocabulary"), {"tokens": ["<unk>", "<pad>", "a"]}, r"is not a valid vocabulary: a vocabulary must start"),
    (("text", "vocabulary"), {"tokens": ["<pad>", "<unk>", "a", "a"]}, r"is not a valid vocabulary: duplicate"),
    (("text", "vocabulary"), ["<pad>"], r"is not a valid vocabulary"),
    (("text", "words"), ["a", 2], r"is not a valid word list: expected a JSON list of strings"),
    (("text", "words"), ["word0"], r"the word vectors do not fit their words"),
])
def test_text_files_that_do_not_fit(copy: Path, where: tuple, value: object, message: str) -> None:
    manifest = manifest_of(copy)
    replace_file(copy, ref_at(manifest, where), json.dumps(value).encode())
    write_manifest(copy, manifest)
    load_error(copy, message)


@pytest.mark.parametrize("content", [b'{"tokens": NaN}', b'{"tokens": ["\\ud800"]}', b'{"tokens": [1e400]}'])
def test_json_that_only_pythons_parser_reads_is_read_by_it(copy: Path, content: bytes) -> None:
    """msgspec's parser reads a bundle's JSON where it can; what it refuses and Python's reads (NaN, a lone surrogate
    escape, a number past a float's range) is read by Python's, then checked as ever."""
    manifest = manifest_of(copy)
    replace_file(copy, manifest["text"]["vocabulary"], content)
    write_manifest(copy, manifest)
    load_error(copy, r"is not a valid vocabulary")


def test_linear_parameters_that_are_broken(copy: Path) -> None:
    manifest = manifest_of(copy)
    ref = manifest["models"]["text-linear"]["parameters"]
    parameters = json.loads((copy / ref["file"]).read_text())
    parameters["num_classes"] = 3
    replace_file(copy, ref, json.dumps(parameters).encode())
    write_manifest(copy, manifest)
    load_error(copy, r"the text-linear model is broken: not a linear text model: coef must have 3 rows")


@pytest.mark.parametrize("block", ["word", "char"])
def test_linear_parameters_with_a_repeated_vocabulary_entry(copy: Path, block: str) -> None:
    manifest = manifest_of(copy)
    ref = manifest["models"]["text-linear"]["parameters"]
    parameters = json.loads((copy / ref["file"]).read_text())
    vocabulary = parameters[f"{block}_vocabulary"]
    repeated = vocabulary[-1] = vocabulary[1]  # as many entries as the arrays have columns
    replace_file(copy, ref, json.dumps(parameters).encode())
    write_manifest(copy, manifest)
    load_error(copy, rf"the text-linear model is broken: .*duplicate {block} vocabulary entr\(ies\): \[{re.escape(repr(repeated))}\]")  # fmt: skip


@pytest.mark.parametrize(("name", "bad"), [("coef", np.nan), ("char_idf", np.inf), ("intercept", -np.inf)])
def test_linear_arrays_that_are_not_finite(copy: Path, parts: Parts, name: str, bad: float) -> None:
    from safetensors.numpy import save

    manifest = manifest_of(copy)
    arrays = {key: array.copy() for key, array in parts.linear.arrays().items()}
    arrays[name].reshape(-1)[-1] = bad
    replace_file(copy, manifest["models"]["text-linear"]["arrays"], save(arrays))
    write_manifest(copy, manifest)
    load_error(copy, rf"the text-linear model is broken: .*{name} has non-finite values")


def test_linear_arrays_of_the_wrong_dtype(copy: Path, parts: Parts) -> None:
    from safetensors.numpy import save

    manifest = manifest_of(copy)
    arrays = {**parts.linear.arrays(), "coef": parts.linear.coef.astype(np.float64)}
    replace_file(copy, manifest["models"]["text-linear"]["arrays"], save(arrays))
    write_manifest(copy, manifest)
    load_error(copy, r"the text-linear model is broken: .*coef must be float32, got float64")


def test_a_predictor_naming_a_model_the_bundle_lacks(copy: Path) -> None:
    manifest = manifest_of(copy)
    del manifest["models"]["combined-nn"]
    write_manifest(copy, manifest)
    load_error(copy, r"bundle\.json: the combined predictor uses model\(s\) the bundle lacks: combined-nn")


def test_a_predictor_naming_a_model_no_bundle_has(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["predictors"]["text"]["members"].append({"model": "text-rnn", "weight": 1.0})
    write_manifest(copy, manifest)
    load_error(copy, r"Invalid enum value 'text-rnn' - at `\$.predictors\[...\].members\[2\].model`")


def test_a_predictor_whose_model_was_dropped(copy: Path) -> None:
    manifest = manifest_of(copy)
    del manifest["models"]["image-cnn"]
    write_manifest(copy, manifest)
    load_error(copy, r"the image predictor uses model\(s\) the bundle lacks: image-cnn")


@pytest.mark.parametrize("bias", [[0.0] * 3, [0.0] * 5, []])
def test_a_predictor_bias_of_the_wrong_length(copy: Path, bias: list[float]) -> None:
    manifest = manifest_of(copy)
    manifest["predictors"]["combined"]["bias"] = bias
    write_manifest(copy, manifest)
    load_error(copy, rf"bundle\.json: the combined predictor has {len(bias)} biases for 4 classes")


def test_image_models_need_image_settings(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["image"] = None
    write_manifest(copy, manifest)
    load_error(copy, r"bundle\.json: the image-cnn model needs image settings")


def test_text_models_need_text_settings(copy: Path) -> None:
    manifest = manifest_of(copy)
    del manifest["text"]
    write_manifest(copy, manifest)
    load_error(copy, r"cannot rebuild the text-cnn model: a text-cnn model needs text settings")


def test_an_index_of_the_wrong_width(copy: Path) -> None:
    manifest = manifest_of(copy)
    replace_file(copy, manifest["index"]["vectors"], npy_bytes(unit_rows(np.ones((5, 27), np.float32))))
    write_manifest(copy, manifest)
    load_error(copy, r": the search index has 27-dim vectors, the bundle's models make 28")


def test_an_index_whose_catalogue_has_another_length(copy: Path) -> None:
    manifest = manifest_of(copy)
    ref = manifest["index"]["catalogue_chunks"][0]
    rows = json.loads((copy / ref["file"]).read_text())
    replace_file(copy, ref, json.dumps(rows[:4]).encode())
    write_manifest(copy, manifest)
    load_error(copy, r": the index has 5 vectors for 4 catalogue rows")


@pytest.mark.parametrize(("change", "message"), [
    (lambda rows: [{**rows[0], "extra": 1}, *rows[1:]], r"an index catalogue is a list of rows with keys"),
    (lambda rows: {"rows": rows}, r"is not a valid catalogue: expected a JSON list"),
    (lambda rows: [rows[0], rows[0], *rows[2:]], r"Catalogue: column 'id' fails unique"),
    (lambda rows: [{**rows[0], "id": None}, *rows[1:]], r"Catalogue: column 'id' fails not_null"),
    (lambda rows: [{**rows[0], "price": 2}, *rows[1:]], None),  # an integer price is a price
    (lambda rows: [{**rows[0], "photos": ["x"] * 101}, *rows[1:]], r"row 0: photos must be a list of at most 100"),
    (lambda rows: [{**rows[0], "photos": ["x" * 5000]}, *rows[1:]], r"row 0: its ids, names, paths and photo ids are strings"),
    (lambda rows: [{**rows[0], "photos": [" "]}, *rows[1:]], r"Catalogue: column 'photos' fails non_blank"),
])
def test_a_catalogue_that_is_not_one(copy: Path, change: Callable[[list], object], message: str | None) -> None:
    manifest = manifest_of(copy)
    ref = manifest["index"]["catalogue_chunks"][0]
    replace_file(copy, ref, json.dumps(change(json.loads((copy / ref["file"]).read_text()))).encode())
    write_manifest(copy, manifest)
    if message is None:
        index = load_bundle(copy).index
        assert index is not None and index.catalogue["price"][0] == 2.0
    else:
        load_error(copy, message)


def test_a_catalogue_price_that_is_not_a_number(copy: Path) -> None:
    manifest = manifest_of(copy)
    ref = manifest["index"]["catalogue_chunks"][0]
    rows = json.loads((copy / ref["file"]).read_text())
    replace_file(copy, ref, json.dumps([{**rows[0], "price": "cheap"}, *rows[1:]]).encode())
    write_manifest(copy, manifest)
    load_error(copy, r": bad index catalogue")


@pytest.mark.parametrize("report", [{}, {"weights": {"text": 1.0, "image": 1.0}}, {"weights": [1, 1, 1]}])
def test_an_index_without_its_weights(copy: Path, report: dict[str, Any]) -> None:
    manifest = manifest_of(copy)
    manifest["index"]["report"] = report
    write_manifest(copy, manifest)
    load_error(copy, r": the search index does not say how its vectors were built")


@pytest.mark.parametrize("value", ["heavy", None, [1.0], 10**400], ids=["text", "null", "list", "huge-int"])
def test_an_index_with_weights_that_are_not_numbers(copy: Path, value: object) -> None:
    manifest = manifest_of(copy)
    manifest["index"]["report"]["weights"]["text"] = value
    write_manifest(copy, manifest)
    load_error(copy, r"search index")


def hnsw_copy(copy: Path) -> Bundle:
    """The copy with its index searched by an HNSW graph, saved: what it loads as."""
    bundle = load_bundle(copy)
    assert bundle.index is not None and bundle.index.engine.method == "exact"
    save_bundle(attrs.evolve(bundle, index=bundle.index.with_method("hnsw")), copy)
    return bundle


def test_an_hnsw_index_round_trips_and_answers_as_saved(copy: Path) -> None:
    before = hnsw_copy(copy)
    entry = manifest_of(copy)["index"]
    assert entry["method"] == "hnsw" and entry["graph"]["file"].endswith(".faiss")
    assert entry["parameters"]["count"] == 5 and entry["parameters"]["method"] == "hnsw"
    index = load_bundle(copy).index
    assert index is not None and index.engine.method == "hnsw" and before.index is not None
    queries = before.index.vectors
    for exact, approximate in zip(before.index.search(queries, 3), index.search(queries, 3), strict=True):
        np.testing.assert_allclose(exact, approximate, rtol=1e-5)  # five rows: the graph finds every one
    assert [n.row for n in index.neighbours("p0-0", 4)] == [n.row for n in before.index.neighbours("p0-0", 4)]


def test_an_hnsw_graph_that_is_not_the_indexs(copy: Path) -> None:
    hnsw_copy(copy)
    manifest = manifest_of(copy)
    other = SearchIndex(unit_rows(np.ones((6, 28), np.float32)), pl.DataFrame(
        {"id": list("abcdef"), "product_name": list("abcdef"), "category": ["x"] * 6, "category_path": ["x"] * 6,
         "price": [1.0] * 6, "photos": [[]] * 6},
        schema=CATALOGUE_SCHEMA)).with_method("hnsw")
    assert isinstance(other.engine, HnswIndex)
    replace_file(copy, manifest["index"]["graph"], other.engine.graph_bytes())
    write_manifest(copy, manifest)
    load_error(copy, r"hnsw vector chunks hold 5 vectors, the graph has 6 nodes")
    replace_file(copy, manifest["index"]["graph"], other.engine.to_bytes())  # a graph holding its own vectors
    write_manifest(copy, manifest)
    load_error(copy, r"hnsw index bytes hold a graph and its vectors; the bundle's vector chunks hold them")


@pytest.mark.parametrize("change", [
    lambda entry: entry.pop("graph"),
    lambda entry: entry.update(method="exact"),
])
def test_an_index_whose_method_and_graph_disagree(copy: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    hnsw_copy(copy)
    manifest = manifest_of(copy)
    change(manifest["index"])
    write_manifest(copy, manifest)
    load_error(copy, r"an hnsw index names its graph file, and only an hnsw index does")


def test_an_index_needs_every_predictor(copy: Path) -> None:
    manifest = manifest_of(copy)
    del manifest["predictors"]["combined"]
    write_manifest(copy, manifest)
    load_error(copy, r": the bundle has no combined predictor \(it has: text, image\)")


# --- numbers and arrays that load but would poison serving ---------------------------------------------


@pytest.mark.parametrize("where", [("text", "vectors"), ("index", "vectors")])
@pytest.mark.parametrize("claimed", ["(10000000, 10000000)", "(5, 29)", "(4, 28)", "(0, 28)"])
def test_an_npy_whose_header_claims_another_size_than_it_holds(copy: Path, where: tuple, claimed: str) -> None:
    """A header claiming terabytes (np.load would allocate them and die of MemoryError), or a shape a few bytes
    off what follows it, is refused in one line before anything is allocated."""
    manifest = manifest_of(copy)
    ref = ref_at(manifest, where)
    original = np.load(copy / ref["file"], allow_pickle=False)
    content = npy_bytes(original)
    header = f"'shape': {tuple(original.shape)}".encode()
    forged = content.replace(header, f"'shape': {claimed}".encode().ljust(len(header)), 1)
    assert forged != content
    replace_file(copy, ref, forged)
    write_manifest(copy, manifest)
    load_error(copy, rf"bundle file {re.escape(ref['file'])}: its header claims .*, the file holds \d+ bytes of data")


@pytest.mark.parametrize("where", [("text", "vectors"), ("index", "vectors")])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_word_and_index_vectors_that_are_not_finite(copy: Path, where: tuple, bad: float) -> None:
    manifest = manifest_of(copy)
    ref = ref_at(manifest, where)
    array = np.load(copy / ref["file"], allow_pickle=False).copy()
    array[0, 0] = bad
    replace_file(copy, ref, npy_bytes(array))
    write_manifest(copy, manifest)
    load_error(copy, rf"bundle file {re.escape(ref['file'])}: .*1 value\(s\) that are not finite")


@pytest.mark.parametrize("kind", ["text-cnn", "image-cnn", "combined-nn"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf], ids=["nan", "-inf"])
def test_weights_that_are_not_finite(copy: Path, kind: str, bad: float) -> None:
    from safetensors.numpy import load, save

    manifest = manifest_of(copy)
    ref = manifest["models"][kind]["weights"]
    state = dict(load((copy / ref["file"]).read_bytes()))
    name = next(key for key, value in state.items() if value.dtype == np.float32 and value.size > 1 and "running" not in key)
    state[name] = np.full_like(state[name], bad)
    replace_file(copy, ref, save(state))
    write_manifest(copy, manifest)
    load_error(copy, rf"the {kind} weights {re.escape(name)} hold values that are not finite numbers")


def test_index_vectors_that_are_not_of_length_one(copy: Path) -> None:
    manifest = manifest_of(copy)
    ref = manifest["index"]["vectors"]
    replace_file(copy, ref, npy_bytes(np.load(copy / ref["file"], allow_pickle=False) * 3))
    write_manifest(copy, manifest)
    load_error(copy, r"of the index's vectors are not of length 1")


def test_batch_norm_variances_that_are_negative(copy: Path) -> None:
    from safetensors.numpy import load, save

    manifest = manifest_of(copy)
    ref = manifest["models"]["image-cnn"]["weights"]
    state = dict(load((copy / ref["file"]).read_bytes()))
    name = next(key for key in state if key.endswith("running_var"))
    state[name] = -np.abs(state[name]) - 1.0
    replace_file(copy, ref, save(state))
    write_manifest(copy, manifest)
    load_error(copy, rf"the image-cnn weights {re.escape(name)} hold negative variances")


def test_part_weights_that_are_all_zero(copy: Path) -> None:
    manifest = manifest_of(copy)
    manifest["index"]["report"]["weights"] = {"text": 0, "image": 0.0, "classes": 0}
    write_manifest(copy, manifest)
    load_error(copy, r"the search index's part weights are all 0")


@pytest.mark.parametrize(("key", "value"), [("ef_search", 2**40), ("ef_search", 0), ("m", 10**6), ("seed", -1),
                                            ("ef_construction", 2**31)])
def test_hnsw_settings_out_of_range(copy: Path, key: str, value: int) -> None:
    """An HNSW search parameter of 2**40 loaded, then made every search fail; now it does not load."""
    hnsw_copy(copy)
    manifest = manifest_of(copy)
    manifest["index"]["parameters"][key] = value
    write_manifest(copy, manifest)
    load_error(copy, rf"vector index parameter '{key}' must be an integer from \d+ to \d+, got {value}")


def test_a_bundle_that_poisons_serving_ends_fbml_serve_in_one_line(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fbml.cli import main

    manifest = manifest_of(copy)
    ref = manifest["index"]["vectors"]
    content = (copy / ref["file"]).read_bytes()
    shape = f"'shape': {tuple(np.load(copy / ref['file']).shape)}".encode()
    replace_file(copy, ref, content.replace(shape, b"'shape': (99999999, 99999)".ljust(len(shape)), 1))
    write_manifest(copy, manifest)
    capsys.readouterr()
    assert main(["serve", str(copy), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fbml: error: ") and len(err.strip().splitlines()) == 1 and "its header claims" in err


# --- 5. random damage to the manifest ----------------------------------------------------------------

# the values a mutation puts in place of another
ODD_VALUES = [None, True, False, 0, 1, -1, 2.5, "", "x", [], {}, [1, 2], {"a": 1}, "fbml.bundle/1", "text-cnn"]
HUGE_NUMBERS = [10**12, -(10**12), 2**63, -(2**63) - 1, 10**30, -1, -0.5, 1e300, -1e300, 1e-300]
def nodes(value: Any, where: tuple = ()) -> Iterator[tuple]:
    """The position of every value of a JSON document (the document itself included)."""
    yield where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield from nodes(item, (*where, key))


def at(document: Any, where: tuple) -> Any:
    for part in where:
        document = document[part]
    return document


@st.composite
def mutated(draw: st.DrawFn, document: dict[str, Any]) -> dict[str, Any]:
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        places = list(nodes(document))
        where = draw(st.sampled_from(places))
        kind = draw(st.sampled_from(["drop", "retype", "insert", "number", "text", "swap-file"]))
        parent = at(document, where[:-1]) if where else None
        value = at(document, where)
        if kind == "drop" and where:
            del parent[where[-1]]
        elif kind == "retype" and where:
            parent[where[-1]] = draw(st.sampled_from(ODD_VALUES))
        elif kind == "insert" and isinstance(value, dict):
            value[draw(st.text(max_size=12))] = draw(st.sampled_from(ODD_VALUES))
        elif kind == "insert" and isinstance(value, list):
            value.insert(draw(st.integers(0, len(value))), draw(st.sampled_from(ODD_VALUES)))
        elif kind == "number" and where and isinstance(value, (int, float)) and not isinstance(value, bool):
            parent[where[-1]] = draw(st.sampled_from(HUGE_NUMBERS))
        elif kind == "text" and where and isinstance(value, str):
            parent[where[-1]] = draw(st.one_of(st.text(max_size=30), st.sampled_from(
                ["../bundle.json", "/etc/passwd", "codec-0123456789abcdef.json", "resnet50", "image-cnn", "combined"])))
        elif kind == "swap-file":
            refs = [ref for _, ref in file_refs(document)]
            if len(refs) >= 2:
                first, second = draw(st.permutations(refs))[:2]
                first["file"], first["sha256"], second["file"], second["sha256"] = (
                    second["file"], second["sha256"], first["file"], first["sha256"])
    return document


@pytest.fixture(scope="module")
def grown_manifest(grown: Grown) -> dict[str, Any]:
    return manifest_of(grown.path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_random_damage_to_the_manifest_is_an_fbml_error_or_a_bundle(
    grown: Grown, grown_manifest: dict, data: st.DataObject
) -> None:
    document = data.draw(mutated(grown_manifest))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bundle"
        linked_copy(grown.path, path)
        write_manifest(path, document)
        try:
            bundle = load_bundle(path)
        except FbmlError as error:
            message = str(error)
            assert "\n" not in message
            assert str(path) in message
            event(re.sub(r"[0-9a-f]{16}|'[^']*'|`[^`]*`", "_", message.replace(str(path), ""))[:60])
        else:
            assert isinstance(bundle, Bundle) and bundle.codec == CODEC
            event("loaded")


# --- 6. nothing downloaded, nothing read outside the bundle ------------------------------------------


class Forbidden(Exception):
    """Loading reached for something outside the bundle."""


def forbid(what: str) -> Callable[..., Any]:
    def refuse(*_args: object, **_kwargs: object) -> Any:
        raise Forbidden(what)

    return refuse


def test_loading_downloads_nothing_and_reads_only_the_bundle(
    grown: Grown, parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", forbid("urlopen"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbid("load_state_dict_from_url"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", forbid("download_url_to_file"))
    monkeypatch.setattr(fbml.modeling.backbones, "local_state_dict", forbid("local_state_dict"))
    for name, spec in list(fbml.modeling.backbones.BACKBONES.items()):
        refusing = attrs.evolve(spec, imagenet_state=forbid(f"{name} weights"))
        monkeypatch.setitem(fbml.modeling.backbones.BACKBONES, name, refusing)  # type: ignore[arg-type]
    opened: list[Path] = []
    real_open = builtins.open

    def recording_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)):
            opened.append(Path(file).resolve())
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(io, "open", recording_open)
    reloaded = load_bundle(grown.path)
    monkeypatch.undo()
    for kind in TORCH_KINDS:
        assert_same_model(reloaded.model(kind), grown.expected.models[kind].module, kind, parts.text)
    root = grown.path.resolve()
    assert opened, "the recording saw no file opened: it did not record"
    assert [file for file in opened if file.parent != root] == []
    assert {file.name for file in opened} == {MANIFEST, *(ref["file"] for _, ref in file_refs(manifest_of(grown.path)))}


def test_a_pretrained_image_model_loads_without_its_starting_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: Parts
) -> None:
    torch.manual_seed(4)
    pretrained = image_from_options(IMAGE, len(CLASSES), weights="imagenet").eval()
    torch.manual_seed(4)
    random = image_from_options(IMAGE, len(CLASSES))
    stem = "frozen.0.weight"
    assert not torch.equal(pretrained.state_dict()[stem], random.state_dict()[stem])  # it did start from ImageNet
    bundle = Bundle(CODEC, image=IMAGE_SETTINGS).with_model(BundleModel("image-cnn", pretrained, IMAGE))
    save_bundle(bundle.with_predictor("image", Predictor(IMAGE_ENSEMBLE)), tmp_path)

    calls: list[str] = []
    lite = fbml.modeling.backbones.BACKBONES["efficientnet_lite0"]

    def counted() -> Any:
        calls.append("imagenet")
        raise Forbidden("the packaged ImageNet weights")

    counting = attrs.evolve(lite, imagenet_state=counted)
    monkeypatch.setitem(fbml.modeling.backbones.BACKBONES, "efficientnet_lite0", counting)  # type: ignore[arg-type]
    monkeypatch.setattr(fbml.modeling.backbones, "local_state_dict", forbid("local_state_dict"))
    reloaded = load_bundle(tmp_path)
    assert calls == []
    assert_same_model(reloaded.model("image-cnn"), pretrained, "image-cnn", parts.text)


# --- 7. atomic saves ---------------------------------------------------------------------------------


class Crash(Exception):
    """Stands for the process dying at that point."""


def snapshot(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in path.iterdir() if file.name not in LOCK_FILES}


def changed_bundle(loaded: Bundle, parts: Parts, codec: LabelCodec) -> tuple[Bundle, TextClassifier]:
    retrained = new_text_cnn(parts.text, seed=7)
    changed = attrs.evolve(loaded, codec=codec).with_model(BundleModel("text-cnn", retrained, TEXT_CNN, {"run": 3}))
    return attrs.evolve(changed, index=make_index(loaded, seed=3)), retrained


def assert_as_before(path: Path, before: dict[str, bytes], grown: Grown, parts: Parts) -> None:
    after = snapshot(path)
    assert {name: after[name] for name in before} == before  # every previous file, manifest included, as it was
    assert not [name for name in after if name.endswith(".tmp")]
    reloaded = load_bundle(path)
    assert reloaded.codec == CODEC
    assert reloaded.index == grown.expected.index
    for kind in TORCH_KINDS:
        assert_same_model(reloaded.model(kind), grown.expected.models[kind].module, kind, parts.text)


def test_a_crash_in_the_middle_of_a_save_leaves_the_previous_bundle(
    copy: Path, grown: Grown, loaded: Bundle, parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(copy)
    real_write = bundle_module.write_atomically
    written: list[str] = []

    def write_then_crash(target: Path, content: bytes) -> None:
        if written:
            raise Crash  # after the first new file (the codec), before the retrained weights
        written.append(target.name)
        real_write(target, content)

    monkeypatch.setattr(bundle_module, "write_atomically", write_then_crash)
    changed, retrained = changed_bundle(loaded, parts, LabelCodec((*CLASSES, "tables")))
    with pytest.raises(Crash):
        save_bundle(changed, copy)
    monkeypatch.undo()
    assert len(written) == 1 and written[0].startswith("codec-")
    leftovers = set(snapshot(copy)) - set(before)
    assert leftovers == set(written), "the crashed save wrote nothing: the test did not crash it in the middle"
    assert_as_before(copy, before, grown, parts)

    # the next successful save removes what the crashed one left and what the new manifest no longer needs
    (copy / "notes.txt").write_text("mine, not the bundle's")
    changed, retrained = changed_bundle(loaded, parts, CODEC)
    save_bundle(changed, copy)
    final = snapshot(copy)
    assert not leftovers & set(final)
    old = json.loads(before[MANIFEST])
    for gone in (old["models"]["text-cnn"]["weights"], old["index"]["vectors"], old["index"]["catalogue_chunks"][0]):
        assert gone["file"] not in final
    assert "notes.txt" in final
    reloaded = load_bundle(copy)
    assert_same_model(reloaded.model("text-cnn"), retrained, "text-cnn", parts.text)
    assert reloaded.index == changed.index


def test_a_crash_while_writing_the_manifest(
    copy: Path, grown: Grown, loaded: Bundle, parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(copy)
    real_write = bundle_module.write_atomically
    written: list[str] = []

    def crash_on_manifest(target: Path, content: bytes) -> None:
        if target.name == MANIFEST:
            raise Crash
        written.append(target.name)
        real_write(target, content)

    monkeypatch.setattr(bundle_module, "write_atomically", crash_on_manifest)
    with pytest.raises(Crash):
        save_bundle(changed_bundle(loaded, parts, LabelCodec((*CLASSES, "tables")))[0], copy)
    monkeypatch.undo()
    assert len(written) == 4  # codec, text-cnn weights, index vectors and catalogue: all before the manifest
    assert set(snapshot(copy)) - set(before) == set(written)
    assert_as_before(copy, before, grown, parts)


def test_a_crash_as_the_manifest_replaces_the_old_one(
    copy: Path, grown: Grown, loaded: Bundle, parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename itself fails (the disk, a kill): the temporary manifest goes, the old one stays."""
    before = snapshot(copy)
    real_replace = os.replace

    def crash_on_manifest(source: Any, target: Any) -> None:
        if Path(target).name == MANIFEST:
            assert Path(source).read_bytes().startswith(b"{")  # the new manifest was written in full beside it
            raise Crash
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(Crash):
        save_bundle(changed_bundle(loaded, parts, CODEC)[0], copy)
    monkeypatch.undo()
    assert_as_before(copy, before, grown, parts)


def test_a_write_killed_before_its_clean_up_leaves_a_temporary_the_next_save_removes(
    copy: Path, grown: Grown, loaded: Bundle, parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real atomic write, killed at its rename with its clean-up lost (as a SIGKILL loses it), leaves
    its temporary manifest; the next save removes it and keeps names the bundle did not make."""
    before = snapshot(copy)

    def killed(source: Any, target: Any) -> None:
        raise Crash

    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(Path, "unlink", lambda *_, **__: None)
    with pytest.raises(Crash):
        save_bundle(changed_bundle(loaded, parts, CODEC)[0], copy)
    monkeypatch.undo()
    temporaries = set(snapshot(copy)) - set(before)
    assert temporaries and all(re.fullmatch(r"\.[a-z-]+(-[0-9a-f]{16})?\.(json|npy|safetensors)\.[0-9a-f]{8}\.tmp", name)
                               for name in temporaries)
    after = snapshot(copy)
    assert {name: after[name] for name in before} == before
    foreign = [".notes.txt.0123abcd.tmp", ".bundle.json.tmp", ".codec-0123456789abcdef.json.mine.tmp"]
    for name in foreign:
        (copy / name).write_bytes(b"not the bundle's")
    save_bundle(loaded, copy)
    assert set(snapshot(copy)) == set(before) | set(foreign)
    assert load_bundle(copy).index == grown.expected.index


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_pauses_the_garbage_collector_and_leaves_it_as_it_was(grown: Grown, tmp_path: Path, enabled: bool) -> None:
    """Off while a bundle loads (its objects hold no cycles for a collection to find), then as it was before, also when
    the load fails."""
    seen: list[bool] = []
    real = bundle_module._load

    def watched(*arguments: Any) -> Bundle:
        seen.append(gc.isenabled())
        return real(*arguments)

    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bundle_module, "_load", watched)
            load_bundle(grown.path)
            assert gc.isenabled() is enabled
            (tmp_path / "broken").mkdir()
            (tmp_path / "broken" / MANIFEST).write_text("{")
            with pytest.raises(FbmlError):
                load_bundle(tmp_path / "broken")
            assert gc.isenabled() is enabled
        assert seen == [False, False]
    finally:
        (gc.enable if was else gc.disable)()


# --- the subcategory model ---------------------------------------------------------------------------------


def subcategory_model() -> SubcategoryModel:
    texts, labels = linear_texts()
    paths = pl.Series([f"{CLASSES[label]} / {'new' if row % 2 else 'used'} / x" for row, label in enumerate(labels)])
    model = fit_subcategory_model(texts, paths, CODEC, options=LINEAR, seed=0)
    assert model is not None and model.num_classes == 2 * len(CLASSES)
    return model


def test_the_subcategory_model_shares_the_text_linear_models_counters_on_load(tmp_path: Path) -> None:
    """Fitted over the text-linear model's vocabularies (as ``fbml train`` fits it), the subcategory model is loaded with
    the text-linear model's n-gram counters, built once, and predicts as before; fitted over its own vocabularies, it
    builds its own counters."""
    texts, labels = linear_texts()
    linear = fit_linear_text(texts, labels, len(CLASSES), options=LINEAR)
    paths = pl.Series([f"{CLASSES[label]} / {'new' if row % 2 else 'used'} / x" for row, label in enumerate(labels)])
    twin = fit_subcategory_model(texts, paths, CODEC, options=LINEAR, seed=0, like=linear)
    assert twin is not None and twin.model.counters is linear.counters
    bundle = Bundle(CODEC, subcategories=twin).with_model(BundleModel("text-linear", linear, None, {}))
    bundle = bundle.with_predictor("text", Predictor(Ensemble((("text-linear", 1.0),), (0.0,) * len(CLASSES))))
    save_bundle(bundle, tmp_path / "shared")
    loaded = load_bundle(tmp_path / "shared")
    assert loaded.subcategories is not None and loaded.subcategories.model.counters is loaded.model("text-linear").counters
    np.testing.assert_array_equal(loaded.subcategories.probabilities(QUERIES), twin.probabilities(QUERIES))
    partial = load_bundle(tmp_path / "shared", roles=["text"])
    assert partial.subcategories is not None and partial.subcategories.model.counters is partial.model("text-linear").counters

    paths = pl.Series([CLASSES[label] if CLASSES[label] == "phones" else path for path, label in zip(paths, labels, strict=True)])
    own = fit_subcategory_model(texts, paths, CODEC, options=LINEAR, seed=0)  # without the phones' texts: other vocabularies
    assert own is not None and own.model.word_vocabulary != linear.word_vocabulary
    save_bundle(attrs.evolve(bundle, subcategories=own), tmp_path / "own")
    loaded = load_bundle(tmp_path / "own")
    assert loaded.subcategories is not None and loaded.subcategories.model.counters is not loaded.model("text-linear").counters
    np.testing.assert_array_equal(loaded.subcategories.probabilities(QUERIES), own.probabilities(QUERIES))


def test_best_within_picks_each_rows_first_best_child_of_its_category_and_none_without_children() -> None:
    """The batch answer equals the row-by-row one: among the predicted category's subcategories (in codec order,
    so a tie goes to the first), the largest joint value; a category with no subcategory ("phones", whose paths
    have one level) gives None."""
    texts, labels = linear_texts()
    paths = pl.Series([CLASSES[label] if CLASSES[label] == "phones" else f"{CLASSES[label]} / {row % 2} / x"
                       for row, label in enumerate(labels)])  # fmt: skip
    model = fit_subcategory_model(texts, paths, CODEC, options=LINEAR, seed=0)
    assert model is not None
    generator = np.random.default_rng(0)
    joint = generator.integers(0, 3, (64, model.num_classes)).astype(np.float32)  # small integers: many ties
    predicted = generator.integers(0, len(CLASSES), 64)
    expected: list[tuple[str, float] | None] = []
    for row, category in zip(joint, predicted.tolist(), strict=True):
        children = [index for index, name in enumerate(model.codec.classes) if name.split(" / ")[0] == CLASSES[category]]
        best = max(children, key=lambda index: (row[index], -index)) if children else None
        expected.append(None if best is None else (model.codec.classes[best], float(row[best])))
    assert model.best_within(CODEC, predicted, joint) == expected
    assert any(answer is None for answer in expected) and any(answer is not None for answer in expected)


def test_the_subcategory_model_round_trips_and_is_checked_on_load(tmp_path: Path) -> None:
    """Saved with its codec and arrays, loaded to the same probabilities; a subcategory of a category the codec
    lacks, or a model of another width than its codec, is refused in one line."""
    path = tmp_path / "bundle"
    model = subcategory_model()
    save_bundle(Bundle(CODEC, subcategories=model), path)
    loaded = load_bundle(path).subcategories
    assert loaded is not None and loaded.codec == model.codec and loaded.report == model.report
    np.testing.assert_array_equal(loaded.probabilities(QUERIES), model.probabilities(QUERIES))

    manifest = manifest_of(path)
    replace_file(path, manifest["codec"], json.dumps(LabelCodec(CLASSES[:3]).to_json()).encode())
    write_manifest(path, manifest)
    load_error(path, r"subcategories of categories the codec lacks: \['phones'\]")

    save_bundle(Bundle(CODEC, subcategories=model), path)
    manifest = manifest_of(path)
    replace_file(path, manifest["subcategories"]["codec"], json.dumps(LabelCodec(model.codec.classes[:-1]).to_json()).encode())
    write_manifest(path, manifest)
    load_error(path, r"the subcategory model has 8 classes, its codec 7")


def test_a_subcategory_is_a_child_of_the_predicted_category_with_the_joint_probability() -> None:
    model = subcategory_model()
    category = np.zeros((1, len(CLASSES)), np.float32)
    category[0, CLASSES.index("books")] = 0.75
    category[0, CLASSES.index("bikes")] = 0.25
    probabilities = np.full((1, model.num_classes), 1 / model.num_classes, np.float32)
    joint = model.joint(CODEC, category, probabilities)
    assert joint.sum() == pytest.approx(1.0)
    [books] = model.best_within(CODEC, CODEC.encode(["books"]), joint)
    assert books is not None
    name, value = books
    assert name.startswith("books / ") and value == pytest.approx(0.75 / 2)
    assert model.best_within(CODEC, CODEC.encode(["chairs"]), np.zeros((1, model.num_classes)))[0] is not None
