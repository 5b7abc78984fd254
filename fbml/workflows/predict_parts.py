"""One part of a catalogue scored through the bundle's prediction path: what ``fbml predict`` does to each part,
on this machine or in a Ray actor.

A part is some clean products and their photos (manifest rows). Its photos are decoded as the evaluation's
photo cache decodes them (``fbml.vision.cache.decoded_photos``: a thread pool, PIL releasing the GIL), then,
a batch at a time, normalised for the image networks (``fbml.vision.photos.normalised``, what the prediction
path does to a decoded photo: it is a letterboxed square already); each photo is scored with its product's
text by the photo predictor (``combined``, or ``image`` when the bundle has no combined one) and a product's
answer is the mean of its photos' probabilities
(``fbml.modeling.metrics.product_means``, as ``fbml evaluate`` scores products); a product without a photo
that decodes is scored by the ``text`` predictor. Probabilities become ``Prediction``s by the bundle's own
``predictions``, so the rows say what ``Bundle.predict`` would.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import attrs
import numpy as np
import polars as pl
from contracts.bundle import Role
from contracts.rules import REJECTED_SCHEMA

from fbml.bundle.bundle import Bundle
from fbml.bundle.predictions import READABLE, Prediction, chunks, predictions
from fbml.errors import FbmlError
from fbml.modeling.metrics import product_means
from fbml.tables.validation import rejected_checked
from fbml.text.listings import listing_texts, normalised_texts
from fbml.vision.cache import PhotoFolder, decoded_photos
from fbml.vision.photos import PreparedPhoto, normalised

PRODUCT_ROW = "source_row"
"""A part's products' column: the product's 1-based record in the raw products table."""
MANIFEST_ROW = "manifest_row"
"""A part's photos' column: the photo's 0-based row in the whole photo manifest."""
PART = "part"
UNREADABLE_TEXT = "listing text has no letter or digit once normalised to ASCII"
NO_PREDICTOR = "no photo that decodes, and the bundle has no text predictor"
TOP_TYPE = pl.List(pl.Struct({"category": pl.String, "probability": pl.Float64}))
PREDICTION_SCHEMA = pl.Schema({
    "product_id": pl.String(), "role": pl.String(), "category": pl.String(), "probability": pl.Float64(), "top": TOP_TYPE,
    "subcategory": pl.String(), "subcategory_probability": pl.Float64(), "model_version": pl.String(),
})  # fmt: skip
Progress = Callable[[int], object]


@attrs.frozen
class Sources:
    """Where a catalogue's rows came from, as ``Rejected`` rows name them: the products table and the photo folder."""

    products: str
    photos: str

    @classmethod
    def of(cls, products: str | Path, image_dir: Path | None) -> Sources:
        """The sources of a run over the products table ``products`` and the photo folder ``image_dir``."""
        return cls(str(products), "" if image_dir is None else str(image_dir))


@attrs.frozen
class Part:
    """Some clean products (with ``PRODUCT_ROW``) and their photos' manifest rows (with ``MANIFEST_ROW``;
    None when there are no photos to read)."""

    number: int
    products: pl.DataFrame
    photos: pl.DataFrame | None

    def to_ipc(self) -> dict[str, object]:
        """The part as plain values (Arrow IPC bytes), to send to a Ray actor."""
        return {PART: self.number, "products": ipc_bytes(self.products), "photos": b"" if self.photos is None else ipc_bytes(self.photos)}

    @classmethod
    def from_ipc(cls, number: int, products: bytes, photos: bytes) -> Part:
        """The part ``to_ipc`` made."""
        return cls(number, pl.read_ipc(io.BytesIO(products)), pl.read_ipc(io.BytesIO(photos)) if photos else None)


@attrs.frozen
class DecodedPart:
    """A part with its photos decoded: ``photos`` the manifest rows that decoded, ``pixels[i]`` row i's photo
    (uint8 (n, 3, S, S), letterboxed squares), and the ``Rejected`` rows of those that did not."""

    part: Part
    photos: pl.DataFrame
    pixels: np.ndarray
    rejected: pl.DataFrame


@attrs.frozen
class ScoredPart:
    """A part's predictions (``PREDICTION_SCHEMA``, plus ``embedding`` when asked) and its rejected rows."""

    number: int
    predictions: pl.DataFrame
    rejected: pl.DataFrame

    def to_ipc(self) -> tuple[int, bytes, bytes]:
        """The scored part as plain values, to send back from a worker process or a Ray actor: its number, and its
        predictions and rejected rows as Arrow IPC bytes."""
        return self.number, ipc_bytes(self.predictions), ipc_bytes(self.rejected)

    @classmethod
    def from_ipc(cls, number: int, predictions: bytes, rejected: bytes) -> ScoredPart:
        """The scored part ``to_ipc`` made."""
        return cls(number, pl.read_ipc(io.BytesIO(predictions)), pl.read_ipc(io.BytesIO(rejected)))


