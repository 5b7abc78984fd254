"""The Open Inference Protocol (KServe v2 REST) over the same prediction path as ``/predict/*``.

``oip_router()`` answers ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``,
``/v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer``, a model being a predictor role
(``contracts.oip``). An inference request's ``n`` listings go one by one through the role's micro-batcher
(``Service.predictors``), as ``n`` requests to ``/predict/*`` would, each text under the same rules and each
photo decoded the same way: the answers are theirs. Bodies are JSON, or a JSON head followed by binary
tensors (the binary data extension: ``Inference-Header-Content-Length``); outputs come back as JSON, or binary
where asked (``binary_data_output``, or an output's ``binary_data``). Refusals are ``{"error": "..."}``.
These paths are left out of the OpenAPI document: the protocol has its own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
from contracts.bundle import Role
from contracts.oip import (
    BINARY_DATA_SIZE,
    BINARY_EXTENSION,
    BYTES,
    FP32,
    HEADER_LENGTH,
    InferenceRequest,
    InferenceResponse,
    Liveness,
    ModelMetadata,
    OipError,
    Readiness,
    RequestInput,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)
from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath, SkipValidation

from fbml import __version__
from fbml.bundle.predictions import Prediction
from fbml.errors import one_line
from fbml.serving.errors import ApiError
from fbml.serving.service import Example, Service

Served = SkipValidation[Service]
PREFIX = "/v2"
OUTPUTS = ("category", "probabilities")
MAX_LISTINGS = 256
"""The most listings one inference request may hold."""
_LENGTH = struct.Struct("<I")


def oip_router() -> Router:
    """The protocol's handlers under ``/v2``, refusing in its own shape."""
    handlers = [
        get("/", sync_to_thread=False)(server_metadata),
        get("/health/live", sync_to_thread=False)(server_live),
        get("/health/ready", sync_to_thread=False)(server_ready),
        get("/models/{name:str}", sync_to_thread=False)(model_metadata),
        get("/models/{name:str}/ready", sync_to_thread=False)(model_ready),
        post("/models/{name:str}/infer", status_code=200)(infer),
    ]
    return Router(PREFIX, route_handlers=handlers, include_in_schema=False,
                  exception_handlers={ApiError: _api_error, HTTPException: _http_error})  # fmt: skip


def server_metadata() -> ServerMetadata:
    """The server's name, version and the protocol extensions it speaks."""
    return ServerMetadata("fbml", __version__, [BINARY_EXTENSION])


def server_live() -> Liveness:
    """The process answers."""
    return Liveness(True)


def server_ready(service: Served) -> Response[Readiness]:
    """200 once every model has answered its warm-up request, 503 before."""
    warm = service.warm.is_set()
    return Response(Readiness(warm), status_code=200 if warm else 503)


def model_metadata(name: FromPath[str], service: Served) -> ModelMetadata:
    """The model's inputs and outputs; its class names (``parameters.classes``, a JSON array)."""
    role = _role(name, service)
    inputs = [TensorMetadata(field, BYTES, [-1]) for field, reads in (("text", role.reads_text), ("image", role.reads_photos)) if reads]
    classes = service.bundle.codec.classes
    outputs = [TensorMetadata("category", BYTES, [-1]), TensorMetadata("probabilities", FP32, [-1, len(classes)])]
    return ModelMetadata(role.value, [service.model_version], "fbml", inputs, outputs, {"classes": json.dumps(list(classes))})


def model_ready(name: FromPath[str], service: Served) -> Response[Readiness]:
    """200 once the model's predictor has answered its warm-up request, 503 before (404: no such model)."""
    _role(name, service)
    warm = service.warm.is_set()
    return Response(Readiness(warm), status_code=200 if warm else 503)


async def infer(name: FromPath[str], request: Request[Any, Any, Any], service: Served) -> Response[bytes]:
    """Each listing of the request through the role's predictor, as ``/predict/*`` answers it."""
    role = _role(name, service)
    head, binary = _split(await request.body(), request.headers.get(HEADER_LENGTH.lower()))
    parsed = _decoded(head)
    columns = _columns(parsed.inputs, binary, role)
    count = len(next(iter(columns.values())))
    texts = [_text(value, f"text[{row}]") for row, value in enumerate(columns["text"])] if role.reads_text else [None] * count
    for row, text in enumerate(texts):
        if text is not None:
            service.text.check(text, f"text[{row}]")
    images: Sequence[Any] = [None] * count
    if role.reads_photos:
        images = await asyncio.gather(*(service.prepared_photo(_photo(data), f"image[{row}]") for row, data in enumerate(columns["image"])))
    found = await asyncio.gather(*(service.predictors[role](Example(image, text)) for image, text in zip(images, texts, strict=True)))
    return _response(role, parsed, list(found), service)


