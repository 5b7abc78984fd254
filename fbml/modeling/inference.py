"""Models as the prediction path runs them: each reads a batch of ``Listings`` (raw texts and/or prepared
photos) and prepares it itself, whatever runs the network.

* ``LinearTextModel`` reads raw texts (it normalises them itself);
* ``NetworkModel`` is a network (a torch module, or an ONNX Runtime session) with the preparation its
  inputs need: the text CNN normalises and tokenises texts with its vocabulary, the image branches read
  photos letterboxed and normalised with their backbone's statistics (``fbml.vision.photos``).

Inputs and outputs are numpy, the same for both runtimes. ``Listings`` keeps what its models share
for one batch (normalised texts, token ids, the stacked photos, and on torch the frozen backbone's
output of each backbone), so each is computed once however many models read it. A batch may also carry
its photos' frozen-stage output as training cached it (``FrozenFeatures``): a torch network whose frozen
backbone computed them starts from them instead of the pixels. torch is imported only where a torch network
runs (``fbml.modeling.torch_runtime``), so ONNX Runtime never imports it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import numpy as np
from contracts.bundle import ModelKind

from fbml.errors import FbmlError
from fbml.modeling.linear_text import LinearTextModel
from fbml.modeling.onnx_runtime import OnnxModel
from fbml.modeling.settings import ImageSettings, TextSettings
from fbml.text.listings import normalised_texts
from fbml.vision.photos import Preparation, PreparedPhoto

if TYPE_CHECKING:
    from torch import nn

T = TypeVar("T")


@attrs.frozen(eq=False)
class FrozenFeatures:
    """Photos' frozen-stage output as training caches it (``fbml.modeling.features``; row ``i``: photo ``i``), from
    the frozen stages whose weights digest to ``backbone`` (``weights_digest``) on photos prepared by ``preparation``.

    Which frozen modules computed them is remembered per module (``computed_by``), by these features and every
    batch taken from them (``rows``): frozen stages never change, so their digest is computed once, not per batch."""

    backbone: str
    preparation: Preparation
    values: np.ndarray
    _digests: weakref.WeakKeyDictionary[Any, str] = attrs.field(factory=weakref.WeakKeyDictionary, repr=False)

    def rows(self, rows: Sequence[int]) -> FrozenFeatures:
        """These features of the photos ``rows`` only (a copy), remembering what these do."""
        return FrozenFeatures(self.backbone, self.preparation, np.asarray(self.values[list(rows)]), self._digests)

    def computed_by(self, frozen: Any, digest: Callable[[Any], str]) -> bool:
        """Whether the frozen stages ``frozen`` (a module; ``digest`` gives its weights' digest) computed these."""
        if frozen not in self._digests:
            self._digests[frozen] = digest(frozen)
        return self._digests[frozen] == self.backbone


@attrs.frozen(eq=False)
class CachedPhoto:
    """A decoded photo (uint8 H x W x 3) and its ``row`` of ``features`` (those of every photo of training's cache):
    what training holds of each photo. Networks with another backbone, and ONNX Runtime, read the pixels."""

    pixels: np.ndarray
    features: FrozenFeatures
    row: int


def frozen_features_of(photos: Sequence[object]) -> FrozenFeatures | None:
    """The ``FrozenFeatures`` of a batch whose photos are all ``CachedPhoto`` of the same features, else None."""
    cached = [photo for photo in photos if isinstance(photo, CachedPhoto)]
    if not cached or len(cached) < len(photos) or any(photo.features is not cached[0].features for photo in cached):
        return None
    return cached[0].features.rows([photo.row for photo in cached])


@attrs.frozen(eq=False)
class Listings:
    """A batch of listings as models read them: raw texts and/or photos prepared for the image
    branches (``Preparation.prepared``), of the same listings when both are given.

    What the batch's models share is computed once and kept for the batch (``shared``)."""

    texts: tuple[str, ...] | None = None
    photos: tuple[PreparedPhoto, ...] | None = None
    frozen: FrozenFeatures | None = None
    _shared: dict[Hashable, Any] = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.texts is None and self.photos is None:
            raise FbmlError("a batch of listings needs texts, photos or both")
        if self.texts is not None and self.photos is not None and len(self.texts) != len(self.photos):
            raise FbmlError(f"{len(self.texts)} texts for {len(self.photos)} photos: give one of each per listing")
        if self.frozen is not None and len(self.frozen.values) != len(self.photos or ()):
            raise FbmlError(f"frozen features of {len(self.frozen.values)} photos for {len(self.photos or ())} photos")

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.photos or ())

    def shared(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, once per batch for each ``key``."""
        if key not in self._shared:
            self._shared[key] = compute()
        value: T = self._shared[key]
        return value

    def normalised_texts(self, kind: str) -> list[str]:
        """The texts as training text was cleaned; ``FbmlError`` when the batch has none (``kind`` needs them)."""
        texts = self.texts
        if texts is None:
            raise FbmlError(f"the {kind} model reads text: the listings have none")
        return self.shared("normalised texts", lambda: normalised_texts(texts))

    def photo_array(self, kind: str) -> np.ndarray:
        """The prepared photos as one float32 (n, 3, S, S) array; ``FbmlError`` when the batch has none."""
        photos = self.photos
        if photos is None:
            raise FbmlError(f"the {kind} model reads photos: the listings have none")
        return self.shared("photos", lambda: np.stack([photo.pixels for photo in photos]))


@attrs.frozen(eq=False)
class Outputs:
    """A model's class probabilities (float32 (n, classes)) and its embeddings of the batch (None for a linear model)."""

    probabilities: np.ndarray
    embeddings: np.ndarray | None


class ListingModel(Protocol):
    """A model the prediction path runs: it reads listings and prepares them itself."""

    @property
    def kind(self) -> ModelKind: ...

    def outputs(self, listings: Listings) -> Outputs: ...


@attrs.frozen(eq=False)
class LinearTextReader:
    """The linear text model as the prediction path runs it (it normalises raw text itself)."""

    model: LinearTextModel
    kind: ModelKind = ModelKind.TEXT_LINEAR

    def outputs(self, listings: Listings) -> Outputs:
        """Its probabilities of the listings' texts."""
        return Outputs(self.model.normalised_probabilities(listings.normalised_texts(self.kind)), None)


@attrs.frozen(eq=False)
class NetworkModel:
    """A network of ``kind`` (a torch module or an ONNX Runtime session) with what prepares its inputs."""

    kind: ModelKind
    network: nn.Module | OnnxModel
    text: TextSettings | None = None
    image: ImageSettings | None = None

    def outputs(self, listings: Listings) -> Outputs:
        """The network's probabilities and embeddings of the listings."""
        images = listings.photo_array(self.kind) if self.kind.reads_photos else None
        tokens = self._token_ids(listings) if self.kind.reads_text else None
        if isinstance(self.network, OnnxModel):
            named = {"images": images, "tokens": tokens}
            logits, embeddings = self.network.run({name: value for name, value in named.items() if value is not None})
        else:
            from fbml.modeling.torch_runtime import network_outputs

            logits, embeddings = network_outputs(self.network, images, tokens, listings.shared, self._frozen(listings))
        return Outputs(softmax(logits), embeddings)

    def _frozen(self, listings: Listings) -> FrozenFeatures | None:
        """The batch's frozen features when they were computed on photos prepared as this network's are."""
        frozen = listings.frozen
        return frozen if frozen is not None and self.image is not None and frozen.preparation == self.image.preparation else None

    def _token_ids(self, listings: Listings) -> np.ndarray:
        settings = self.text
        if settings is None:
            raise FbmlError(f"the {self.kind} model has no text settings")
        texts = listings.normalised_texts(self.kind)
        return listings.shared(("tokens", id(settings)), lambda: settings.token_ids(texts))


def listing_model(
    kind: ModelKind, module: nn.Module | LinearTextModel | OnnxModel, text: TextSettings | None, image: ImageSettings | None
) -> ListingModel:
    """``module`` (a bundle's model of ``kind``) as the prediction path runs it, with the settings it reads by."""
    if isinstance(module, LinearTextModel):
        return LinearTextReader(module)
    if kind.reads_photos and image is None:
        raise FbmlError(f"the {kind} model needs image settings")
    if kind.reads_text and text is None:
        raise FbmlError(f"the {kind} model needs text settings")
    return NetworkModel(kind, module, text, image)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, float32."""
    exponentials: np.ndarray = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = (exponentials / exponentials.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities
