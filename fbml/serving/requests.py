"""Request bodies: an endpoint's body read into its ``contracts.api`` struct, and documented from it.

An endpoint declares a ``RequestShape``: the struct its body decodes into, by media type, and
which fields are alternatives. The same declaration reads a body and generates its OpenAPI
request body (``request_body``), so what is documented is what is enforced.

The bodies are read here, not by Litestar's ``data`` parameter, because Litestar decodes one media
type per handler, spools multipart files over 1 MiB to temporary files, answers 500 to a part or a
JSON body that is not UTF-8, and converts JSON loosely ("5" for an integer). Here JSON is decoded
strictly; a form's fields (kept in memory: text as UTF-8, photos as bytes) are converted with form
text read as numbers where the struct wants one.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs

import attrs
import msgspec
from contracts.api import JSON, LISTING_TEXT, MULTIPART, PHOTO_FORMATS
from litestar import Request
from litestar.openapi.spec import Encoding, OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from fbml.serving.errors import ApiError

MAX_FORM_PARTS = 8

StructT = TypeVar("StructT", bound=msgspec.Struct)


@attrs.frozen
class TextRules:
    """What a listing text must be: at most ``max_chars`` characters, and something a model can read:
    a letter or digit once normalised as training text was (``fbml.text.listings.normalised_texts``)."""

    max_chars: int

    def check(self, value: str, field: str) -> None:
        """422 naming ``field`` unless ``value`` follows the rules."""
        from fbml.text.listings import normalised_texts

        if len(value) > self.max_chars:
            raise ApiError(422, f"{field} is longer than {self.max_chars} characters", field)
        if not re.search("[A-Za-z0-9]", normalised_texts([value])[0]):
            raise ApiError(422, f"{field} is empty: no letter or digit once normalised to ASCII", field)

    def schema(self, description: str | None) -> Schema:
        """The rules as a string schema."""
        return Schema(
            type=OpenAPIType.STRING, min_length=1, max_length=self.max_chars, pattern=readable_pattern(), description=description
        )


@functools.cache
def readable_pattern() -> str:
    """A regular expression found in a text exactly when its normalised form has a letter or digit:
    an ASCII letter or digit, or a character that normalises to some (é, ｋ, ①, ﬁ, ...)."""
    from fbml.tables.cleaning import ascii_equivalents

    codes = sorted(ord(character) for character, ascii in ascii_equivalents().items() if re.search("[A-Za-z0-9]", ascii))
    runs: list[list[int]] = []
    for code in codes:
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "[0-9A-Za-z" + "".join(chr(first) if first == last else f"{chr(first)}-{chr(last)}" for first, last in runs) + "]"


@attrs.frozen
class RequestShape(Generic[StructT]):
    """An endpoint's body: the struct it decodes into for each media type it reads (a subclass of
    ``StructT`` for some), and the ``alternatives``: groups of fields of which exactly one must be given
    (a group is given when any of its fields is)."""

    structs: Mapping[str, type[StructT]]
    alternatives: Sequence[Sequence[str]] = ()

    async def read(self, request: Request[Any, Any, Any], rules: TextRules) -> StructT:
        """The body as its struct: 415 for another media type, 413 past the app's size limit, 400 when
        it is not what its media type says, 422 naming the field that is missing, unknown or unusable."""
        media_type, options = request.content_type
        if media_type not in self.structs:
            raise ApiError(415, f"expected a body of type {' or '.join(self.structs)}, got {media_type or 'none'}")
        struct = self.structs[media_type]
        body = await request.body()
        if media_type == JSON:
            value = _json(body, struct)
        else:
            raw = _multipart_fields(body, options.get("boundary", "")) if media_type == MULTIPART else _urlencoded_fields(body)
            value = _converted(_typed_fields(raw, struct), struct)
        self._check_alternatives(value)
        for name in _listing_texts(struct):
            text = getattr(value, name)
            if isinstance(text, str):
                rules.check(text, name)
        return value

    def request_body(self, rules: TextRules) -> RequestBody:
        """The OpenAPI request body: each media type's struct as a schema, with ``rules`` for its texts."""
        content = {}
        for media_type, struct in self.structs.items():
            schema = _object_schema(struct, rules, self._one_of(struct))
            photos = sorted(_photos(struct)) if media_type == MULTIPART else []
            encoding = {name: Encoding(content_type=", ".join(PHOTO_FORMATS.values())) for name in photos} or None
            content[media_type] = OpenAPIMediaType(schema=schema, encoding=encoding)
        return RequestBody(required=True, content=content)

    def _check_alternatives(self, value: StructT) -> None:
        if not self.alternatives:
            return
        given = [group for group in self.alternatives if any(getattr(value, name, msgspec.UNSET) is not msgspec.UNSET for name in group)]
        choices = "; ".join(" and/or ".join(group) for group in self.alternatives)
        if not given:
            raise ApiError(422, f"give one of: {choices}")
        if len(given) > 1:
            raise ApiError(422, f"give only one of: {choices}", given[0][0])

    def _one_of(self, struct: type[msgspec.Struct]) -> list[Schema] | None:
        """Exactly one group given, as a schema: each branch is a closed object of one group's fields (one at
        least given) and the fields of no group, so a body with fields of two groups fits no branch."""
        fields = set(struct.__struct_fields__)
        groups = [[name for name in group if name in fields] for group in self.alternatives]
        groups = [group for group in groups if group]
        free = [name for name in struct.__struct_fields__ if not any(name in group for group in self.alternatives)]
        branches = [
            Schema(
                properties={name: Schema() for name in [*group, *free]},
                additional_properties=False,
                any_of=[Schema(required=[name]) for name in group],
            )
            for group in groups
        ]
        return branches or None


