"""What listings look like, as ``Observations`` (per-feature values) and their summary, a bundle's ``Profile``.

One piece of code observes both sides of ``fbml monitor``: training profiles the listings a bundle was
trained on (``profiled_bundle``), the monitor observes new listings (``listing_observations``) and
compares them with that profile. Features:

* from the clean tables: ``products.price`` (log scale), ``products.category``, ``text.length`` (characters
  of the listing text, log scale), missing fields (``products.missing``), rejected rows by reason
  (``products.rejected``, ``photos.rejected``) and products without a photo (``products.photos``);
* from the photos: ``photos.bytes`` (file size, log scale), ``photos.brightness`` and the mean
  ``photos.red``/``green``/``blue`` of each decoded photo;
* from the bundle, on listings its models never trained on (training's test split; all new listings):
  the share of unknown words (``text.words``: tokens outside the text models' vocabulary), each
  predictor's ``predictions.<role>.category`` and ``.confidence`` (``Bundle.probabilities``), and a
  sample of listing vectors (``Bundle.embed_many``). Models are more confident, and know more of the
  words, on what they trained on; profiling those on the test split keeps new listings of the same market
  from looking shifted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import numpy as np
import polars as pl
from contracts.bundle import Role

from fbml.bundle.bundle import Bundle
from fbml.bundle.profile import (
    MAX_VECTORS,
    Profile,
    RateGroup,
    categorical_summary,
    numeric_summary,
    rate_group,
)
from fbml.modeling.inference import FrozenFeatures
from fbml.tables.clean import CleanTables, restricted_tables
from fbml.tables.cleaning import reasons_count
from fbml.text.listings import listing_texts
from fbml.text.vocabulary import tokens
from fbml.vision.cache import ImageCache
from fbml.workflows.inputs import TrainingData, frame_listings, product_photos, training_photos, with_decoded_photos

STATS_SIZE = 64
"""The side photos are decoded at for their statistics when the bundle reads no photos."""
LOG_SCALED = frozenset({"products.price", "text.length", "photos.bytes"})
"""Features observed as ``log(1 + value)``: spread over orders of magnitude, so a shift is a factor."""
MISSING_FIELDS = ("product_description", "location", "county", "subcategory")
_CHUNK = 256
_DECIMALS = 4


@attrs.frozen
class Observations:
    """Per feature name: numeric values (finite), categorical labels, rate counts; a sample of listing vectors."""

    numeric: Mapping[str, np.ndarray] = attrs.field(factory=dict)
    categorical: Mapping[str, Sequence[str]] = attrs.field(factory=dict)
    rates: Mapping[str, RateGroup] = attrs.field(factory=dict)
    vectors: np.ndarray | None = attrs.field(default=None, eq=False)

    def merged(self, other: Observations) -> Observations:
        """These observations and ``other``'s (whose features win where both have one)."""
        return Observations({**self.numeric, **other.numeric}, {**self.categorical, **other.categorical},
                            {**self.rates, **other.rates}, other.vectors if other.vectors is not None else self.vectors)  # fmt: skip

    def scaled(self) -> Observations:
        """These observations with the ``LOG_SCALED`` features as ``log(1 + value)``, non-finite values dropped."""
        numeric = {}
        for name, values in self.numeric.items():
            array = np.asarray(values, np.float64)
            if name in LOG_SCALED:
                array = np.log1p(np.clip(array, 0, None))
            numeric[name] = array[np.isfinite(array)]
        return attrs.evolve(self, numeric=numeric)

    def profile(self) -> Profile:
        """The summary of these observations (features without values left out)."""
        vectors = None if self.vectors is None or not len(self.vectors) else np.round(self.vectors, _DECIMALS).tolist()
        return Profile(
            numeric={name: numeric_summary(values) for name, values in sorted(self.numeric.items()) if values.size},
            categorical={name: categorical_summary(list(labels)) for name, labels in sorted(self.categorical.items()) if labels},
            rates=dict(sorted(self.rates.items())),
            vectors=vectors,
        )


