"""The torch runtime's one step: a network run on numpy inputs, numpy out (the rest of serving is numpy).

Imported only where a torch network runs, so that serving with ONNX Runtime never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def network_outputs(network: Any, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A torch network's logits and embeddings (float32) of a batch, under ``inference_mode``."""
    with torch.inference_mode():
        output = network(*(torch.from_numpy(array) for array in inputs))
        return output.logits.float().numpy(), output.embedding.float().numpy()


def set_threads(threads: int) -> None:
    """torch's intra-op threads for this process."""
    torch.set_num_threads(threads)
