"""Torch datasets over decoded photos (an `ImageCache`) and token ids, with typed samples and batches.

Items do no file I/O: an image is a row of a uint8 (N, 3, S, S) array, usually the cache's
memory map, turned into a normalised float32 tensor by a transform (``eval_transform``, or
``train_transform``, which augments from the generator training lends it). Every item
carries ``row``, its row in the manifest it was built from, for per-product evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from fbml.errors import FbmlError
from fbml.modeling.backbones import IMAGENET_MEAN, IMAGENET_STD
from fbml.modeling.randomness import Drawing
from fbml.vision.photos import normalised

TRAIN_CROP_SCALE = (0.7, 1.0)
TRAIN_JITTER = 0.1

Transform = Callable[[Tensor], Tensor]
Stats = tuple[float, ...]


@attrs.frozen(eq=False)
class ImageSample:
    """One photo: ``image`` float32 (3, H, W), its class index and manifest row."""

    image: Tensor
    label: int
    row: int


@attrs.frozen(eq=False)
class TextSample:
    """One text: ``tokens`` int64 (L,), its class index and manifest row."""

    tokens: Tensor
    label: int
    row: int


@attrs.frozen(eq=False)
class ProductSample:
    """One photo with its product's text."""

    image: Tensor
    tokens: Tensor
    label: int
    row: int


@attrs.frozen(eq=False)
class ImageBatch:
    """``images`` float32 (B, 3, H, W), ``labels`` and ``rows`` int64 (B,)."""

    images: Tensor
    labels: Tensor
    rows: Tensor

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        """The image model's arguments."""
        return (self.images,)

    @classmethod
    def collate(cls, samples: Sequence[ImageSample]) -> ImageBatch:
        """Stack samples (a ``DataLoader`` ``collate_fn``)."""
        return cls(torch.stack([sample.image for sample in samples]), *_labels_and_rows(samples))


@attrs.frozen(eq=False)
class TextBatch:
    """``tokens`` int64 (B, L), ``labels`` and ``rows`` int64 (B,)."""

    tokens: Tensor
    labels: Tensor
    rows: Tensor

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        """The text model's arguments."""
        return (self.tokens,)

    @classmethod
    def collate(cls, samples: Sequence[TextSample]) -> TextBatch:
        """Stack samples (a ``DataLoader`` ``collate_fn``)."""
        return cls(torch.stack([sample.tokens for sample in samples]), *_labels_and_rows(samples))


@attrs.frozen(eq=False)
class ProductBatch:
    """``images`` float32 (B, 3, H, W), ``tokens`` int64 (B, L), ``labels`` and ``rows`` int64 (B,)."""

    images: Tensor
    tokens: Tensor
    labels: Tensor
    rows: Tensor

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        """The combined model's arguments."""
        return (self.images, self.tokens)

    @classmethod
    def collate(cls, samples: Sequence[ProductSample]) -> ProductBatch:
        """Stack samples (a ``DataLoader`` ``collate_fn``)."""
        images = torch.stack([sample.image for sample in samples])
        return cls(images, torch.stack([sample.tokens for sample in samples]), *_labels_and_rows(samples))


def _labels_and_rows(samples: Sequence[ImageSample | TextSample | ProductSample]) -> tuple[Tensor, Tensor]:
    labels = torch.tensor([sample.label for sample in samples], dtype=torch.int64)
    return labels, torch.tensor([sample.row for sample in samples], dtype=torch.int64)


def _int64_array(values: np.ndarray | Tensor | Sequence[int]) -> np.ndarray:
    """A fresh int64 copy (a tensor is read through ``.numpy``, from any device)."""
    return np.array(values.numpy(force=True) if isinstance(values, Tensor) else values, dtype=np.int64)


def _int64_vector(values: np.ndarray | Tensor | Sequence[int]) -> np.ndarray:
    array = _int64_array(values)
    if array.ndim != 1:
        raise FbmlError(f"expected a 1-D array of integers, got shape {array.shape}")
    return array


def _token_tensor(tokens: np.ndarray | Tensor) -> Tensor:
    array = _int64_array(tokens)
    if array.ndim != 2:
        raise FbmlError(f"token ids must be a 2-D (N, L) array, got shape {array.shape}")
    return torch.from_numpy(array)


