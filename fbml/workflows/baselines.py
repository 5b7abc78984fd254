"""The two baselines, on the product-level test split: price from category, category from pixels."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import polars as pl

from fbml.errors import FbmlError
from fbml.modeling.metrics import accuracy
from fbml.tables.clean import CleanTables
from fbml.tables.splits import split_tables
from fbml.text.labels import label_codec
from fbml.vision.cache import Photos, check_photo_folder, load_photos

DEFAULT_PRICE_RANGE = (1.0, 1000.0)
DEFAULT_PIXEL_SIZE = 32
MIN_PRODUCTS = 20


@attrs.frozen
class PriceBaseline:
    """Linear regression of price on one-hot category, next to always predicting the training mean."""

    rmse: float
    mae: float
    mean_rmse: float
    mean_mae: float
    train_products: int
    test_products: int
    price_range: tuple[float, float]


@attrs.frozen
class ImageBaseline:
    """Logistic regression on flattened pixels, next to always predicting the majority class."""

    accuracy: float
    majority_rate: float
    train_photos: int
    test_photos: int
    pixel_size: int
    classes: int


@attrs.frozen
class Baselines:
    """Both baselines and what they were measured on."""

    price: PriceBaseline
    image: ImageBaseline | None
    seed: int

    def to_json(self) -> dict[str, object]:
        """A JSON-ready mapping."""
        return attrs.asdict(self, recurse=True)

    def table(self) -> str:
        """A plain-text table of the figures."""
        price = self.price
        low, high = price.price_range
        lines = [
            f"price (linear regression on one-hot category, {low:g} < price < {high:g}, "
            f"{price.train_products} train / {price.test_products} test products)",
            f"  {'':26}{'RMSE £':>10}{'MAE £':>10}",
            f"  {'category regression':26}{price.rmse:>10.2f}{price.mae:>10.2f}",
            f"  {'always the training mean':26}{price.mean_rmse:>10.2f}{price.mean_mae:>10.2f}",
        ]
        if self.image is not None:
            image = self.image
            lines += [
                f"category from pixels (logistic regression on {image.pixel_size}x{image.pixel_size} RGB, "
                f"{image.train_photos} train / {image.test_photos} test photos, {image.classes} classes)",
                f"  {'logistic regression':26}{image.accuracy:>10.1%} accuracy",
                f"  {'always the majority class':26}{image.majority_rate:>10.1%} accuracy",
            ]
        return "\n".join(lines)


def price_baseline(
    train: pl.DataFrame, test: pl.DataFrame, *, price_range: tuple[float, float] = DEFAULT_PRICE_RANGE
) -> PriceBaseline:
    """Fit on ``train`` and score on ``test`` (``CleanProducts`` frames), both kept to ``price_range``."""
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_absolute_error, root_mean_squared_error
    from sklearn.preprocessing import OneHotEncoder

    train, test = (_in_price_range(frame, price_range) for frame in (train, test))
    encoder = OneHotEncoder(handle_unknown="ignore").fit(train.select("category").to_numpy())
    model = LinearRegression().fit(encoder.transform(train.select("category").to_numpy()), train["price"])
    predicted = model.predict(encoder.transform(test.select("category").to_numpy()))
    mean = np.full(test.height, train["price"].mean())
    truth = test["price"].to_numpy()
    return PriceBaseline(
        rmse=float(root_mean_squared_error(truth, predicted)),
        mae=float(mean_absolute_error(truth, predicted)),
        mean_rmse=float(root_mean_squared_error(truth, mean)),
        mean_mae=float(mean_absolute_error(truth, mean)),
        train_products=train.height,
        test_products=test.height,
        price_range=price_range,
    )


def image_baseline(train: Photos, train_labels: np.ndarray, test: Photos, test_labels: np.ndarray) -> ImageBaseline:
    """Multinomial logistic regression on standardised pixels (which lets L-BFGS converge)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
    model.fit(_flat(train), train_labels)
    majority = np.bincount(train_labels).argmax()
    return ImageBaseline(
        accuracy=accuracy(test_labels, model.predict(_flat(test))),
        majority_rate=accuracy(test_labels, np.full_like(test_labels, majority)),
        train_photos=len(train_labels),
        test_photos=len(test_labels),
        pixel_size=int(train.pixels.shape[-1]),
        classes=int(len(np.unique(np.concatenate([train_labels, test_labels])))),
    )


def run_baselines(
    tables: CleanTables,
    image_dir: Path | None,
    *,
    seed: int = 0,
    price_range: tuple[float, float] = DEFAULT_PRICE_RANGE,
    pixel_size: int = DEFAULT_PIXEL_SIZE,
    progress: bool = True,
) -> Baselines:
    """Both baselines on the product-level split of ``tables`` (the image one when photos are given)."""
    if tables.cleaned.products.height < MIN_PRODUCTS:
        raise FbmlError(f"the baselines need at least {MIN_PRODUCTS} clean products, "
                        f"there are {tables.cleaned.products.height} (no clean products to split)")
    check_photo_folder(image_dir)
    splits = split_tables(tables, seed=seed)
    price = price_baseline(splits.products.train, splits.products.test, price_range=price_range)
    if image_dir is None or splits.images is None:
        return Baselines(price, None, seed)
    codec = label_codec(tables.cleaned.products["category"])
    photos = [
        load_photos(frame, image_dir, size=pixel_size, progress=progress)
        for frame in (splits.images.train, splits.images.test)
    ]
    labels = [
        codec.encode(frame["category"])[loaded.rows]
        for frame, loaded in zip((splits.images.train, splits.images.test), photos, strict=True)
    ]
    return Baselines(price, image_baseline(photos[0], labels[0], photos[1], labels[1]), seed)


def _in_price_range(frame: pl.DataFrame, price_range: tuple[float, float]) -> pl.DataFrame:
    low, high = price_range
    return frame.filter((pl.col("price") > low) & (pl.col("price") < high))


def _flat(photos: Photos) -> np.ndarray:
    return photos.pixels.reshape(len(photos.pixels), -1).astype(np.float32) / 255.0