def _role(name: str, service: Service) -> Role:
    """The served predictor role ``name`` (404 otherwise)."""
    if name not in {role.value for role in service.bundle.predictors}:
        served = ", ".join(sorted(service.bundle.predictors)) or "none"
        raise ApiError(404, f"no model {name!r} (served: {served})")
    return Role(name)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON head and the binary part of a body (all JSON without the extension's header)."""
    if header_length is None:
        return body, b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise ApiError(400, f"{HEADER_LENGTH} must be a length within the body ({len(body)} bytes), got {header_length!r}")
    return body[: int(header_length)], body[int(header_length) :]


def _decoded(head: bytes) -> InferenceRequest:
    try:
        return msgspec.json.decode(head, type=InferenceRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ApiError(400, f"not an inference request: {error}") from None


def _columns(inputs: list[RequestInput], binary: bytes, role: Role) -> dict[str, list[bytes | str]]:
    """Each input's elements, by name (the role's inputs exactly, as many of each; the binary part read in input order)."""
    wanted = [field for field, reads in (("text", role.reads_text), ("image", role.reads_photos)) if reads]
    given = [tensor.name for tensor in inputs]
    if sorted(given) != sorted(wanted):
        raise ApiError(400, f"model {role.value} takes the inputs {', '.join(wanted)}; got {', '.join(given) or 'none'}")
    columns: dict[str, list[bytes | str]] = {}
    offset = 0
    for tensor in inputs:
        if tensor.datatype != BYTES:
            raise ApiError(400, f"input {tensor.name} must be {BYTES}, got {tensor.datatype}")
        count = _count(tensor)
        size = (tensor.parameters or {}).get(BINARY_DATA_SIZE)
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ApiError(400, f"input {tensor.name}: {BINARY_DATA_SIZE} {size!r} is past the binary data")
            columns[tensor.name] = list(_binary_elements(binary[offset : offset + size], tensor.name))
            offset += size
        else:
            columns[tensor.name] = [_json_element(value, tensor.name) for value in _flat(tensor.data, tensor.name)]
        if len(columns[tensor.name]) != count:
            raise ApiError(400, f"input {tensor.name} has {len(columns[tensor.name])} elements for the shape {tensor.shape}")
    if offset != len(binary):
        raise ApiError(400, f"{len(binary) - offset} bytes of binary data belong to no input")
    counts = {len(column) for column in columns.values()}
    if len(counts) != 1:
        raise ApiError(400, "the inputs must hold as many elements each: one per listing")
    return columns


def _count(tensor: RequestInput) -> int:
    """The listings of a ``[n]`` or ``[n, 1]`` tensor (400 for another shape, or none, or over ``MAX_LISTINGS``)."""
    shape = tensor.shape
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or not 1 <= shape[0] <= MAX_LISTINGS:
        raise ApiError(400, f"input {tensor.name} must have the shape [n] or [n, 1] with 1 <= n <= {MAX_LISTINGS}, got {shape}")
    return shape[0]


def _binary_elements(data: bytes, name: str) -> list[bytes]:
    """A BYTES tensor's elements in the binary format: each a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise ApiError(400, f"input {name}: its binary data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise ApiError(400, f"input {name}: an element of {length} bytes runs past its binary data")
        elements.append(data[offset : offset + length])
        offset += length
    return elements


def _flat(data: Any, name: str) -> list[Any]:
    """JSON ``data``, flattened (row-major) when nested."""
    if not isinstance(data, list):
        raise ApiError(400, f"input {name} needs its data: a JSON array, or binary data")
    return [value for item in data for value in (_flat(item, name) if isinstance(item, list) else [item])]


def _json_element(value: Any, name: str) -> bytes | str:
    """A JSON element: a text as given, a photo from base64."""
    if not isinstance(value, str):
        raise ApiError(400, f"input {name}: every element must be a string, got {type(value).__name__}")
    if name != "image":
        return value
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ApiError(400, "input image: a photo in JSON must be base64 (or send it as binary data)") from None


def _photo(value: bytes | str) -> bytes:
    """A photo's bytes (JSON's base64 is decoded already)."""
    return value.encode() if isinstance(value, str) else value


def _text(value: bytes | str, field: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{field} is not UTF-8 text", field) from None


def _response(role: Role, request: InferenceRequest, found: list[Prediction], service: Service) -> Response[bytes]:
    """The outputs asked for (all by default), JSON or binary as asked."""
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    asked = {output.name: bool((output.parameters or {}).get("binary_data", binary_default)) for output in request.outputs or []}
    unknown = sorted(set(asked) - set(OUTPUTS))
    if unknown:
        raise ApiError(400, f"no output {unknown[0]!r} (outputs: {', '.join(OUTPUTS)})")
    wanted = asked or dict.fromkeys(OUTPUTS, binary_default)
    classes = service.bundle.codec.classes
    probabilities = np.array([[prediction.probabilities[name] for name in classes] for prediction in found], dtype=np.float32)
    categories = [prediction.category for prediction in found]
    outputs, buffers = [], []
    for name, binary in wanted.items():
        shape, datatype = ([len(found)], BYTES) if name == "category" else ([len(found), len(classes)], FP32)
        if not binary:
            data = categories if name == "category" else probabilities.ravel().tolist()
            outputs.append(ResponseOutput(name, shape, datatype, data=data))
            continue
        raw = b"".join(_LENGTH.pack(len(encoded)) + encoded for encoded in (c.encode() for c in categories)) if name == "category" \
            else probabilities.astype("<f4").tobytes()  # fmt: skip
        buffers.append(raw)
        outputs.append(ResponseOutput(name, shape, datatype, parameters={BINARY_DATA_SIZE: len(raw)}))
    head = msgspec.json.encode(InferenceResponse(role.value, outputs, service.model_version, request.id))
    if not buffers:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(buffers), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(head))})


def _api_error(_request: Request[Any, Any, Any], error: ApiError) -> Response[OipError]:
    return Response(OipError(error.detail), status_code=error.status_code, headers=getattr(error, "headers", None))


def _http_error(_request: Request[Any, Any, Any], error: HTTPException) -> Response[OipError]:
    return Response(OipError(one_line(error.detail)), status_code=error.status_code, headers=error.headers)