def _check_pixels(_instance: object, _attribute: attrs.Attribute[Any], pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise FbmlError(f"pixels must be uint8 (N, 3, H, W), got {pixels.dtype} {pixels.shape}")


def _check_labels(_instance: object, _attribute: attrs.Attribute[Any], labels: np.ndarray) -> None:
    if labels.size and labels.min() < 0:
        raise FbmlError("class indices must not be negative")


def _check_same_length(**arrays: np.ndarray | Tensor) -> None:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise FbmlError(f"dataset arrays differ in length: {lengths}")


def _check_positions(positions: np.ndarray, pixels: np.ndarray) -> None:
    if positions.size and (positions.min() < 0 or positions.max() >= len(pixels)):
        raise FbmlError(f"pixel positions must be in [0, {len(pixels)})")


def _image(pixels: np.ndarray, position: int, transform: Transform) -> Tensor:
    """Pixel row ``position`` (copied out of a read-only memory map) through ``transform``."""
    return transform(torch.from_numpy(np.array(pixels[position])))


@attrs.frozen(eq=False)
class ImageDataset(Dataset[ImageSample]):
    """Item ``i`` is photo ``pixels[positions[i]]`` (default: ``pixels[i]``) with ``labels[i]``, ``rows[i]``."""

    pixels: np.ndarray = attrs.field(validator=_check_pixels)
    labels: np.ndarray = attrs.field(converter=_int64_vector, validator=_check_labels)
    rows: np.ndarray = attrs.field(converter=_int64_vector)
    transform: Transform
    positions: np.ndarray = attrs.field(converter=_int64_vector)

    @positions.default
    def _every_row(self) -> np.ndarray:
        return np.arange(len(self.pixels))

    def __attrs_post_init__(self) -> None:
        _check_same_length(labels=self.labels, rows=self.rows, positions=self.positions)
        _check_positions(self.positions, self.pixels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> ImageSample:
        image = _image(self.pixels, int(self.positions[index]), self.transform)
        return ImageSample(image, int(self.labels[index]), int(self.rows[index]))

    def collate(self, samples: Sequence[ImageSample]) -> ImageBatch:
        """Batch this dataset's samples."""
        return ImageBatch.collate(samples)


@attrs.frozen(eq=False)
class TextDataset(Dataset[TextSample]):
    """Item ``i`` is ``tokens[i]`` (int64 (L,)) with ``labels[i]``, ``rows[i]``."""

    tokens: Tensor = attrs.field(converter=_token_tensor)
    labels: np.ndarray = attrs.field(converter=_int64_vector, validator=_check_labels)
    rows: np.ndarray = attrs.field(converter=_int64_vector)

    def __attrs_post_init__(self) -> None:
        _check_same_length(tokens=self.tokens, labels=self.labels, rows=self.rows)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> TextSample:
        return TextSample(self.tokens[index], int(self.labels[index]), int(self.rows[index]))

    def collate(self, samples: Sequence[TextSample]) -> TextBatch:
        """Batch this dataset's samples."""
        return TextBatch.collate(samples)


@attrs.frozen(eq=False)
class ProductDataset(Dataset[ProductSample]):
    """Item ``i`` is photo ``pixels[positions[i]]`` and ``tokens[i]``, with ``labels[i]``, ``rows[i]``."""

    pixels: np.ndarray = attrs.field(validator=_check_pixels)
    tokens: Tensor = attrs.field(converter=_token_tensor)
    labels: np.ndarray = attrs.field(converter=_int64_vector, validator=_check_labels)
    rows: np.ndarray = attrs.field(converter=_int64_vector)
    transform: Transform
    positions: np.ndarray = attrs.field(converter=_int64_vector)

    @positions.default
    def _every_row(self) -> np.ndarray:
        return np.arange(len(self.pixels))

    def __attrs_post_init__(self) -> None:
        _check_same_length(tokens=self.tokens, labels=self.labels, rows=self.rows, positions=self.positions)
        _check_positions(self.positions, self.pixels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> ProductSample:
        image = _image(self.pixels, int(self.positions[index]), self.transform)
        return ProductSample(image, self.tokens[index], int(self.labels[index]), int(self.rows[index]))

    def collate(self, samples: Sequence[ProductSample]) -> ProductBatch:
        """Batch this dataset's samples."""
        return ProductBatch.collate(samples)


def eval_transform(size: int, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> nn.Module:
    """uint8 (..., 3, size, size) letterboxed photos -> float32, deterministic: normalised as the prediction path
    normalises (``fbml.vision.photos.normalised``, the one implementation)."""
    return Normalised(size, mean, std)


def train_transform(size: int, mean: Stats = IMAGENET_MEAN, std: Stats = IMAGENET_STD) -> nn.Sequential:
    """uint8 (3, H, W) -> float32 (3, size, size), augmented (``Augmentation``: a mild random crop, flip and colour
    jitter), drawing from the generator training lends it, then normalised as ``eval_transform`` normalises."""
    return nn.Sequential(Augmentation(size), Normalised(size, mean, std))


class Normalised(nn.Module):
    """uint8 (..., 3, size, size) -> float32 scaled to [0, 1] and normalised by the backbone's ``mean`` and ``std``:
    ``fbml.vision.photos.normalised`` on the tensor's memory."""

    def __init__(self, size: int, mean: Stats, std: Stats) -> None:
        super().__init__()
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def forward(self, pixels: Tensor) -> Tensor:
        if pixels.shape[-2:] != (self.size, self.size):
            raise FbmlError(f"expected photos letterboxed to {self.size} x {self.size}, got {tuple(pixels.shape[-2:])}")
        return torch.from_numpy(normalised(pixels.numpy(), self.mean, self.std))


class Augmentation(nn.Module, Drawing):
    """uint8 (3, H, W) -> uint8 (3, size, size): torchvision's ``RandomResizedCrop`` (``crop_scale`` of the area,
    aspect 3:4 to 4:3), ``RandomHorizontalFlip`` and ``ColorJitter`` (brightness, contrast and saturation, each by
    a factor within ``jitter`` of 1, in random order), drawing from the generator it is lent (``Drawing``)."""

    def __init__(self, size: int, crop_scale: tuple[float, float] = TRAIN_CROP_SCALE, jitter: float = TRAIN_JITTER) -> None:
        super().__init__()
        self.size = size
        self.crop_scale = crop_scale
        self.jitter = jitter

    def forward(self, image: Tensor) -> Tensor:
        top, left, height, width = _crop_box(image.shape[-2], image.shape[-1], self.crop_scale, self.generator)
        image = v2.functional.resized_crop(image, top, left, height, width, [self.size, self.size], antialias=True)
        if _uniform(self.generator) < 0.5:
            image = v2.functional.horizontal_flip(image)
        low, high = max(0.0, 1.0 - self.jitter), 1.0 + self.jitter
        for index in torch.randperm(len(_JITTERS), generator=self.generator).tolist():
            image = _JITTERS[index](image, _uniform(self.generator, low, high))
        return image


_JITTERS = (v2.functional.adjust_brightness, v2.functional.adjust_contrast, v2.functional.adjust_saturation)
_ASPECTS = (3 / 4, 4 / 3)


def _crop_box(height: int, width: int, scale: tuple[float, float], generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """Top, left, height and width of a random crop as ``RandomResizedCrop`` draws it: up to 10 tries at an area
    within ``scale`` and an aspect within ``_ASPECTS`` that fits, else the largest central crop of an aspect within them."""
    for _ in range(10):
        area = height * width * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, math.log(_ASPECTS[0]), math.log(_ASPECTS[1])))
        crop_width, crop_height = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator))
            return top, left, crop_height, crop_width
    aspect = min(max(width / height, _ASPECTS[0]), _ASPECTS[1])
    crop_width, crop_height = min(width, round(height * aspect)), min(height, round(width / aspect))
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    """A number drawn uniformly from [``low``, ``high``) (from torch's global generator when ``generator`` is None)."""
    return float(torch.empty(()).uniform_(low, high, generator=generator))