def profiled_bundle(bundle: Bundle, data: TrainingData, *, scored_by: Bundle | None = None, features: FrozenFeatures | None = None
                    ) -> Bundle:  # fmt: skip
    """``bundle`` with the profile of a training's listings: the data's features on all of its tables, the
    models' on its test split, scored by ``scored_by`` (default ``bundle``): the models that never saw it when
    the bundle ships models trained on every product (their image branches starting from the cached frozen
    ``features`` of the training's photos when given)."""
    tables = data.tables
    photos = None
    if tables.manifest is not None and data.image_dir is not None:
        photos = training_photos(data, photo_side(bundle))
    held_out = restricted_tables(tables, pl.col("id").is_in(data.splits.products.test["id"].implode()))
    observations = listing_observations(scored_by or bundle, tables, photos, data.image_dir, held_out=held_out, features=features)
    return attrs.evolve(bundle, profile=observations.profile())


def photo_side(bundle: Bundle) -> int:
    """The side photos are decoded at for profiling: the bundle's image models' (so their cache serves), or
    ``STATS_SIZE``."""
    return STATS_SIZE if bundle.image is None else bundle.image.size


def listing_observations(bundle: Bundle, tables: CleanTables, photos: ImageCache | None, image_dir: Path | None, *,
                         held_out: CleanTables | None = None, features: FrozenFeatures | None = None) -> Observations:  # fmt: skip
    """The features of ``tables`` (and their decoded ``photos``, with their cached frozen ``features`` when given),
    with the models' features on ``held_out`` (default: all of ``tables``)."""
    observed = table_observations(tables)
    if photos is not None and tables.manifest is not None and image_dir is not None:
        observed = observed.merged(photo_observations(tables, photos, image_dir))
    return observed.merged(model_observations(bundle, tables if held_out is None else held_out, photos, features))


def table_observations(tables: CleanTables) -> Observations:
    """Price, category, text length, missing fields and rejected rows of clean tables."""
    products = tables.cleaned.products
    texts = listing_texts(products)
    missing = {"description" if name == "product_description" else name: _missing_count(products, name) for name in MISSING_FIELDS}
    rates = {"products.rejected": rate_group(tables.products_read, tables.cleaned.rejected_by_reason()),
             "products.missing": rate_group(products.height, missing)}  # fmt: skip
    if tables.manifest is not None:
        manifest = tables.manifest
        rates["photos.rejected"] = rate_group(tables.images_read, manifest.rejected_by_reason())
        without = products.filter(~pl.col("id").is_in(manifest.images["id"].implode())).height
        rates["products.photos"] = rate_group(products.height, {"without a photo": without})
    return Observations(
        numeric={"products.price": products["price"].to_numpy(), "text.length": np.array([len(text) for text in texts], np.float64)},
        categorical={"products.category": products["category"].to_list()},
        rates=rates,
    ).scaled()


def _missing_count(products: pl.DataFrame, name: str) -> int:
    if name not in products.columns:
        return 0
    missing: int = products.select((pl.col(name).is_null() | (pl.col(name) == "")).sum()).item()
    return missing


def photo_observations(tables: CleanTables, photos: ImageCache, image_dir: Path) -> Observations:
    """File size, brightness and colour of each photo that decoded; the rows that did not, by reason."""
    assert tables.manifest is not None
    decoded = with_decoded_photos(tables.manifest.images, photos)
    image_ids = decoded["image_id"].to_list()
    sizes = _file_sizes(image_dir, image_ids)
    channels = _channel_means(photos, photos.rows_for(decoded["image_id"]))
    brightness = channels @ np.array([0.299, 0.587, 0.114])
    rejected = tables.manifest.rejected_by_reason()
    for reason, count in reasons_count(photos.rejected).items():
        rejected[reason] = rejected.get(reason, 0) + count
    return Observations(
        numeric={"photos.bytes": sizes, "photos.brightness": brightness,
                 "photos.red": channels[:, 0], "photos.green": channels[:, 1], "photos.blue": channels[:, 2]},
        rates={"photos.rejected": rate_group(tables.images_read, rejected)},
    ).scaled()


