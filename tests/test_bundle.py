"""Bundles: round trips for every model kind, adding models, JSON-only metadata, clear errors for a
damaged bundle, and atomic saves that leave the previous bundle whole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fbml.bundle as bundle_module
from fbml.bundle import (
    BUNDLE_FORMAT,
    MANIFEST,
    Bundle,
    BundleModel,
    ImageSettings,
    TextSettings,
    build_model,
    load_bundle,
    save_bundle,
)
from fbml.datasets import IMAGENET_MEAN, IMAGENET_STD
from fbml.encoding import LabelCodec
from fbml.errors import FbmlError
from fbml.models import combined_model, image_model, text_model
from fbml.text import RESERVED, Vocabulary
from fbml.word2vec import WordVectors, embedding_matrix

CLASSES = ("bikes", "books", "chairs", "phones")
IMAGE_OPTIONS = {"trainable_stages": 1, "embedding_dim": 8}
TEXT_OPTIONS = {"embedding_dim": 16, "channels": 8, "kernel_sizes": [2, 3]}


# --- building blocks ---------------------------------------------------------------------------------


def text_settings() -> TextSettings:
    words = tuple(f"word{index}" for index in range(30))
    vectors = np.random.default_rng(0).normal(size=(len(words) - 4, 8)).astype(np.float32)
    vocabulary = Vocabulary((*RESERVED, *words))
    return TextSettings(vocabulary, WordVectors(words[:-4], vectors), length=12)


def new_text_model(text: TextSettings, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    matrix = embedding_matrix(text.word_vectors, text.vocabulary, seed=seed)
    return text_model(matrix, len(CLASSES), **{**TEXT_OPTIONS, "kernel_sizes": tuple(TEXT_OPTIONS["kernel_sizes"])})


def with_moved_statistics(model: nn.Module, seed: int) -> nn.Module:
    """Batch-norm statistics away from their initial values, so that buffers must be saved too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) - 0.5)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    return model.eval()


def new_image_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return with_moved_statistics(image_model(len(CLASSES), **IMAGE_OPTIONS), seed)


def new_combined_model(text: TextSettings, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    image = image_model(len(CLASSES), **IMAGE_OPTIONS)
    model = combined_model(image, new_text_model(text, seed + 1), len(CLASSES))
    return with_moved_statistics(model, seed)


def inputs(kind: str, text: TextSettings) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    tokens = torch.randint(0, len(text.vocabulary), (3, text.length), generator=generator)
    tokens[:, -3:] = 0
    return {"image": (images,), "text": (tokens,), "combined": (images, tokens)}[kind]


def outputs(model: nn.Module, kind: str, text: TextSettings) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.inference_mode():
        output = model(*inputs(kind, text))
    return output.logits.clone(), output.embedding.clone()


def assert_same_outputs(left: nn.Module, right: nn.Module, kind: str, text: TextSettings) -> None:
    for mine, theirs in zip(outputs(left, kind, text), outputs(right, kind, text), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def text_bundle(text: TextSettings, seed: int = 0) -> Bundle:
    model = BundleModel("text", new_text_model(text, seed), TEXT_OPTIONS, {"history": {"best_epoch": 2}, "note": "é"})
    return Bundle(LabelCodec(CLASSES), text=text).with_model(model)


def manifest_of(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def replace_file(path: Path, entry: dict, content: bytes) -> None:
    """Put ``content`` in place of a manifest entry's file, with a matching name and checksum."""
    digest = hashlib.sha256(content).hexdigest()
    old = entry["file"]
    name = f"{old.split('-')[0]}-{digest[:16]}.{old.rsplit('.', 1)[1]}"
    (path / name).write_bytes(content)
    (path / old).unlink()
    entry.update(file=name, sha256=digest)


def write_manifest(path: Path, manifest: dict) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest))


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text() -> TextSettings:
    return text_settings()


@pytest.fixture(scope="module")
def originals(text: TextSettings) -> dict[str, nn.Module]:
    return {"text": new_text_model(text), "image": new_image_model(1), "combined": new_combined_model(text, 2)}


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory: pytest.TempPathFactory, text: TextSettings, originals) -> dict:
    """A bundle grown as ``fbml train`` grows one: text, then image added, then combined added,
    each time loading what is there. Returns the directory and each stage's manifest."""
    path = tmp_path_factory.mktemp("bundle") / "bundle"
    stages = {}
    bundle = Bundle(LabelCodec(CLASSES), text=text)
    for kind, options in (("text", TEXT_OPTIONS), ("image", IMAGE_OPTIONS),
                          ("combined", {"image": IMAGE_OPTIONS, "text": TEXT_OPTIONS})):
        if kind != "text":
            bundle = load_bundle(path)
        if kind in ("image", "combined") and bundle.image is None:
            bundle = Bundle(bundle.codec, ImageSettings(32, IMAGENET_MEAN, IMAGENET_STD), bundle.text, bundle.models)
        report = {"kind": kind, "history": {"epochs": [{"epoch": 1, "validation_accuracy": 0.5}]}}
        save_bundle(bundle.with_model(BundleModel(kind, originals[kind], options, report)), path)
        stages[kind] = manifest_of(path)
    return {"path": path, "stages": stages}


