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
# Where an ONNX model's protobuf can hold tensors: message -> {field number: message}, from onnx.proto (ModelProto,
# TrainingInfoProto, GraphProto, NodeProto, FunctionProto, AttributeProto, SparseTensorProto).
TENSOR_FIELDS = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "function": {7: "node", 11: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
EXTERNAL_DATA, DATA_LOCATION, EXTERNAL = 13, 14, 1  # TensorProto.external_data, .data_location, DataLocation.EXTERNAL
MAX_NESTING = 64


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
    """A session over ``graph`` on the CPU; ``FbmlError`` when the graph is not what a ``kind`` network exports,
    or names tensor data outside itself (ONNX Runtime would read it from a path relative to the working folder)."""
    import onnxruntime

    if graph.inputs != INPUTS[kind] or graph.outputs != OUTPUTS:
        raise FbmlError(f"the {kind} ONNX graph takes {graph.inputs} -> {graph.outputs}, not {INPUTS[kind]} -> {OUTPUTS}")
    if names_external_data(graph.content):
        raise FbmlError(f"the {kind} ONNX graph keeps tensor data in other files; a bundle's graphs must hold their own")
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
    model = OnnxModel(kind, session, shape[1])
    _check_finite_answer(model, {node.name: node.shape for node in session.get_inputs()})
    return model


def _check_finite_answer(model: OnnxModel, shapes: Mapping[str, Any]) -> None:
    """``FbmlError`` unless the graph answers one blank input (zero pixels, padding tokens) with finite logits and
    embedding: weights that are NaN or infinite show there."""
    inputs = {}
    for name, shape in shapes.items():
        sizes = [1, *shape[1:]]
        if not all(isinstance(size, int) and 0 < size <= 4096 for size in sizes):
            raise FbmlError(f"the {model.kind} ONNX graph's input {name} has shape {shape}, not a batch of fixed-size items")
        inputs[name] = np.zeros(sizes, np.float32 if name == "images" else np.int64)
    try:
        outputs = model.run(inputs)
    except FbmlError:
        raise
    except Exception as error:  # onnxruntime raises its own kinds for a graph that cannot run
        raise FbmlError(f"the {model.kind} ONNX graph fails on a blank input ({type(error).__name__})") from None
    if not all(bool(np.isfinite(output).all()) for output in outputs):
        raise FbmlError(f"the {model.kind} ONNX graph answers a blank input with values that are not finite (NaN or infinite weights)")


def names_external_data(content: bytes) -> bool:
    """Whether an ONNX model (protobuf bytes) has a tensor whose data lives outside it (``external_data`` or
    ``data_location = EXTERNAL``), anywhere: initializers, node attributes, subgraphs, functions, training info.
    Read from the wire format, so that serving needs neither the ``onnx`` package nor its import time;
    ``FbmlError`` for bytes that are not protobuf or nest deeper than ``MAX_NESTING``."""
    pending = [(memoryview(content), "model", 0)]
    while pending:
        data, message, depth = pending.pop()
        if depth > MAX_NESTING:
            raise FbmlError(f"the ONNX graph nests deeper than {MAX_NESTING} levels")
        for number, wire_type, value in _fields(data):
            if message == "tensor":
                if number == EXTERNAL_DATA or (number == DATA_LOCATION and wire_type == 0 and value == EXTERNAL):
                    return True
            elif wire_type == 2 and number in TENSOR_FIELDS[message]:
                assert isinstance(value, memoryview)
                pending.append((value, TENSOR_FIELDS[message][number], depth + 1))
    return False


def _fields(data: memoryview) -> list[tuple[int, int, int | memoryview]]:
    """The (field number, wire type, value) of each field of one protobuf message: a varint's value, a
    length-delimited field's bytes, a fixed-width field's 0."""
    fields: list[tuple[int, int, int | memoryview]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
            fields.append((number, 0, value))
        elif wire_type == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise FbmlError("the ONNX graph is not a protobuf message (a field runs past its end)")
            fields.append((number, 2, data[position : position + length]))
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
            fields.append((number, wire_type, 0))
        else:
            raise FbmlError(f"the ONNX graph is not a protobuf message (wire type {wire_type})")
    if position != len(data):
        raise FbmlError("the ONNX graph is not a protobuf message (a field runs past its end)")
    return fields


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise FbmlError("the ONNX graph is not a protobuf message (a broken varint)")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return value, position
