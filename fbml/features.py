"""The frozen-backbone cache: the frozen stages' output computed once, the rest trained on it.

Frozen stages do not change during training, so with deterministic (evaluation) transforms their
output for a photo is the same every epoch. Caching it turns each epoch's forward pass through the
early ResNet stages into a memory read. The price: no augmentation on those photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from fbml.models import CombinedClassifier, ImageClassifier, ModelOutput


@attrs.frozen
class FeatureBatch:
    """Cached frozen-stage features with labels and manifest rows."""

    features: Tensor
    labels: Tensor
    rows: Tensor

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return (self.features,)


@attrs.frozen
class FeatureProductBatch:
    """Cached image features and token ids of the same products."""

    features: Tensor
    tokens: Tensor
    labels: Tensor
    rows: Tensor

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        return (self.features, self.tokens)


class FeatureDataset(Dataset):
    """Rows of a feature array (optionally with token ids), their labels and manifest rows."""

    def __init__(
        self, features: np.ndarray, labels: np.ndarray, rows: np.ndarray, tokens: np.ndarray | None = None
    ) -> None:
        self.features = features
        self.labels = np.asarray(labels, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: Sequence[int]) -> FeatureBatch | FeatureProductBatch:
        """One batch by fancy indexing (no per-item tensors)."""
        chosen = np.sort(np.asarray(indices))
        features = torch.from_numpy(np.asarray(self.features[chosen], dtype=np.float32))
        labels, rows = torch.from_numpy(self.labels[chosen]), torch.from_numpy(self.rows[chosen])
        if self.tokens is None:
            return FeatureBatch(features, labels, rows)
        return FeatureProductBatch(features, torch.from_numpy(self.tokens[chosen]), labels, rows)


class FromFeatures(nn.Module):
    """A model that starts from cached frozen-stage features: the image or the combined classifier."""

    def __init__(self, model: ImageClassifier | CombinedClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: Tensor, *tokens: Tensor) -> ModelOutput:
        return self.model.forward_features(features, *tokens)


def frozen_features(
    model: ImageClassifier,
    pixels: np.ndarray,
    transform: Callable[[Tensor], Tensor],
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """The frozen stages' output (float16) for every photo of ``pixels`` (uint8, N x 3 x S x S)."""
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(pixels), batch_size), desc="frozen features", disable=not progress):
            batch = torch.from_numpy(np.array(pixels[start : start + batch_size]))
            parts.append(model.frozen_features(transform(batch)).to(torch.float16).numpy())
    return np.concatenate(parts) if parts else np.zeros((0,), dtype=np.float16)
