"""Shapes of the Open Inference Protocol (KServe v2 REST; Triton, KServe and MLServer speak it) as fbml serves it.

A model is a predictor role (``text``, ``image``, ``combined``). Its inputs are ``text`` and/or ``image``, BYTES
tensors of ``n`` elements (shape ``[n]`` or ``[n, 1]``); its outputs ``category`` (BYTES ``[n]``) and
``probabilities`` (FP32 ``[n, classes]``, the classes in the order of the model's ``classes`` parameter).
"""

from __future__ import annotations

from typing import Any

import msgspec

BYTES = "BYTES"
FP32 = "FP32"
HEADER_LENGTH = "Inference-Header-Content-Length"
"""The binary data extension's header: the length of the JSON head of a body followed by binary tensors."""
BINARY_DATA_SIZE = "binary_data_size"
BINARY_EXTENSION = "binary_tensor_data"


class RequestInput(msgspec.Struct, forbid_unknown_fields=True):
    """An input tensor: JSON ``data`` (strings; photos base64), or ``parameters.binary_data_size`` bytes of the binary part."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(msgspec.Struct, forbid_unknown_fields=True):
    """An output asked for; ``parameters.binary_data`` true: in the binary part."""

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v2/models/{name}/infer``: the inputs, and the outputs wanted (default: all)."""

    inputs: list[RequestInput]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestOutput] | None = None


class ResponseOutput(msgspec.Struct, omit_defaults=True):
    """An output tensor: its JSON ``data``, or (``parameters.binary_data_size``) its bytes in the binary part."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(msgspec.Struct, omit_defaults=True):
    """The answer to an inference request."""

    model_name: str
    outputs: list[ResponseOutput]
    model_version: str | None = None
    id: str | None = None


class TensorMetadata(msgspec.Struct):
    """A tensor's name, datatype and shape (-1: any size)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(msgspec.Struct):
    """``GET /v2/models/{name}``; ``parameters.classes``: the class names, a JSON array in a string."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str]


class ServerMetadata(msgspec.Struct):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class Liveness(msgspec.Struct):
    live: bool


class Readiness(msgspec.Struct):
    ready: bool


class OipError(msgspec.Struct):
    """Any refusal on the protocol's paths."""

    error: str
