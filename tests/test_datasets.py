"""Torch datasets, samples, batches and transforms: declared dtypes and shapes for any input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from fbml.errors import FbmlError
from fbml.modeling.backbones import IMAGENET_MEAN, IMAGENET_STD
from fbml.modeling.datasets import (
    TRAIN_CROP_SCALE,
    Augmentation,
    ImageBatch,
    ImageDataset,
    ImageSample,
    ProductBatch,
    ProductDataset,
    ProductSample,
    TextBatch,
    TextDataset,
    TextSample,
    eval_transform,
    train_transform,
)
from fbml.tables.clean import clean_tables
from fbml.text.labels import label_codec
from fbml.text.vocabulary import build_vocabulary, product_text, tokens
from fbml.vision.cache import ImageCache, build_image_cache
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader
from torchvision.transforms import v2

CACHE_SIZE = 12
CACHED_ROWS = 40
MANIFEST_ROWS = 60
UNSCALED = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def manifest(sample) -> pl.DataFrame:
    """The first rows of the sample marketplace's photo manifest."""
    return clean_tables(sample.products_csv, sample.images_csv).manifest.images.head(MANIFEST_ROWS)


@pytest.fixture(scope="module")
def cache(manifest: pl.DataFrame, sample, tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    """A cache of the first ``CACHED_ROWS`` manifest photos (one of them may be unreadable)."""
    cache_dir = tmp_path_factory.mktemp("cache") / "images"
    return build_image_cache(manifest.head(CACHED_ROWS), sample.image_dir, cache_dir, size=CACHE_SIZE, progress=False)


def assert_sample(sample: ImageSample | TextSample | ProductSample, *, size: int, length: int, classes: int) -> None:
    """The declared types: image float32 (3, size, size), tokens int64 (length,), label in [0, classes)."""
    assert isinstance(sample.label, int) and 0 <= sample.label < classes and isinstance(sample.row, int)
    if not isinstance(sample, TextSample):
        assert sample.image.dtype == torch.float32 and sample.image.shape == (3, size, size)
    if not isinstance(sample, ImageSample):
        assert sample.tokens.dtype == torch.int64 and sample.tokens.shape == (length,)


@settings(max_examples=30, deadline=None)
@given(
    count=st.integers(1, 6),
    stored=st.sampled_from([4, 7]),
    size=st.sampled_from([4, 6]),
    length=st.integers(1, 5),
    classes=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_datasets_and_batches_have_the_declared_dtypes_and_shapes(
    count: int, stored: int, size: int, length: int, classes: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (count, 3, stored, stored), dtype=np.uint8)
    token_ids = rng.integers(0, 50, (count, length))
    labels, rows = rng.integers(0, classes, count), rng.permutation(count) * 3
    datasets = [
        (ImageBatch, ImageDataset(pixels, labels, rows, train_transform(size)), size),
        (ImageBatch, ImageDataset(pixels, labels, rows, eval_transform(stored)), stored),  # photos stored at the model's size
        (TextBatch, TextDataset(token_ids, labels, rows), size),
        (ProductBatch, ProductDataset(pixels, torch.from_numpy(token_ids), labels, rows, train_transform(size)), size),
    ]
    for batch_type, dataset, side in datasets:
        samples = [dataset[index] for index in range(len(dataset))]
        for sample in samples:
            assert_sample(sample, size=side, length=length, classes=classes)
        assert [sample.row for sample in samples] == rows.tolist()
        batch = batch_type.collate(samples)
        assert batch.labels.dtype == batch.rows.dtype == torch.int64 and batch.labels.shape == (count,)
        assert batch.labels.tolist() == labels.tolist() and batch.rows.tolist() == rows.tolist()
        if batch_type is not TextBatch:
            assert batch.images.dtype == torch.float32 and batch.images.shape == (count, 3, side, side)
        if batch_type is not ImageBatch:
            assert batch.tokens.dtype == torch.int64 and batch.tokens.shape == (count, length)
            np.testing.assert_array_equal(batch.tokens.numpy(), token_ids)


@settings(max_examples=20, deadline=None)
@given(size=st.integers(1, 16), batch=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_eval_transform_is_deterministic(size: int, batch: int, seed: int) -> None:
    shape = (3, size, size) if batch == 0 else (batch, 3, size, size)
    image = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    transform = eval_transform(size)
    first, second = transform(image), transform(image)
    assert first.dtype == torch.float32 and first.shape == shape
    assert torch.equal(first, second)
    with pytest.raises(FbmlError, match=f"expected photos letterboxed to {size + 1} x {size + 1}"):
        eval_transform(size + 1)(image)


def test_training_reads_each_photo_as_the_prediction_path_prepares_it(manifest: pl.DataFrame, cache: ImageCache, sample) -> None:
    """A photo of the decoded-photo cache (what training and evaluation read) through the evaluation transform
    equals the same file prepared by the prediction path (``Preparation.prepared``): decoding, letterbox and
    normalisation are one implementation."""
    from fbml.vision.photos import PhotoLimits, Preparation

    preparation = Preparation(CACHE_SIZE, IMAGENET_MEAN, IMAGENET_STD)
    transform = eval_transform(CACHE_SIZE, IMAGENET_MEAN, IMAGENET_STD)
    files = {path.stem: path for path in sample.image_dir.iterdir()}
    for image_id, row in zip(cache.image_ids, range(len(cache.image_ids)), strict=True):
        trained = transform(torch.from_numpy(np.array(cache.pixels[row]))).numpy()
        served = preparation.prepared(files[image_id], limits=PhotoLimits(max_pixels=10**9, decode_seconds=60)).pixels
        np.testing.assert_array_equal(trained, served, err_msg=image_id)


def test_eval_transform_at_the_stored_size_only_normalises() -> None:
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    expected = (image.float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(eval_transform(8)(image), expected)


def test_train_transform_varies_with_the_rng() -> None:
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8))
    transform = train_transform(24)

    def seeded(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return transform(image)

    outputs = [seeded(seed) for seed in range(4)]
    assert all(output.dtype == torch.float32 and output.shape == (3, 24, 24) for output in outputs)
    assert torch.equal(seeded(2), outputs[2])
    assert any(not torch.equal(outputs[0], output) for output in outputs[1:])


@pytest.mark.parametrize("scale", [TRAIN_CROP_SCALE, (2.0, 3.0)], ids=["crop", "fallback"])  # (2, 3): no crop fits
@pytest.mark.parametrize("shape", [(3, 20, 28), (3, 28, 20), (3, 20, 22), (3, 16, 16)])
def test_augmentation_crops_and_flips_as_torchvision_does(shape: tuple[int, int, int], scale: tuple[float, float]) -> None:
    """Without jitter and with no generator lent, ``Augmentation`` draws from torch's global generator what
    torchvision's RandomResizedCrop and RandomHorizontalFlip draw, in the same order, and makes the same image."""
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8))
    ours = Augmentation(12, crop_scale=scale, jitter=0.0)
    theirs = v2.Compose([v2.RandomResizedCrop(12, scale=scale, antialias=True), v2.RandomHorizontalFlip()])
    for seed in range(12):
        torch.manual_seed(seed)
        augmented = ours(image)
        torch.manual_seed(seed)
        assert torch.equal(augmented, theirs(image)), seed


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dataloader_over_the_sample_yields_image_batches(manifest: pl.DataFrame, cache: ImageCache, workers: int) -> None:
    cached = manifest.filter(pl.Series(cache.cached(manifest["image_id"])))
    labels = label_codec(manifest["category"]).encode(cached["category"])
    dataset = ImageDataset(cache.pixels, labels, np.arange(cached.height), train_transform(8),
                           positions=cache.rows_for(cached["image_id"]))
    loader = DataLoader(dataset, batch_size=16, shuffle=True, num_workers=workers, collate_fn=ImageBatch.collate)
    batches = list(loader)
    assert all(isinstance(batch, ImageBatch) and batch.images.shape[1:] == (3, 8, 8) for batch in batches)
    seen = torch.cat([batch.rows for batch in batches]).sort().values.tolist()
    assert seen == list(range(cached.height))
    assert sorted(torch.cat([batch.labels for batch in batches]).tolist()) == sorted(labels.tolist())


def test_a_dataloader_over_encoded_product_text_yields_text_batches(sample) -> None:
    products = clean_tables(sample.products_csv).cleaned.products
    texts = products.select(product_text(pl.col("product_name"), pl.col("product_description")).alias("text"))["text"]
    vocabulary = build_vocabulary(texts.to_frame().select(tokens(pl.col("text"))).to_series())
    dataset = TextDataset(vocabulary.encode_texts(texts, 16), label_codec(products["category"]).encode(products["category"]),
                          np.arange(products.height))
    batch = next(iter(DataLoader(dataset, batch_size=32, collate_fn=TextBatch.collate)))
    assert isinstance(batch, TextBatch) and batch.tokens.shape == (32, 16) and batch.tokens.dtype == torch.int64
    assert batch.rows.tolist() == list(range(32))


PIXELS = np.zeros((2, 3, 4, 4), dtype=np.uint8)
INVALID = {
    "lengths differ": (lambda: ImageDataset(PIXELS, [0, 1], [0], eval_transform(4)), "differ in length"),
    "float pixels": (lambda: ImageDataset(PIXELS.astype(np.float32), [0, 1], [0, 1], eval_transform(4)), "uint8"),
    "grey pixels": (lambda: ImageDataset(PIXELS[:, :1], [0, 1], [0, 1], eval_transform(4)), "uint8 \\(N, 3, H, W\\)"),
    "position out of range": (lambda: ImageDataset(PIXELS, [0], [0], eval_transform(4), positions=[2]), "positions"),
    "negative label": (lambda: TextDataset(np.zeros((2, 3)), [0, -1], [0, 1]), "must not be negative"),
    "1-D tokens": (lambda: TextDataset(np.zeros(2), [0, 1], [0, 1]), "2-D"),
    "tokens and labels differ": (lambda: ProductDataset(PIXELS, np.zeros((3, 2)), [0, 1], [0, 1], eval_transform(4)),
                                 "differ in length"),
}


@pytest.mark.parametrize(("build", "message"), INVALID.values(), ids=INVALID.keys())
def test_inconsistent_dataset_arrays_are_refused(build, message: str) -> None:
    with pytest.raises(FbmlError, match=message):
        build()