def _file_sizes(image_dir: Path, image_ids: Sequence[str]) -> np.ndarray:
    """The size in bytes of each photo's file ``image_dir/<image id>.*`` (NaN where none is found)."""
    sizes = {path.stem: path.stat().st_size for path in image_dir.iterdir() if path.is_file()}
    return np.array([sizes.get(image_id, np.nan) for image_id in image_ids], np.float64)


def _channel_means(photos: ImageCache, rows: np.ndarray) -> np.ndarray:
    """Each photo's mean red, green and blue (0 to 1), float64 (n, 3), read a chunk at a time."""
    means = np.zeros((rows.size, 3))
    for start in range(0, rows.size, _CHUNK):
        means[start:start + _CHUNK] = np.asarray(photos.pixels[rows[start:start + _CHUNK]], np.float64).mean(axis=(2, 3)) / 255
    return means


def model_observations(bundle: Bundle, tables: CleanTables, photos: ImageCache | None, features: FrozenFeatures | None = None
                       ) -> Observations:  # fmt: skip
    """Unknown words, each predictor's predictions, and a sample of listing vectors, of ``tables``' listings."""
    products = tables.cleaned.products
    rates = {} if bundle.text is None else {"text.words": _unknown_words(bundle, listing_texts(products))}
    numeric: dict[str, np.ndarray] = {}
    categorical: dict[str, list[str]] = {}
    frames: list[tuple[list[Role], pl.DataFrame, ImageCache | None]] = [
        ([role for role in bundle.predictors if not role.reads_photos], products, None)]
    if tables.manifest is not None and photos is not None:
        frames.append(([role for role in bundle.predictors if role.reads_photos], with_decoded_photos(tables.manifest.images, photos), photos))
    for roles, frame, frame_photos in frames:
        if not roles or not frame.height:
            continue
        texts, images = frame_listings(frame, frame_photos, features)
        found = bundle.probabilities(list(roles), texts=texts, images=images)
        for role in roles:
            numeric[f"predictions.{role}.confidence"] = found[role].max(axis=1).astype(np.float64)
            categorical[f"predictions.{role}.category"] = [bundle.codec.classes[index] for index in found[role].argmax(axis=1)]
    return Observations(numeric, categorical, rates, _vector_sample(bundle, tables, photos, features))


def _unknown_words(bundle: Bundle, texts: list[str]) -> RateGroup:
    """How many of the texts' tokens (the text models' tokenisation) the bundle's vocabulary lacks."""
    assert bundle.text is not None
    words = pl.DataFrame({"text": texts}, schema={"text": pl.String}).select(tokens(pl.col("text")).alias("token")).explode("token")
    words = words.drop_nulls()
    known = words["token"].is_in(pl.Series(bundle.text.vocabulary.tokens[2:], dtype=pl.String).implode())
    return RateGroup(words.height, {"unknown": int(words.height - known.sum())})


def _vector_sample(bundle: Bundle, tables: CleanTables, photos: ImageCache | None, features: FrozenFeatures | None) -> np.ndarray | None:
    """The listing vectors (``Bundle.embed_many``) of up to ``MAX_VECTORS`` products, chosen by a hash of their
    id (so the sample does not depend on row order); None when the bundle makes no listing vectors."""
    if bundle.index is None:
        return None
    products = sampled_products(tables.cleaned.products, MAX_VECTORS)
    images = None
    if photos is not None and tables.manifest is not None:
        images = product_photos(products, tables.manifest.images, photos, features)
    texts: list[str | None] = list(listing_texts(products))
    vectors: np.ndarray = bundle.embed_many(texts=texts, images=images)
    return vectors


def sampled_products(products: pl.DataFrame, limit: int) -> pl.DataFrame:
    """Up to ``limit`` products: those whose id hashes lowest (the same ones whatever the row order)."""
    keys = [hashlib.blake2b(identifier.encode(), digest_size=8).hexdigest() for identifier in products["id"].to_list()]
    return products.with_columns(pl.Series("_key", keys)).sort("_key").head(limit).drop("_key")