@pytest.fixture(scope="module")
def loaded(full_bundle) -> Bundle:
    return load_bundle(full_bundle["path"])


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "image", "combined"])
def test_round_trip_gives_the_same_predictions(loaded: Bundle, originals, text: TextSettings, kind: str) -> None:
    model = loaded.model(kind)
    assert not model.training
    assert type(model) is type(originals[kind])
    assert_same_outputs(model, originals[kind], kind, text)
    saved = {name: value for name, value in originals[kind].state_dict().items()}
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert loaded.models[kind].report["kind"] == kind


def test_round_trip_keeps_codec_settings_and_options(loaded: Bundle, text: TextSettings) -> None:
    assert loaded.codec == LabelCodec(CLASSES)
    assert loaded.image == ImageSettings(32, IMAGENET_MEAN, IMAGENET_STD)
    assert loaded.text == text
    assert loaded.text.word_vectors.vectors.dtype == np.float32
    assert dict(loaded.models["text"].options) == TEXT_OPTIONS
    assert dict(loaded.models["image"].options) == IMAGE_OPTIONS
    assert dict(loaded.models["combined"].options) == {"image": IMAGE_OPTIONS, "text": TEXT_OPTIONS}
    assert set(loaded.models) == {"text", "image", "combined"}


def test_adding_a_model_keeps_the_others(full_bundle) -> None:
    stages = full_bundle["stages"]
    assert list(stages["text"]["models"]) == ["text"]
    assert list(stages["image"]["models"]) == ["text", "image"]
    assert list(stages["combined"]["models"]) == ["text", "image", "combined"]
    # the models already there are not rewritten: same content, same file
    assert stages["combined"]["models"]["text"] == stages["text"]["models"]["text"]
    assert stages["combined"]["models"]["image"] == stages["image"]["models"]["image"]
    for key in ("codec", "text"):
        assert stages["combined"][key] == stages["text"][key]


def test_replacing_a_model_of_the_same_kind(tmp_path: Path, text: TextSettings) -> None:
    save_bundle(text_bundle(text, seed=0), tmp_path)
    first = manifest_of(tmp_path)["models"]["text"]["weights"]["file"]
    replacement = new_text_model(text, seed=1)
    save_bundle(load_bundle(tmp_path).with_model(BundleModel("text", replacement, TEXT_OPTIONS)), tmp_path)
    reloaded = load_bundle(tmp_path)
    assert set(reloaded.models) == {"text"}
    assert_same_outputs(reloaded.model("text"), replacement, "text", text)
    assert not (tmp_path / first).exists()


def test_json_everywhere_but_the_weights(full_bundle) -> None:
    from safetensors import safe_open

    path = full_bundle["path"]
    files = sorted(file for file in path.iterdir())
    assert all(file.is_file() for file in files)
    assert not [file.name for file in files if file.name.endswith(".tmp")]
    weights = [file for file in files if file.suffix == ".safetensors"]
    assert len(weights) == 3
    for file in files:
        head = file.read_bytes()[:2]
        assert head not in (b"\x80\x02", b"\x80\x04", b"PK"), f"{file.name} looks like a pickle or a torch zip"
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as tensors:
                assert tensors.keys()
        elif file.suffix == ".npy":
            array = np.load(file, allow_pickle=False)
            assert array.dtype == np.float32
        else:
            json.loads(file.read_text(encoding="utf-8"))
    referenced = {MANIFEST}
    manifest = manifest_of(path)
    assert manifest["format"] == BUNDLE_FORMAT

    def collect(value):
        if isinstance(value, dict):
            if "file" in value and "sha256" in value:
                referenced.add(value["file"])
                assert hashlib.sha256((path / value["file"]).read_bytes()).hexdigest() == value["sha256"]
            for item in value.values():
                collect(item)

    collect(manifest)
    assert referenced == {file.name for file in files}  # nothing stray, nothing missing