@attrs.frozen
class Roles:
    """The predictor for a product's photos (None: photos are not read) and for its text alone (None: none)."""

    photo: Role | None
    text: Role | None

    @classmethod
    def of(cls, bundle: Bundle) -> Roles:
        """``combined`` (else ``image``) for photos when the bundle reads photos; ``text`` when it has one."""
        photo = photo_role(bundle.predictors)
        text = Role.TEXT if Role.TEXT in bundle.predictors else None
        if photo is None and text is None:
            raise FbmlError("the bundle has neither a text, a combined nor an image predictor")
        return cls(photo if bundle.image is not None else None, text)


def photo_role(roles: Collection[Role]) -> Role | None:
    """The predictor among ``roles`` that scores a product's photos: ``combined``, else ``image`` (None: neither)."""
    return next((role for role in (Role.COMBINED, Role.IMAGE) if role in roles), None)


def decoded_part(part: Part, folder: PhotoFolder | None, size: int, workers: int | None = None) -> DecodedPart:
    """``part``'s photos decoded at ``size`` px from ``folder`` (none without a folder or photos)."""
    if part.photos is None or folder is None or part.photos.height == 0:
        return DecodedPart(part, _no_photos(part), np.zeros((0, 3, size, size), np.uint8), pl.DataFrame(schema=REJECTED_SCHEMA))
    manifest = part.photos.drop(MANIFEST_ROW)  # checked by its contract where the catalogue was cleaned
    loaded = decoded_photos(manifest, folder, size=size, workers=workers, progress=False)  # type: ignore[arg-type]
    rows = part.photos[MANIFEST_ROW].to_numpy()
    rejected = loaded.rejected.with_columns(source_row=pl.Series(rows[loaded.rejected["source_row"].to_numpy() - 1] + 1, dtype=pl.Int64))
    return DecodedPart(part, part.photos[loaded.rows], loaded.pixels, rejected)


def scored_part(bundle: Bundle, decoded: DecodedPart, sources: Sources, *, batch_size: int, embeddings: bool,
                progress: Progress = lambda done: None) -> ScoredPart:  # fmt: skip
    """A prediction for each product of the part that a predictor can read, the others rejected with why;
    ``progress(n)`` after each batch, ``n`` the products it finished."""
    roles = Roles.of(bundle)
    products = decoded.part.products
    readable = _readable(listing_texts(products))
    photographed = products["id"].is_in(decoded.photos["id"].implode()).to_numpy() & (roles.photo is not None)
    by_photo = photographed & (readable | (roles.photo is not None and not roles.photo.reads_text))
    by_text = ~photographed & readable & (roles.text is not None)
    answers: dict[str, tuple[Prediction, Role]] = {}
    if roles.photo is not None and by_photo.any():
        answers |= _photo_answers(bundle, roles.photo, decoded, products.filter(by_photo)["id"], batch_size, progress)
    if roles.text is not None and by_text.any():
        answers |= _text_answers(bundle, roles.text, products.filter(by_text), batch_size, progress)
    kept = by_photo | by_text
    scored = products.filter(kept)
    frame = _prediction_frame([answers[product_id] for product_id in scored["id"].to_list()], scored["id"])
    if embeddings:
        frame = frame.with_columns(_embeddings(bundle, scored, decoded, batch_size))
    reasons = np.where(readable[~kept], NO_PREDICTOR, UNREADABLE_TEXT)
    progress(int(np.count_nonzero(~kept)))
    refused = _rejected_products(products.filter(~kept), reasons, sources.products)
    return ScoredPart(decoded.part.number, frame, pl.concat([refused, decoded.rejected]))


def _photo_answers(bundle: Bundle, role: Role, decoded: DecodedPart, product_ids: pl.Series, batch_size: int,
                   progress: Progress) -> dict[str, tuple[Prediction, Role]]:  # fmt: skip
    """Each product's prediction from its photos: each photo scored (with its product's text when ``role`` reads
    it), batch by batch in product order, and the probabilities of a product's photos averaged."""
    order = pl.DataFrame({"id": product_ids}).with_row_index("position")
    photos = decoded.photos.with_row_index("pixels").join(order, on="id", maintain_order="left").sort("position", maintain_order=True)
    texts = listing_texts(photos) if role.reads_text else None
    rows = photos["pixels"].to_numpy()
    last = photos.with_row_index("row").group_by("position", maintain_order=True).agg(pl.col("row").last())["row"].to_numpy()
    found: list[np.ndarray] = []
    for batch in chunks(len(rows), batch_size):
        images = prepared_photos(bundle, decoded.pixels[rows[batch]])
        found.append(bundle.probabilities([role], texts=None if texts is None else texts[batch], images=images,
                                          batch_size=batch_size)[role])  # fmt: skip
        progress(int(np.count_nonzero((last >= batch.start) & (last < batch.stop))))
    ids, means = product_means(photos["id"].to_list(), np.concatenate(found))
    text_of = dict(zip(photos["id"].to_list(), texts, strict=True)) if texts is not None else {}
    joint = bundle.subcategory_joint([text_of[product] for product in ids], means) if texts is not None else None
    return dict(zip(ids, ((prediction, role) for prediction in predictions(bundle, means, role, joint)), strict=True))


