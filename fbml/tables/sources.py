"""Read the raw products and images tables from a local path or an ``s3://`` URI.

Text is UTF-8 unless an ``encoding`` is given. A file in another encoding is refused with one line
that says which encoding it looks like and how to read it, rather than read with characters lost.
"""

from __future__ import annotations

import codecs
import contextlib
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import contracts
import polars as pl
from contracts.rules import RAW_IMAGE_COLUMNS, RAW_PRODUCT_COLUMNS

from fbml.errors import ContractError, InputError, shown
from fbml.tables.validation import validated

if TYPE_CHECKING:
    import pandera.polars as pa
    from contracts import RawImages, RawProducts
    from pandera.typing.polars import DataFrame

StorageOptions = Mapping[str, str] | None
UTF8 = "utf-8"
SNIFFED_BYTES = 1 << 16
Raw = TypeVar("Raw", bound="pa.DataFrameModel")
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32 (little-endian)", "utf-32"),
    (codecs.BOM_UTF32_BE, "UTF-32 (big-endian)", "utf-32"),
    (codecs.BOM_UTF16_LE, "UTF-16 (little-endian)", "utf-16"),
    (codecs.BOM_UTF16_BE, "UTF-16 (big-endian)", "utf-16"),
)


def is_remote(source: str | Path) -> bool:
    """True for object-store URIs such as ``s3://bucket/key``."""
    return "://" in str(source)


def read_table(source: str | Path, *, storage_options: StorageOptions = None, encoding: str = UTF8) -> pl.DataFrame:
    """Every column of a CSV as strings; records end at ``\\n`` so bare ``\\r`` stay inside fields.

    ``encoding`` is any Python codec name (``latin-1``, ``cp1252``, ``utf-16``); a local file that is
    not in it and looks like another encoding is an ``InputError`` that names that encoding.
    """
    with read_errors(source, encoding):
        return scan_table(source, storage_options=storage_options, encoding=encoding).collect()


def scan_table(source: str | Path, *, storage_options: StorageOptions = None, encoding: str = UTF8) -> pl.LazyFrame:
    """``read_table`` as a lazy scan for the streaming engine: the same parser and options, read in batches.

    Errors in the data surface when the scan runs: run it inside ``read_errors(source, encoding)``. A file
    in another encoding than UTF-8 is decoded in memory first (polars streams UTF-8 only).
    """
    codec = _codec_name(source, encoding)
    with read_errors(source, codec):
        return pl.scan_csv(
            _readable(source, codec),
            infer_schema=False,
            encoding="utf8",
            storage_options=dict(storage_options) if storage_options else None,
        )


@contextlib.contextmanager
def read_errors(source: str | Path, encoding: str = UTF8) -> Iterator[None]:
    """Errors reading ``source`` as CSV, as one-line ``InputError``s."""
    codec = _codec_name(source, encoding)
    try:
        yield
    except pl.exceptions.NoDataError:
        raise InputError(source, "empty file: no header row") from None
    except (pl.exceptions.PolarsError, UnicodeError) as error:
        if codec == UTF8 and "utf-8" in str(error).lower():
            raise InputError(source, _not_utf8(source)) from None
        raise InputError(source, f"cannot read as CSV: {_first_line(error)}") from None
    except OSError as error:
        raise InputError(source, f"cannot read as CSV: {_first_line(error)}") from None


def scan_products(source: str | Path, *, storage_options: StorageOptions = None, encoding: str = UTF8) -> pl.LazyFrame:
    """The raw products table as a lazy scan, its columns checked against ``RawProducts`` (all strings)."""
    return _with_columns(scan_table(source, storage_options=storage_options, encoding=encoding), RAW_PRODUCT_COLUMNS, source)


def scan_images(source: str | Path, *, storage_options: StorageOptions = None, encoding: str = UTF8) -> pl.LazyFrame:
    """The raw images table as a lazy scan, its columns checked against ``RawImages`` (all strings)."""
    return _with_columns(scan_table(source, storage_options=storage_options, encoding=encoding), RAW_IMAGE_COLUMNS, source)


def read_products(
    source: str | Path, *, storage_options: StorageOptions = None, encoding: str = UTF8
) -> DataFrame[RawProducts]:
    """The raw products table, checked against ``RawProducts``."""
    frame = read_table(source, storage_options=storage_options, encoding=encoding)
    return _validated(frame, contracts.RawProducts, RAW_PRODUCT_COLUMNS, source)


def read_images(
    source: str | Path, *, storage_options: StorageOptions = None, encoding: str = UTF8
) -> DataFrame[RawImages]:
    """The raw images table (long or short form), checked against ``RawImages``."""
    frame = read_table(source, storage_options=storage_options, encoding=encoding)
    return _validated(frame, contracts.RawImages, RAW_IMAGE_COLUMNS, source)


def sniffed_encoding(head: bytes) -> tuple[str, str] | None:
    """The encoding the first bytes of a file show that is not UTF-8, as (description, codec), or None.

    A byte-order mark names UTF-16 or UTF-32; without one, NUL bytes at every other position show
    UTF-16 text (mostly ASCII characters). Many other control bytes are no text at all; a few (a NUL
    inside a field) are left for the rows to answer for.
    """
    for bom, description, codec in _BOMS:
        if head.startswith(bom):
            return f"{description}, with a byte-order mark", codec
    pairs = len(head) // 2
    if pairs and head.count(0) * 4 > len(head):
        odd, even = head[1 : 2 * pairs : 2].count(0), head[0 : 2 * pairs : 2].count(0)
        if max(odd, even) * 10 > pairs * 9:
            endian = "little" if odd > even else "big"
            return f"UTF-16 ({endian}-endian), without a byte-order mark", f"utf-16-{endian[0]}e"
    if _looks_binary(head):
        return "binary data, not text", ""
    return None