def test_missing_model_kind_is_a_clear_error(tmp_path: Path, text: TextSettings) -> None:
    save_bundle(text_bundle(text), tmp_path)
    with pytest.raises(FbmlError, match=r"the bundle has no image model \(it has: text\)"):
        load_bundle(tmp_path).model("image")


def test_build_model_needs_text_settings() -> None:
    with pytest.raises(FbmlError, match="needs text settings"):
        build_model("text", TEXT_OPTIONS, len(CLASSES), None)


# --- damaged bundles ---------------------------------------------------------------------------------


@pytest.fixture
def saved_text_bundle(tmp_path: Path, text: TextSettings) -> Path:
    path = tmp_path / "bundle"
    save_bundle(text_bundle(text), path)
    return path


@pytest.mark.parametrize("which", ["codec", "vocabulary", "vectors", "weights"])
def test_missing_file(saved_text_bundle: Path, which: str) -> None:
    manifest = manifest_of(saved_text_bundle)
    entry = {"codec": manifest["codec"], "vocabulary": manifest["text"]["vocabulary"],
             "vectors": manifest["text"]["vectors"], "weights": manifest["models"]["text"]["weights"]}[which]
    (saved_text_bundle / entry["file"]).unlink()
    with pytest.raises(FbmlError, match=rf"bundle file {entry['file']} is missing"):
        load_bundle(saved_text_bundle)


@pytest.mark.parametrize("which", ["codec", "words", "weights"])
def test_checksum_mismatch(saved_text_bundle: Path, which: str) -> None:
    manifest = manifest_of(saved_text_bundle)
    entry = {"codec": manifest["codec"], "words": manifest["text"]["words"],
             "weights": manifest["models"]["text"]["weights"]}[which]
    file = saved_text_bundle / entry["file"]
    content = bytearray(file.read_bytes())
    content[-2] ^= 0x01  # still parses for JSON (a changed character), a changed float for weights
    file.write_bytes(bytes(content))
    with pytest.raises(FbmlError, match=rf"bundle file {entry['file']} does not match its checksum"):
        load_bundle(saved_text_bundle)


def test_codec_with_another_number_of_classes(saved_text_bundle: Path) -> None:
    manifest = manifest_of(saved_text_bundle)
    codec = LabelCodec((*CLASSES, "tables"))
    replace_file(saved_text_bundle, manifest["codec"], json.dumps(codec.to_json()).encode())
    write_manifest(saved_text_bundle, manifest)
    with pytest.raises(FbmlError, match=r"the text weights do not fit .*size mismatch for head\.classify"):
        load_bundle(saved_text_bundle)


def test_vocabulary_of_another_size(saved_text_bundle: Path, text: TextSettings) -> None:
    manifest = manifest_of(saved_text_bundle)
    vocabulary = Vocabulary((*text.vocabulary.tokens, "extra"))
    replace_file(saved_text_bundle, manifest["text"]["vocabulary"], json.dumps(vocabulary.to_json()).encode())
    write_manifest(saved_text_bundle, manifest)
    with pytest.raises(FbmlError, match=r"the text weights do not fit .*size mismatch for embedding\.weight"):
        load_bundle(saved_text_bundle)


def test_options_that_do_not_match_the_weights(saved_text_bundle: Path) -> None:
    manifest = manifest_of(saved_text_bundle)
    manifest["models"]["text"]["options"]["channels"] = 9
    write_manifest(saved_text_bundle, manifest)
    with pytest.raises(FbmlError, match="the text weights do not fit its options"):
        load_bundle(saved_text_bundle)


@pytest.mark.parametrize("format_", ["fbml.bundle/2", "fbml.bundle/0", None])
def test_unknown_format_version(saved_text_bundle: Path, format_: str | None) -> None:
    manifest = manifest_of(saved_text_bundle)
    manifest["format"] = format_
    write_manifest(saved_text_bundle, manifest)
    with pytest.raises(FbmlError, match=r"unsupported bundle format \(expected 'fbml\.bundle/1'\)"):
        load_bundle(saved_text_bundle)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(FbmlError, match=r"not a bundle \(no bundle\.json\)"):
        load_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(FbmlError, match="bundle.json: not valid JSON"):
        load_bundle(tmp_path)


def test_unknown_model_kind(saved_text_bundle: Path) -> None:
    manifest = manifest_of(saved_text_bundle)
    manifest["models"]["audio"] = manifest["models"]["text"]
    write_manifest(saved_text_bundle, manifest)
    with pytest.raises(FbmlError, match="unknown model kind 'audio'"):
        load_bundle(saved_text_bundle)