def prepared_photos(bundle: Bundle, pixels: np.ndarray) -> list[PreparedPhoto]:
    """Decoded letterboxed squares (uint8 (n, 3, S, S)) as the bundle's image networks read them: what
    ``Preparation.prepared`` makes of each (the letterbox of a square of its size is the square), in one step."""
    preparation = bundle.image_settings().preparation
    return [PreparedPhoto(photo, preparation) for photo in normalised(pixels, preparation.mean, preparation.std)]


def _text_answers(bundle: Bundle, role: Role, products: pl.DataFrame, batch_size: int,
                  progress: Progress) -> dict[str, tuple[Prediction, Role]]:  # fmt: skip
    """Each product's prediction from its text alone, batch by batch."""
    texts = listing_texts(products)
    found: list[np.ndarray] = []
    for batch in chunks(len(texts), batch_size):
        found.append(bundle.probabilities([role], texts=texts[batch], batch_size=batch_size)[role])
        progress(batch.stop - batch.start)
    probabilities = np.concatenate(found)
    answers = predictions(bundle, probabilities, role, bundle.subcategory_joint(texts, probabilities))
    return dict(zip(products["id"].to_list(), ((prediction, role) for prediction in answers), strict=True))


def _prediction_frame(answers: Sequence[tuple[Prediction, Role]], product_ids: pl.Series) -> pl.DataFrame:
    """The rows of ``PREDICTION_SCHEMA`` for the predictions, in their order."""
    return pl.DataFrame({
        "product_id": product_ids,
        "role": [str(role) for _, role in answers],
        "category": [prediction.category for prediction, _ in answers],
        "probability": [prediction.probabilities[prediction.category] for prediction, _ in answers],
        "top": [[{"category": category, "probability": value} for category, value in prediction.top()] for prediction, _ in answers],
        "subcategory": [prediction.subcategory for prediction, _ in answers],
        "subcategory_probability": [prediction.subcategory_probability for prediction, _ in answers],
        "model_version": [prediction.model_version for prediction, _ in answers],
    }, schema=PREDICTION_SCHEMA)  # fmt: skip


def _embeddings(bundle: Bundle, products: pl.DataFrame, decoded: DecodedPart, batch_size: int) -> pl.Series:
    """Each product's listing vector (``Bundle.embed_many``: its text and its photos that decoded)."""
    groups: dict[str, list[np.ndarray]] = {}
    for product_id, pixels in zip(decoded.photos["id"].to_list(), decoded.pixels, strict=True):
        groups.setdefault(product_id, []).append(pixels.transpose(1, 2, 0))
    photos = [groups.get(product_id, []) for product_id in products["id"].to_list()]
    vectors = bundle.embed_many(texts=listing_texts(products), images=photos if bundle.image is not None else None,
                                batch_size=batch_size)  # fmt: skip
    return pl.Series("embedding", vectors, dtype=pl.Array(pl.Float32, vectors.shape[1]))


def _readable(texts: list[str]) -> np.ndarray:
    """Whether each listing text has something a text model reads (bool; as the prediction path checks it)."""
    return pl.Series("readable", normalised_texts(texts), dtype=pl.String).str.contains(READABLE.pattern).to_numpy()


def _no_photos(part: Part) -> pl.DataFrame:
    return pl.DataFrame(schema={"id": pl.String}) if part.photos is None else part.photos.clear()


def _rejected_products(products: pl.DataFrame, reasons: np.ndarray, source: str) -> pl.DataFrame:
    """``Rejected`` rows (stage ``products``) of clean products no predictor can read, with the clean row as ``raw``."""
    frame = products.select(
        pl.lit(source, pl.String).alias("source"),
        pl.col(PRODUCT_ROW).cast(pl.Int64).alias("source_row"),
        pl.lit("products", pl.String).alias("stage"),
        pl.Series("reason", reasons, dtype=pl.String),
        pl.struct(pl.all().exclude(PRODUCT_ROW)).struct.json_encode().alias("raw"),
    )
    return rejected_checked(frame)


def ipc_bytes(frame: pl.DataFrame) -> bytes:
    """``frame`` as Arrow IPC bytes (how parts travel to and from Ray actors)."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    return buffer.getvalue()
