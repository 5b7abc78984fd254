"""ONNX graphs of a bundle's networks, run with ONNX Runtime: the serving runtime that needs no torch.

This module imports neither torch nor anything that does: ``fbml serve --runtime onnx`` loads a
bundle's networks as ``OnnxModel``s. ``fbml.modeling.onnx_export`` makes the graphs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from fbml.errors import FbmlError

INPUTS = {"image-cnn": ("images",), "text-cnn": ("tokens",), "combined-nn": ("images", "tokens")}
OUTPUTS = ("logits", "embedding")


@attrs.frozen(eq=False)
class OnnxGraph:
    """A network as an ONNX graph (dynamic batch), with its opset and input and output names."""

    content: bytes = attrs.field(repr=False)
    opset: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...] = OUTPUTS


@attrs.frozen(eq=False)
class OnnxModel:
    """An ONNX Runtime session over a network's graph: inputs by name, (logits, embedding) out."""

    kind: str
    session: Any = attrs.field(repr=False)
    embedding_dim: int

    def run(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Logits and embeddings (float32) of a batch."""
        missing = [name for name in INPUTS[self.kind] if name not in inputs]
        if missing:
            raise FbmlError(f"the {self.kind} model needs {', '.join(missing)}")
        logits, embedding = self.session.run(list(OUTPUTS), {name: inputs[name] for name in INPUTS[self.kind]})
        return np.asarray(logits, dtype=np.float32), np.asarray(embedding, dtype=np.float32)


def onnx_model(kind: str, graph: OnnxGraph, *, threads: int | None = None) -> OnnxModel:
    """A session over ``graph`` on the CPU; ``FbmlError`` when the graph is not what a ``kind`` network exports."""
    import onnxruntime

    if graph.inputs != INPUTS[kind] or graph.outputs != OUTPUTS:
        raise FbmlError(f"the {kind} ONNX graph takes {graph.inputs} -> {graph.outputs}, not {INPUTS[kind]} -> {OUTPUTS}")
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = onnxruntime.InferenceSession(graph.content, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own kinds for a graph it cannot load
        raise FbmlError(f"the {kind} ONNX graph cannot be loaded ({type(error).__name__})") from None
    names = tuple(node.name for node in session.get_inputs())
    shape = session.get_outputs()[1].shape
    if names != INPUTS[kind] or len(shape) != 2 or not isinstance(shape[1], int):
        raise FbmlError(f"the {kind} ONNX graph's inputs {names} or embedding shape {shape} do not fit a {kind} network")
    return OnnxModel(kind, session, shape[1])