# --- atomic saves ------------------------------------------------------------------------------------


class Crash(Exception):
    """Stands for the process dying at that point."""


def snapshot(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in path.iterdir()}


def test_crash_in_the_middle_of_a_save_leaves_the_previous_bundle(
    saved_text_bundle: Path, text: TextSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(saved_text_bundle)
    previous = load_bundle(saved_text_bundle).model("text")
    real_write_model = bundle_module._write_model
    written: list[str] = []

    def write_then_crash(path: Path, model: BundleModel) -> dict:
        if written:
            raise Crash  # after the first model's weights file
        written.append(model.kind)
        return real_write_model(path, model)

    monkeypatch.setattr(bundle_module, "_write_model", write_then_crash)
    retrained = new_text_model(text, seed=7)
    changed = Bundle(LabelCodec((*CLASSES, "tables")), ImageSettings(32, IMAGENET_MEAN, IMAGENET_STD), text)
    changed = changed.with_model(BundleModel("text", retrained, TEXT_OPTIONS))
    changed = changed.with_model(BundleModel("image", nn.Identity(), IMAGE_OPTIONS))  # never written
    with pytest.raises(Crash):
        save_bundle(changed, saved_text_bundle)
    assert written == ["text"]
    monkeypatch.undo()

    after = snapshot(saved_text_bundle)
    new_files = set(after) - set(before)
    assert new_files, "the crashed save wrote nothing: the test did not crash it in the middle"
    assert {name: after[name] for name in before} == before  # every previous file, manifest included, as it was
    reloaded = load_bundle(saved_text_bundle)
    assert reloaded.codec == LabelCodec(CLASSES) and reloaded.image is None and set(reloaded.models) == {"text"}
    assert_same_outputs(reloaded.model("text"), previous, "text", text)

    # the next successful save removes what the crashed one left and what the new manifest no longer needs
    (saved_text_bundle / "notes.txt").write_text("mine, not the bundle's")
    save_bundle(Bundle(LabelCodec(CLASSES), text=text).with_model(BundleModel("text", retrained, TEXT_OPTIONS)),
                saved_text_bundle)
    final = snapshot(saved_text_bundle)
    old_weights = manifest_of_bytes(before)["models"]["text"]["weights"]["file"]
    assert old_weights not in final
    assert not {name for name in new_files if name.startswith("codec-")} & set(final)
    assert "notes.txt" in final  # not a bundle file: left alone
    assert_same_outputs(load_bundle(saved_text_bundle).model("text"), retrained, "text", text)


def manifest_of_bytes(files: dict[str, bytes]) -> dict:
    return json.loads(files[MANIFEST])


def test_crash_while_writing_the_manifest(saved_text_bundle: Path, text: TextSettings, monkeypatch) -> None:
    before = snapshot(saved_text_bundle)
    real_write = bundle_module._write_atomically

    def crash_on_manifest(target: Path, content: bytes) -> None:
        if target.name == MANIFEST:
            raise Crash
        real_write(target, content)

    monkeypatch.setattr(bundle_module, "_write_atomically", crash_on_manifest)
    with pytest.raises(Crash):
        save_bundle(text_bundle(text, seed=3), saved_text_bundle)
    monkeypatch.undo()
    after = snapshot(saved_text_bundle)
    assert {name: after[name] for name in before} == before
    load_bundle(saved_text_bundle)


def test_unreferenced_old_files_are_removed(saved_text_bundle: Path, text: TextSettings) -> None:
    first = manifest_of(saved_text_bundle)
    smaller = TextSettings(text.vocabulary, text.word_vectors, length=20)  # same files, other length
    save_bundle(Bundle(LabelCodec(CLASSES[:3]), text=smaller).with_model(
        BundleModel("text", text_model(np.zeros((len(text.vocabulary), 8), np.float32), 3, **{
            **TEXT_OPTIONS, "kernel_sizes": (2, 3)}), TEXT_OPTIONS)), saved_text_bundle)
    second = manifest_of(saved_text_bundle)
    names = {file.name for file in saved_text_bundle.iterdir()}
    assert first["codec"]["file"] not in names and second["codec"]["file"] in names
    assert first["models"]["text"]["weights"]["file"] not in names
    assert first["text"]["vocabulary"] == second["text"]["vocabulary"]  # unchanged content keeps its file
    assert second["text"]["vocabulary"]["file"] in names
    assert len(names) == 6  # manifest, codec, vocabulary, words, vectors, weights
    assert load_bundle(saved_text_bundle).codec.num_classes == 3