def operation_with(body: RequestBody) -> type[Operation]:
    """An ``Operation`` (Litestar's ``operation_class``) documenting ``body``, which these handlers read themselves."""

    @dataclasses.dataclass
    class WithRequestBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return WithRequestBody


def _json(body: bytes, struct: type[StructT]) -> StructT:
    """``body`` decoded strictly as ``struct``: 400 when it is not UTF-8 JSON, 422 naming the field that does not fit."""
    try:
        return msgspec.json.decode(body, type=struct)
    except msgspec.ValidationError as error:
        raise ApiError(422, str(error), _error_field(str(error))) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not JSON (in UTF-8): {error}") from None


def _converted(fields: dict[str, str | bytes], struct: type[StructT]) -> StructT:
    """A form's fields as ``struct`` (form text read as a number where it wants one); 422 naming the field."""
    try:
        return msgspec.convert(fields, struct, strict=False)
    except msgspec.ValidationError as error:
        raise ApiError(422, str(error), _error_field(str(error))) from None


def _error_field(message: str) -> str | None:
    match = re.search(r"field `([^`]+)`|at `\$\.([^`.\[]+)", message)
    return None if match is None else match.group(1) or match.group(2)


def _typed_fields(raw: Mapping[str, bytes], struct: type[msgspec.Struct]) -> dict[str, str | bytes]:
    """A form's fields for ``struct``: photos as bytes, the rest as UTF-8 text; an unknown field is 422."""
    names = struct.__struct_fields__
    unknown = next((name for name in raw if name not in names), None)
    if unknown is not None:
        raise ApiError(422, f"unknown field {unknown!r} (expected {', '.join(names)})", unknown)
    photos = _photos(struct)
    return {name: value if name in photos else _text(value, name) for name, value in raw.items()}


def _text(value: bytes, field: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, f"{field} is not UTF-8 text", field) from None