def single_byte_encoding(data: bytes) -> tuple[str, str]:
    """Which single-byte encoding bytes that are not UTF-8 look like: Windows-1252 when they use its
    printable characters at 0x80-0x9F (’ “ ” – € …), else Latin-1; as (description, codec)."""
    if any(0x80 <= byte <= 0x9F for byte in data) and _decodes(data, "cp1252"):
        return "Windows-1252", "cp1252"
    return "Latin-1 (ISO-8859-1)", "latin-1"


def _codec_name(source: str | Path, encoding: str) -> str:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise InputError(source, f"unknown encoding {shown(encoding)}") from None
    return UTF8 if name == "utf-8" else name


def _as_utf8(path: Path, codec: str) -> io.BytesIO:
    """The file decoded from ``codec``, as UTF-8 bytes: line ends untouched (polars' own decoding reads
    text with universal newlines, which would turn a bare ``\\r`` inside a field into a new line)."""
    try:
        return io.BytesIO(path.read_bytes().decode(codec).encode(UTF8))
    except UnicodeDecodeError as error:
        raise InputError(path, f"is not {codec}: {error.reason} at byte {error.start}") from None


def _check_local_file(path: Path, codec: str) -> None:
    """Refuse what is not a file, and a UTF-8 read of a file whose first bytes show another encoding."""
    if path.is_dir():
        raise InputError(path, "is a folder, not a file")
    if not path.is_file():
        raise InputError(path, "no such file")
    if codec != UTF8:
        return
    try:
        with path.open("rb") as file:
            head = file.read(SNIFFED_BYTES)
    except OSError as error:
        raise InputError(path, f"cannot read: {error.strerror}") from None
    sniffed = sniffed_encoding(head)
    if sniffed is not None:
        description, other = sniffed
        raise InputError(path, f"is not UTF-8: it looks like {description}" + (_how_to_read(other) if other else ""))


def _not_utf8(source: str | Path) -> str:
    """What to say about a file polars found not to be UTF-8: where, which encoding it looks like, what to do."""
    if is_remote(source):
        return "is not UTF-8 text; convert it to UTF-8, or read it with its encoding (e.g. encoding='latin-1')"
    line, data = _first_invalid_utf8(Path(source))
    where = f"byte 0x{data[:1].hex()} on line {line}"
    if _looks_binary(data):
        return f"is not UTF-8 ({where}): it looks like binary data, not text"
    description, codec = single_byte_encoding(data)
    return f"is not UTF-8 ({where}): it looks like {description}" + _how_to_read(codec)


def _how_to_read(codec: str) -> str:
    return f"; convert it to UTF-8, or read it with encoding={codec!r} (fbml clean-products --encoding {codec})"


def _first_invalid_utf8(path: Path, chunk: int = 1 << 20) -> tuple[int, bytes]:
    """The 1-based line of the first byte that is not UTF-8, and the bytes from there (some of them)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as file:
        while block := file.read(chunk):
            pending = decoder.getstate()[0]
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                data = pending + block
                return line + data.count(b"\n", 0, error.start), data[error.start :]
            line += block.count(b"\n")
    return line, b""


def _looks_binary(data: bytes) -> bool:
    """True when more than 1 in 20 of the first bytes are control bytes other than tab and line ends."""
    sample = data[:SNIFFED_BYTES]
    controls = sum(1 for byte in sample if byte < 0x20 and byte not in b"\t\n\r")
    return controls * 20 > len(sample)


def _decodes(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
    except UnicodeDecodeError as error:
        return error.start >= len(data) - 3  # a character cut at the end of the sample is no evidence
    return True


def _readable(source: str | Path, codec: str) -> str | io.BytesIO:
    """What polars reads: the path or URI, or a file in another encoding decoded to UTF-8."""
    if not is_remote(source):
        _check_local_file(Path(source), codec)
    elif codec != UTF8:
        raise InputError(source, f"only a local file can be read as {codec}; download it, or convert it to UTF-8")
    return str(source) if codec == UTF8 else _as_utf8(Path(source), codec)


def _with_columns(scan: pl.LazyFrame, required: tuple[str, ...], source: str | Path) -> pl.LazyFrame:
    with read_errors(source):
        _check_columns(scan.collect_schema().names(), required, source)
    return scan


def _check_columns(columns: list[str], required: tuple[str, ...], source: str | Path) -> None:
    missing = [name for name in required if name not in columns]
    if missing:
        found = ", ".join(shown(name, 60) for name in columns[:20])
        more = f" and {len(columns) - 20} more" if len(columns) > 20 else ""
        raise InputError(source, f"missing column(s) {', '.join(missing)} (found {found}{more})")


def _validated(frame: pl.DataFrame, schema: type[Raw], required: tuple[str, ...], source: str | Path) -> DataFrame[Raw]:
    _check_columns(frame.columns, required, source)
    try:
        return validated(frame, schema)
    except ContractError as error:
        raise InputError(source, f"does not match {error}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
