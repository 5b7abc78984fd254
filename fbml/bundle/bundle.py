"""A bundle: the models over one codec, the predictor each role serves, the similar-listings index, and
the one prediction path over them.

``load_bundle(path).predict(text=..., image=...)`` goes from a raw listing to a ``Prediction``;
``predict_many`` does it for a batch, ``probabilities`` gives any predictor's or model's raw scores,
``embed``/``embed_many`` a listing's vector and ``similar`` the catalogue's listings most like one.
Serving, evaluation, indexing, batch scoring and training's test scores all call these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
from contracts.bundle import CombinedOptions, ImageOptions, ModelKind, OnnxEntry, Role, TextCnnOptions
from contracts.limits import MAX_K
from tqdm import tqdm

from fbml.bundle.listings import ListingRecipe, listing_parts
from fbml.bundle.predictions import (
    DEFAULT_BATCH,
    Fields,
    Name,
    Photo,
    Prediction,
    Similar,
    batch_probabilities,
    checked_photos,
    checked_texts,
    chunks,
    predictions,
    prepared_listings,
    readable,
    resolved_role,
)
from fbml.bundle.profile import Profile
from fbml.bundle.search import Neighbour, SearchIndex
from fbml.errors import FbmlError, InputError
from fbml.modeling.ensembles import Ensemble
from fbml.modeling.inference import ListingModel, listing_model
from fbml.modeling.linear_text import LinearTextModel
from fbml.modeling.onnx_runtime import OnnxGraph
from fbml.modeling.settings import ImageSettings, TextSettings
from fbml.text.labels import LabelCodec
from fbml.vision.photos import PhotoInput, PhotoLimits, PreparedPhoto

if TYPE_CHECKING:
    from torch import nn

    from fbml.modeling.onnx_runtime import OnnxModel
    from fbml.modeling.subcategories import SubcategoryModel

    Model = nn.Module | LinearTextModel | OnnxModel

UNVERSIONED = "unversioned"
"""The model version of a bundle that was never saved (a loaded one's is the SHA-256 of its manifest)."""
TorchOptions = ImageOptions | TextCnnOptions | CombinedOptions
Photos = Sequence[Photo]


def _in_eval_mode(module: Model) -> Model:
    """A network as a bundle holds it: in eval mode (a finished model; training sets its own mode)."""
    from fbml.modeling.onnx_runtime import OnnxModel

    if isinstance(module, LinearTextModel | OnnxModel):
        return module
    return module.eval()


@attrs.frozen
class StoredGraph:
    """A network's ONNX graph left in the bundle folder it was loaded from (a torch-runtime load reads none): saving
    the bundle references that file where the target holds it, else copies it, checked, from ``folder``."""

    folder: Path
    entry: OnnxEntry


@attrs.frozen
class BundleModel:
    """A trained model of one kind (a network is kept in eval mode), the factory arguments that rebuild it
    (None for the linear text model, whose parameters are the model) and what its training reported."""

    kind: ModelKind = attrs.field(converter=ModelKind)
    module: Model = attrs.field(eq=False, converter=_in_eval_mode)
    options: TorchOptions | None
    report: Mapping[str, Any] = attrs.field(factory=dict)
    onnx: OnnxGraph | StoredGraph | None = attrs.field(default=None, eq=False)
    """The network's ONNX graph, when ``fbml export-onnx`` made one of these weights (as its file, when loaded for torch)."""


@attrs.frozen
class Predictor:
    """What a role serves: an ensemble of the bundle's models, and how it was chosen."""

    ensemble: Ensemble
    report: Mapping[str, Any] = attrs.field(factory=dict)


def _kinds(models: Mapping[ModelKind, BundleModel] | Mapping[str, BundleModel]) -> dict[ModelKind, BundleModel]:
    return {ModelKind(kind): model for kind, model in models.items()}


def _roles(predictors: Mapping[Role, Predictor] | Mapping[str, Predictor]) -> dict[Role, Predictor]:
    return {checked_role(role): predictor for role, predictor in predictors.items()}


@attrs.frozen
class Bundle:
    """Models over one codec; ``image``/``text`` settings present when a model needs them; the
    predictor of each role; the similar-listings index when one was built; the model version; the
    training profile."""

    codec: LabelCodec
    image: ImageSettings | None = None
    text: TextSettings | None = None
    models: Mapping[ModelKind, BundleModel] = attrs.field(factory=dict, converter=_kinds)
    predictors: Mapping[Role, Predictor] = attrs.field(factory=dict, converter=_roles)
    index: SearchIndex | None = None
    model_version: str = UNVERSIONED
    subcategories: SubcategoryModel | None = None
    profile: Profile | None = None
    """What the training listings looked like (``fbml monitor`` compares new ones with it); None in older bundles."""
    partial: bool = attrs.field(default=False, kw_only=True)
    """Loaded with only some roles (``load_bundle(roles=...)``): without the other models, the index and the
    profile; it cannot be saved."""

    # --- the prediction path ------------------------------------------------------------------------------

    def predict(self, *, text: str | None = None, image: PhotoInput | PreparedPhoto | None = None,
                role: Role | str | None = None, limits: PhotoLimits = PhotoLimits()) -> Prediction:  # fmt: skip
        """One listing's prediction by the ``text``, ``image`` or ``combined`` predictor, whichever reads what
        is given (or ``role``). ``text``: the listing's text (name then description; ``fbml.listing_text``
        makes it), raw: it is normalised as the training text was. ``image``: encoded bytes, a file path
        (``os.PathLike``), a PIL image or uint8 pixels, decoded within ``limits``. ``InputError`` names what
        is wrong."""
        texts = None if text is None else [text]
        images: list[Photo] | None = None if image is None else [image]
        return self._predict(texts, images, role, limits, DEFAULT_BATCH, single=True)[0]

    def predict_many(self, *, texts: Sequence[str] | None = None, images: Photos | None = None, role: Role | str | None = None,
                     limits: PhotoLimits = PhotoLimits(), batch_size: int = DEFAULT_BATCH) -> list[Prediction]:  # fmt: skip
        """``predict`` for a batch: a list of texts and/or a list of photos (pairwise, for ``combined``),
        run ``batch_size`` listings at a time."""
        return self._predict(checked_texts(texts, "texts"), checked_photos(images, "images"), role, limits, batch_size, single=False)

    def probabilities(self, names: Sequence[Role | ModelKind], *, texts: Sequence[str] | None = None, images: Photos | None = None,
                      limits: PhotoLimits = PhotoLimits(), batch_size: int = DEFAULT_BATCH,
                      progress: bool = False) -> dict[Role | ModelKind, np.ndarray]:  # fmt: skip
        """Each named predictor's or model's probabilities (float32 (n, classes)) of the listings, each model run
        once per batch of ``batch_size``; what ``predict_many`` answers from, for callers that score several."""
        checked_texts_, checked_images = checked_texts(texts, "texts"), checked_photos(images, "images")
        for name in names:
            readable(self, name, has_text=checked_texts_ is not None, has_photos=checked_images is not None)
        return self._probabilities(names, checked_texts_, checked_images, limits, batch_size, single=False, progress=progress)

    def embed(self, *, text: str | None = None, image: PhotoInput | PreparedPhoto | None = None,
              limits: PhotoLimits = PhotoLimits()) -> np.ndarray:  # fmt: skip
        """A listing's vector (float32, unit length) as the similar-listings index holds its catalogue's."""
        texts = None if text is None else [text]
        groups = None if image is None else [[image]]
        vector: np.ndarray = self._vectors(texts, groups, limits, DEFAULT_BATCH, single=True, progress=False)[0]
        return vector

    def embed_many(self, *, texts: Sequence[str | None] | None = None, images: Sequence[Photos] | None = None,
                   limits: PhotoLimits = PhotoLimits(), batch_size: int = DEFAULT_BATCH, progress: bool = False) -> np.ndarray:  # fmt: skip
        """Listing vectors (float32 (n, width), unit length): listing ``i`` has ``texts[i]`` (None: no text) and
        the photos ``images[i]`` (their image embeddings and predictions are averaged; empty: no photo)."""
        return self._vectors(texts, images, limits, batch_size, single=False, progress=progress)

    def similar(self, *, product_id: str | None = None, text: str | None = None, image: PhotoInput | PreparedPhoto | None = None,
                vector: np.ndarray | None = None, k: int = 10, limits: PhotoLimits = PhotoLimits()) -> list[Similar]:  # fmt: skip
        """The ``k`` listings of the index's catalogue most like a catalogue product (``product_id``; itself left
        out), a listing's text and/or photo, or a listing ``vector`` (``embed``); best first."""
        index = self.search_index()
        given = [name for name, value in (("product_id", product_id), ("vector", vector)) if value is not None]
        if text is not None or image is not None:
            given.append("text and/or image")
        if len(given) != 1:
            raise InputError("query", f"give one of product_id, vector, or text and/or image (got {', '.join(given) or 'none'})")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise InputError("k", f"must be a whole number from 1 to {MAX_K}, got {k!r}")
        if product_id is not None:
            return self.similar_listings(index.neighbours(product_id, k))
        query = vector if vector is not None else self.embed(text=text, image=image, limits=limits)
        return self.similar_listings(index.nearest(np.asarray(query, np.float32), k))

    def similar_listings(self, neighbours: Sequence[Neighbour]) -> list[Similar]:
        """The catalogue's listings of a search's ``neighbours``, best first."""
        index = self.search_index()
        found = []
        for neighbour in neighbours:
            row = index.listing(neighbour.row)
            found.append(Similar(row["id"], row["product_name"], row["category"], row["price"], neighbour.score,
                                 row["category_path"], tuple(row["photos"])))
        return found

    # --- parts --------------------------------------------------------------------------------------------

    def listing_model(self, kind: ModelKind) -> ListingModel:
        """The model of ``kind`` as the prediction path runs it (it prepares its inputs itself)."""
        return listing_model(ModelKind(kind), self.model(kind), self.text, self.image)

    def image_settings(self) -> ImageSettings:
        """How the bundle's image networks read photos; ``InputError`` when it has none (it reads no photos)."""
        if self.image is None:
            raise InputError("image", "the bundle has no image model: it reads no photos")
        return self.image

    def search_index(self) -> SearchIndex:
        """The similar-listings index; ``FbmlError`` when the bundle has none."""
        if self.index is None:
            raise FbmlError("the bundle has no search index (build one with `fbml index`)")
        return self.index

    def with_model(self, model: BundleModel) -> Bundle:
        """This bundle with ``model`` added (or replacing the model of its kind)."""
        return attrs.evolve(self, models={**self.models, model.kind: model})

    def with_predictor(self, role: Role | str, predictor: Predictor) -> Bundle:
        """This bundle with the predictor of ``role`` set."""
        return attrs.evolve(self, predictors={**self.predictors, checked_role(role): predictor})

    def model(self, kind: ModelKind | str) -> Model:
        """The model of ``kind``; a clear error when the bundle lacks it."""
        if kind not in self.models:
            raise FbmlError(f"the bundle has no {kind} model (it has: {', '.join(self.models) or 'none'})")
        return self.models[ModelKind(kind)].module

    def torch_model(self, kind: ModelKind | str) -> nn.Module | LinearTextModel:
        """The model of ``kind`` as training uses it: a torch network or the linear model."""
        from fbml.modeling.onnx_runtime import OnnxModel

        model = self.model(kind)
        if isinstance(model, OnnxModel):
            raise FbmlError(f"the {kind} model was loaded for ONNX Runtime; load the bundle with the torch runtime")
        return model

    def predictor(self, role: Role | str) -> Predictor:
        """The predictor of ``role``; a clear error when the bundle has none."""
        if role not in self.predictors:
            raise FbmlError(f"the bundle has no {role} predictor (it has: {', '.join(self.predictors) or 'none'})")
        return self.predictors[Role(role)]

    def listing_recipe(self) -> ListingRecipe:
        """How the similar-listings index made its listings' vectors (part weights, probability power)."""
        return ListingRecipe.from_report(self.search_index().report)

    def embedding_dim(self, kind: ModelKind) -> int:
        """The width of the embedding the network of ``kind`` represents its input by."""
        dim = getattr(self.model(kind), "embedding_dim", None)
        if not isinstance(dim, int):
            raise FbmlError(f"the {kind} model has no embedding")
        return dim

    def listing_width(self) -> int:
        """The width of a listing vector made by this bundle's models (``fbml.bundle.listings``)."""
        return (self.embedding_dim(ModelKind.TEXT_CNN) + self.embedding_dim(ModelKind.IMAGE_CNN) + self.codec.num_classes
                + self.subcategory_count())

    def subcategory_count(self) -> int:
        """How many subcategories the bundle tells apart (0: it predicts none)."""
        return 0 if self.subcategories is None else self.subcategories.num_classes

    # --- the work behind the prediction methods ------------------------------------------------------------

    def _predict(self, texts: list[str] | None, images: list[Photo] | None, role: Role | str | None,
                 limits: PhotoLimits, batch_size: int, *, single: bool) -> list[Prediction]:  # fmt: skip
        _check_pairs(texts, images)
        chosen = resolved_role(self, role, has_text=texts is not None, has_photos=images is not None)
        found = self._probabilities([chosen], texts, images, limits, batch_size, single=single, progress=False)
        return predictions(self, found[chosen], chosen, self.subcategory_joint(texts, found[chosen]))

    def subcategory_joint(self, texts: Sequence[str] | None, category_probabilities: np.ndarray) -> np.ndarray | None:
        """``P(category) * P(subcategory | category)`` of listings with these (checked) texts and a predictor's
        category probabilities; None when the bundle predicts no subcategory or there are no texts."""
        if self.subcategories is None or texts is None:
            return None
        probabilities = self.subcategories.probabilities(texts)
        return self.subcategories.joint(self.codec, category_probabilities, probabilities)

    def _probabilities(self, names: Sequence[Name], texts: list[str] | None, images: list[Photo] | None,
                       limits: PhotoLimits, batch_size: int, *, single: bool, progress: bool) -> dict[Name, np.ndarray]:  # fmt: skip
        count = _check_pairs(texts, images)
        parts: dict[Name, list[np.ndarray]] = {name: [] for name in names}
        for part in tqdm(list(chunks(count, batch_size)), desc="predicting", unit="batch", disable=not progress):
            fields = Fields(["text"], ["image"]) if single else Fields.listed(range(part.start, part.stop))
            listings = prepared_listings(self, None if texts is None else texts[part], None if images is None else images[part],
                                         limits=limits, fields=fields)  # fmt: skip
            for name, values in batch_probabilities(self, listings, names).items():
                parts[name].append(values)
        empty = np.zeros((0, self.codec.num_classes), np.float32)
        return {name: np.concatenate(values) if values else empty for name, values in parts.items()}

    def _vectors(self, texts: Sequence[str | None] | None, groups: Sequence[Photos] | None, limits: PhotoLimits,
                 batch_size: int, *, single: bool, progress: bool) -> np.ndarray:  # fmt: skip
        parts = listing_parts(self, texts, groups, limits=limits, batch_size=batch_size, single=single, progress=progress)
        return parts.vectors(self.listing_recipe())


def checked_role(role: Role | str) -> Role:
    """``role`` as a ``Role``; ``FbmlError`` naming the roles otherwise."""
    try:
        return Role(role)
    except ValueError:
        raise FbmlError(f"unknown predictor {role!r} (one of {', '.join(Role)})") from None


def _check_pairs(texts: Sequence[object] | None, images: Sequence[object] | None) -> int:
    """How many listings: texts and photos, when both are given, pair up one to one."""
    if texts is not None and images is not None and len(texts) != len(images):
        raise InputError("images", f"{len(images)} photos for {len(texts)} texts: give one photo per text")
    return len(texts) if texts is not None else len(images or ())
