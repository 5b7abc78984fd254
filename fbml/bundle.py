"""Bundles: one directory with the models, their shared codec, vocabulary and word vectors.

Weights are safetensors, everything else JSON (or ``.npy`` loaded without pickle). Every file but
the manifest ``bundle.json`` is named after its content's hash and written before the manifest,
which is replaced atomically last: a crash leaves the previous bundle whole, never half a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from fbml.encoding import LabelCodec
from fbml.errors import FbmlError
from fbml.models import combined_model, image_model, text_model
from fbml.search import SearchIndex
from fbml.text import Vocabulary
from fbml.word2vec import WordVectors

BUNDLE_FORMAT = "fbml.bundle/1"
MANIFEST = "bundle.json"
MODEL_KINDS = ("image", "text", "combined")
CONTENT_NAME = re.compile(r"[a-z]+-[0-9a-f]{16}\.(json|npy|safetensors)")


@attrs.frozen
class ImageSettings:
    """How photos are prepared for the image branches."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@attrs.frozen
class TextSettings:
    """How text is prepared for the text branches: the vocabulary, its word vectors, the length."""

    vocabulary: Vocabulary
    word_vectors: WordVectors
    length: int


@attrs.frozen
class BundleModel:
    """A trained model with the factory options that rebuild it and what its training reported."""

    kind: str = attrs.field(validator=attrs.validators.in_(MODEL_KINDS))
    module: nn.Module = attrs.field(eq=False)
    options: Mapping[str, Any]
    report: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Bundle:
    """Models over one codec; ``image``/``text`` settings present when a model needs them, and the
    search index over the combined model's embeddings when one was built."""

    codec: LabelCodec
    image: ImageSettings | None = None
    text: TextSettings | None = None
    models: Mapping[str, BundleModel] = attrs.field(factory=dict)
    index: SearchIndex | None = None

    def with_model(self, model: BundleModel) -> Bundle:
        """This bundle with ``model`` added (or replacing the model of its kind)."""
        return attrs.evolve(self, models={**self.models, model.kind: model})

    def model(self, kind: str) -> nn.Module:
        """The model of ``kind`` in eval mode; a clear error when the bundle lacks it."""
        if kind not in self.models:
            raise FbmlError(f"the bundle has no {kind} model (it has: {', '.join(self.models) or 'none'})")
        return self.models[kind].module.eval()


def build_model(kind: str, options: Mapping[str, Any], num_classes: int, text: TextSettings | None) -> nn.Module:
    """A freshly initialised model of ``kind`` from its factory options (as saved in a bundle)."""
    if kind == "image":
        return image_model(num_classes, **options)
    if text is None:
        raise FbmlError(f"a {kind} model needs text settings (vocabulary and word vectors)")
    if kind == "text":
        return text_model(_zero_embeddings(text), num_classes, **options)
    image = image_model(num_classes, **options["image"])
    return combined_model(image, text_model(_zero_embeddings(text), num_classes, **options["text"]), num_classes)


def save_bundle(bundle: Bundle, path: Path) -> None:
    """Write ``bundle`` to the directory ``path`` (created, or updated in place atomically)."""
    path.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": BUNDLE_FORMAT, "codec": _write_json(path, "codec", bundle.codec.to_json())}
    if bundle.image is not None:
        manifest["image"] = attrs.asdict(bundle.image)
    if bundle.text is not None:
        manifest["text"] = _write_text(path, bundle.text)
    manifest["models"] = {kind: _write_model(path, model) for kind, model in bundle.models.items()}
    if bundle.index is not None:
        manifest["index"] = _write_index(path, bundle.index)
    _write_atomically(path / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    _remove_unreferenced(path, manifest)


def load_bundle(path: Path) -> Bundle:
    """Read and check a bundle: every file present and unchanged, every model fitting the codec."""
    manifest = _read_manifest(path)
    codec = LabelCodec.from_json(_read_json(path, manifest["codec"]))
    image = _read_image(manifest["image"]) if "image" in manifest else None
    text = _read_text(path, manifest["text"]) if "text" in manifest else None
    models = {
        kind: _read_model(path, kind, entry, codec, text) for kind, entry in manifest.get("models", {}).items()
    }
    index = _read_index(path, manifest["index"], models) if "index" in manifest else None
    return Bundle(codec, image, text, models, index)


def _read_image(entry: Mapping[str, Any]) -> ImageSettings:
    return ImageSettings(int(entry["size"]), tuple(entry["mean"]), tuple(entry["std"]))


def _write_text(path: Path, text: TextSettings) -> dict[str, Any]:
    vectors = _write_file(path, "vectors", ".npy", _npy_bytes(text.word_vectors.vectors))
    return {
        "length": text.length,
        "vocabulary": _write_json(path, "vocabulary", text.vocabulary.to_json()),
        "words": _write_json(path, "words", list(text.word_vectors.words)),
        "vectors": vectors,
    }


def _read_text(path: Path, entry: Mapping[str, Any]) -> TextSettings:
    vocabulary = Vocabulary.from_json(_read_json(path, entry["vocabulary"]))
    words = _read_json(path, entry["words"])
    vectors = np.load(_checked(path, entry["vectors"]), allow_pickle=False)
    return TextSettings(vocabulary, WordVectors(tuple(words), vectors), int(entry["length"]))


def _write_model(path: Path, model: BundleModel) -> dict[str, Any]:
    from safetensors.torch import save

    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.module.state_dict().items()}
    return {
        "weights": _write_file(path, model.kind, ".safetensors", save(state)),
        "options": dict(model.options),
        "report": dict(model.report),
    }


def _read_model(
    path: Path, kind: str, entry: Mapping[str, Any], codec: LabelCodec, text: TextSettings | None
) -> BundleModel:
    from safetensors.torch import load

    if kind not in MODEL_KINDS:
        raise FbmlError(f"{path / MANIFEST}: unknown model kind {kind!r}")
    module = build_model(kind, entry["options"], codec.num_classes, text)
    state = load(_checked(path, entry["weights"]).read_bytes())
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise FbmlError(f"{path}: the {kind} weights do not fit its options, codec or vocabulary: {detail}") from None
    return BundleModel(kind, module.eval(), entry["options"], entry.get("report", {}))


def _write_index(path: Path, index: SearchIndex) -> dict[str, Any]:
    return {
        "vectors": _write_file(path, "index", ".npy", _npy_bytes(index.vectors)),
        "catalogue": _write_json(path, "catalogue", index.catalogue_json()),
        "report": dict(index.report),
    }


def _read_index(path: Path, entry: Mapping[str, Any], models: Mapping[str, BundleModel]) -> SearchIndex:
    """The search index, checked: one vector per catalogue row, as wide as the combined model's embedding."""
    if "combined" not in models:
        raise FbmlError(f"{path}: the bundle has a search index but no combined model")
    vectors = np.load(_checked(path, entry["vectors"]), allow_pickle=False)
    try:
        index = SearchIndex.from_json(vectors, _read_json(path, entry["catalogue"]), entry.get("report", {}))
    except FbmlError as error:
        raise FbmlError(f"{path}: {error}") from None
    width = models["combined"].module.embedding_dim
    if index.dim != width:
        raise FbmlError(f"{path}: the search index has {index.dim}-dim vectors, the combined model embeds in {width}")
    return index


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FbmlError(f"{path}: not a bundle (no {MANIFEST})") from None
    except ValueError as error:
        raise FbmlError(f"{path / MANIFEST}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise FbmlError(f"{path / MANIFEST}: unsupported bundle format (expected {BUNDLE_FORMAT!r})")
    return manifest


def _write_json(path: Path, stem: str, value: Any) -> dict[str, str]:
    return _write_file(path, stem, ".json", (json.dumps(value, indent=1) + "\n").encode())


def _read_json(path: Path, entry: Mapping[str, str]) -> Any:
    return json.loads(_checked(path, entry).read_text(encoding="utf-8"))


def _write_file(path: Path, stem: str, suffix: str, content: bytes) -> dict[str, str]:
    digest = hashlib.sha256(content).hexdigest()
    name = f"{stem}-{digest[:16]}{suffix}"
    if not (path / name).is_file():
        _write_atomically(path / name, content)
    return {"file": name, "sha256": digest}


def _checked(path: Path, entry: Mapping[str, str]) -> Path:
    file = path / entry["file"]
    if not file.is_file():
        raise FbmlError(f"{path}: bundle file {entry['file']} is missing")
    if hashlib.sha256(file.read_bytes()).hexdigest() != entry["sha256"]:
        raise FbmlError(f"{path}: bundle file {entry['file']} does not match its checksum")
    return file


def _write_atomically(target: Path, content: bytes) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def _remove_unreferenced(path: Path, manifest: Mapping[str, Any]) -> None:
    referenced = {MANIFEST, *_file_names(manifest)}
    for file in path.iterdir():
        if file.is_file() and file.name not in referenced and CONTENT_NAME.fullmatch(file.name):
            file.unlink()


def _file_names(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        own = [value["file"]] if isinstance(value.get("file"), str) and "sha256" in value else []
        return own + [name for item in value.values() for name in _file_names(item)]
    return []


def _npy_bytes(array: np.ndarray) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _zero_embeddings(text: TextSettings) -> torch.Tensor:
    return torch.zeros(len(text.vocabulary), text.word_vectors.dim)