def _multipart_fields(body: bytes, boundary: str) -> dict[str, bytes]:
    """The parts of a multipart body by name, kept in memory (400 when malformed, 422 for a repeated name)."""
    from multipart import MultipartError, MultipartSegment, PushMultipartParser

    fields: dict[str, bytes] = {}
    name, chunks = "", list[bytes]()
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_FORM_PARTS) as parser:
            for event in [*parser.parse(body), *parser.parse(b"")]:
                if isinstance(event, MultipartSegment):
                    name, chunks = event.name or "", []
                elif event is not None:
                    chunks.append(event)
                elif name in fields:
                    raise ApiError(422, f"field {name} is given more than once", name)
                else:
                    fields[name] = b"".join(chunks)
    except MultipartError as error:
        raise ApiError(400, f"the body is not valid multipart/form-data: {error}") from None
    return fields


def _urlencoded_fields(body: bytes) -> dict[str, bytes]:
    """The fields of a urlencoded form (400 when malformed, 422 for a repeated name)."""
    try:
        pairs = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=MAX_FORM_PARTS)
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(400, f"the body is not valid form data: {error}") from None
    repeated = next((name for name, values in pairs.items() if len(values) > 1), None)
    if repeated is not None:
        raise ApiError(422, f"field {repeated} is given more than once", repeated)
    return {name: values[0].encode() for name, values in pairs.items()}


def _object_schema(struct: type[msgspec.Struct], rules: TextRules, one_of: list[Schema] | None) -> Schema:
    """``struct`` as a closed object schema (a field it does not name is refused)."""
    fields = _fields(struct)
    return Schema(
        type=OpenAPIType.OBJECT,
        properties={field.encode_name: _field_schema(field, rules) for field in fields},
        required=[field.encode_name for field in fields if field.required] or None,
        additional_properties=False,
        one_of=one_of,
        description=(struct.__doc__ or "").split("\n")[0] or None,
    )


def _field_schema(field: msgspec.inspect.Field, rules: TextRules) -> Schema:
    """One field's schema: its type with its ``Meta`` constraints, or ``rules`` for a listing text."""
    meta = field.type if isinstance(field.type, msgspec.inspect.Metadata) else None
    description = None if meta is None else (meta.extra_json_schema or {}).get("description")
    kind = _base(field.type)
    default = None if field.default is msgspec.NODEFAULT else field.default
    if _is_listing_text(field.type):
        return rules.schema(description)
    if isinstance(kind, msgspec.inspect.StrType):
        return Schema(
            type=OpenAPIType.STRING, min_length=kind.min_length, max_length=kind.max_length, pattern=kind.pattern,
            description=description, default=default,
        )
    if isinstance(kind, msgspec.inspect.BytesType):
        return Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, min_length=kind.min_length, description=description)
    if isinstance(kind, msgspec.inspect.FloatType) and kind.multiple_of == 1:  # a whole number (contracts.api.Count)
        return Schema(type=OpenAPIType.INTEGER, minimum=kind.ge, maximum=kind.le, description=description, default=default)
    raise TypeError(f"field {field.name}: no OpenAPI form for {kind}")


@functools.cache
def _photos(struct: type[msgspec.Struct]) -> frozenset[str]:
    """The fields of ``struct`` that hold bytes (photos)."""
    return frozenset(field.name for field in _fields(struct) if isinstance(_base(field.type), msgspec.inspect.BytesType))


@functools.cache
def _listing_texts(struct: type[msgspec.Struct]) -> frozenset[str]:
    """The fields of ``struct`` that hold a listing text (``contracts.api.ListingText``)."""
    return frozenset(field.name for field in _fields(struct) if _is_listing_text(field.type))


def _is_listing_text(kind: msgspec.inspect.Type) -> bool:
    return isinstance(kind, msgspec.inspect.Metadata) and bool((kind.extra or {}).get(LISTING_TEXT))


def _fields(struct: type[msgspec.Struct]) -> tuple[msgspec.inspect.Field, ...]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    return info.fields


def _base(kind: msgspec.inspect.Type) -> msgspec.inspect.Type:
    return kind.type if isinstance(kind, msgspec.inspect.Metadata) else kind
