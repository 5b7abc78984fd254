"""The torch runtime's one step: a network run on numpy inputs, numpy out (the rest of inference is numpy).

Imported only where a torch network runs, so that serving with ONNX Runtime never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fbml.modeling.inference import FrozenFeatures
from fbml.modeling.models import CombinedClassifier, ImageClassifier, ModelOutput, weights_digest

Shared = Callable[[Hashable, Callable[[], Any]], Any]


def network_outputs(network: nn.Module, images: np.ndarray | None, tokens: np.ndarray | None, shared: Shared,
                    frozen: FrozenFeatures | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A torch network's logits and embeddings (float32) of a batch, under ``inference_mode``, on the device
    its weights are on. An image branch's frozen backbone runs once per batch and backbone module (``shared``),
    however many networks share it (a bundle's image and combined networks do: ``fbml.bundle.store`` loads
    their backbone once); not at all when ``frozen`` holds its output (computed by the same frozen weights)."""
    device = next(network.parameters()).device
    with torch.inference_mode():
        output = _output(network, images, tokens, shared, frozen, device)
        return output.logits.float().cpu().numpy(), output.embedding.float().cpu().numpy()


def _output(network: nn.Module, images: np.ndarray | None, tokens: np.ndarray | None, shared: Shared,
            frozen: FrozenFeatures | None, device: torch.device) -> ModelOutput:  # fmt: skip
    token_tensor = None if tokens is None else torch.from_numpy(tokens).to(device)
    if isinstance(network, ImageClassifier | CombinedClassifier):
        assert images is not None
        branch = network if isinstance(network, ImageClassifier) else network.image
        features: Tensor = shared(("frozen features", id(branch.frozen)), lambda: _frozen_output(branch, images, frozen, device))
        if isinstance(network, ImageClassifier):
            return network.forward_features(features)
        assert token_tensor is not None
        return network.forward_features(features, token_tensor)
    assert token_tensor is not None  # the text CNN
    output: ModelOutput = network(token_tensor)
    return output


def _frozen_output(branch: ImageClassifier, images: np.ndarray, frozen: FrozenFeatures | None, device: torch.device) -> Tensor:
    """The branch's frozen stages' output of the batch: ``frozen``'s values when these frozen weights computed
    them, else computed from the photos."""
    if frozen is not None and frozen.computed_by(branch.frozen, weights_digest):
        return torch.from_numpy(np.asarray(frozen.values, dtype=np.float32)).to(device)
    features: Tensor = branch.frozen_features(torch.from_numpy(images).to(device))
    return features


def set_threads(threads: int) -> None:
    """torch's intra-op threads for this process."""
    torch.set_num_threads(threads)
