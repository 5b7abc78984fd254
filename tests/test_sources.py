"""Reading raw tables: local files, an S3-compatible server, and clear errors for bad input."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fbml.errors import InputError
from fbml.sample.marketplace import write_raw_table
from fbml.tables.clean import clean_tables
from fbml.tables.sources import read_images, read_products
from fbml.testing import raw_images, raw_products
from hypothesis import given, settings
from hypothesis import strategies as st

PRODUCTS_CSV = (
    ',id,product_name,category,product_description,price,location\n'
    '0,p1,"Lamp | in Bath, Somerset | Gumtree",Home & Garden / Lighting,"Warm\rlight",£5.00,"Bath, Somerset"\n'
    '1,p2,"Kettle | in York, North Yorkshire | Gumtree",Appliances / Kettles,Boils,"£1,200.50",York\n'
)
IMAGES_SHORT = ",id,product_id\n0,i1,p1\n1,i2,p1\n2,i3,p2\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_bare_carriage_returns_inside_fields(tmp_path: Path) -> None:
    raw = read_products(write(tmp_path / "p.csv", PRODUCTS_CSV))
    assert raw.height == 2
    assert raw["product_description"][0] == "Warm\rlight"


def test_short_and_long_images_tables(tmp_path: Path) -> None:
    assert read_images(write(tmp_path / "short.csv", IMAGES_SHORT)).columns == ["", "id", "product_id"]
    long_form = ",id,product_id,bucket_link,image_ref,create_time\n0,i1,p1,https://x/i1.jpg,ref,2022-02-26\n"
    assert read_images(write(tmp_path / "long.csv", long_form)).height == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        ("folder", "is a folder, not a file"),
        ("", "empty file"),
        (",id,product_name\n0,a,b\n", "missing column(s) category, product_description, price, location"),
        (',id,product_name,category,product_description,price,location\n0,"a,b\n', "cannot read as CSV"),
    ],
)
def test_bad_products_files_name_the_file_and_the_problem(tmp_path: Path, content: str | None, problem: str) -> None:
    path = tmp_path / "Products.csv"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        write(path, content)
    with pytest.raises(InputError) as caught:
        read_products(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


HEADER = ",id,product_name,category,product_description,price,location\n"
CAFE = HEADER + '0,p1,Café table,Home / Tables,Nice café,£10.00,"Leeds, West Yorkshire"\n'


@pytest.mark.parametrize(
    ("encoding", "looks_like", "codec"),
    [("latin-1", "Latin-1 (ISO-8859-1)", "latin-1"), ("cp1252", "Windows-1252", "cp1252")],
)
def test_a_single_byte_file_is_refused_with_its_encoding_then_read_with_it(
    tmp_path: Path, encoding: str, looks_like: str, codec: str
) -> None:
    path = tmp_path / "Products.csv"
    path.write_bytes(CAFE.replace("Nice", "Nice ’" if encoding == "cp1252" else "Nice").encode(encoding))
    with pytest.raises(InputError) as caught:
        read_products(path)
    assert str(caught.value) == (
        f"{path}: is not UTF-8 (byte 0xe9 on line 2): it looks like {looks_like}; convert it to UTF-8, "
        f"or read it with encoding={codec!r} (fbml clean-products --encoding {codec})"
    )
    tables = clean_tables(path, encoding=codec)
    assert tables.cleaned.products.select("product_name", "price").row(0) == ("Cafe table", 10.0)
    assert read_products(path, encoding=codec)["product_description"][0].startswith("Nice ")


@pytest.mark.parametrize(
    ("codec", "described"),
    [
        ("utf-16", "UTF-16 (little-endian), with a byte-order mark"),
        ("utf-16-be", "UTF-16 (big-endian), without a byte-order mark"),
        ("utf-16-le", "UTF-16 (little-endian), without a byte-order mark"),
        ("utf-32", "UTF-32 (little-endian), with a byte-order mark"),
    ],
)
def test_a_utf16_or_utf32_file_is_named_as_such(tmp_path: Path, codec: str, described: str) -> None:
    path = tmp_path / "Products.csv"
    path.write_bytes(PRODUCTS_CSV.encode(codec))
    with pytest.raises(InputError, match=f"^{path}: is not UTF-8: it looks like {re.escape(described)}; "):
        read_products(path)
    read_as = {"utf-16-be": "utf-16-be", "utf-16-le": "utf-16-le"}.get(codec, codec)
    assert read_products(path, encoding=read_as)["product_description"][0] == "Warm\rlight"


def test_an_unknown_encoding_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown encoding 'klingon'"):
        read_products(write(tmp_path / "p.csv", PRODUCTS_CSV), encoding="klingon")


latin1_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters=',"\x7f'), max_size=12)


@settings(max_examples=60)
@given(names=st.lists(latin1_text, min_size=1, max_size=5))
def test_latin1_text_is_refused_as_utf8_or_read_exactly(names: list[str]) -> None:
    rows = "".join(f'{row},p{row},"{name}",A,d,£1,x\n' for row, name in enumerate(names))
    data = (HEADER + rows).encode("latin-1")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "Products.csv"
        path.write_bytes(data)
        try:
            as_utf8 = read_products(path)["product_name"].to_list()
        except InputError as error:
            assert "is not UTF-8" in str(error) and "encoding='" in str(error)
        else:
            assert as_utf8 == names  # only when the bytes are UTF-8 as well (ASCII)
        assert read_products(path, encoding="latin-1")["product_name"].to_list() == names


def test_error_lines_are_bounded_and_escaped(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "\ufffd" * 15_000 + "\x00,id\n0,1\n")
    with pytest.raises(InputError) as caught:
        read_products(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: missing column(s) product_name")
    assert len(message) < 500 and "more characters" in message
    assert message.isprintable()


def test_images_table_without_product_id(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing column"):
        read_images(write(tmp_path / "Images.csv", ",id\n0,i1\n"))


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on loopback."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_reads_both_tables_from_s3(s3_endpoint: str) -> None:
    import boto3

    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    client = boto3.client("s3", endpoint_url=s3_endpoint, **credentials)
    client.create_bucket(Bucket="fbml-raw")
    client.put_object(Bucket="fbml-raw", Key="tables/Products.csv", Body=PRODUCTS_CSV.encode())
    client.put_object(Bucket="fbml-raw", Key="tables/Images.csv", Body=IMAGES_SHORT.encode())
    options = {
        "aws_endpoint_url": s3_endpoint,
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    tables = clean_tables("s3://fbml-raw/tables/Products.csv", "s3://fbml-raw/tables/Images.csv", storage_options=options)
    assert tables.cleaned.products["price"].to_list() == [5.0, 1200.5]
    assert tables.manifest.images.height == 3
    with pytest.raises(InputError, match="s3://fbml-raw/missing.csv: cannot read as CSV"):
        read_products("s3://fbml-raw/missing.csv", storage_options=options)


@settings(max_examples=80)
@given(data=st.data())
def test_drawn_raw_tables_read_back_from_csv_unchanged(data: st.DataObject) -> None:
    products = data.draw(raw_products(max_rows=12), label="products")
    images = data.draw(raw_images(["p1", "p2"], max_rows=8), label="images")
    with tempfile.TemporaryDirectory() as folder:
        write_raw_table(products, Path(folder) / "Products.csv")
        write_raw_table(images, Path(folder) / "Images.csv")
        assert read_products(Path(folder) / "Products.csv").equals(products)
        assert read_images(Path(folder) / "Images.csv").equals(images)


def test_import_fbml_is_cheap() -> None:
    modules = "('torch', 'gensim', 'litestar', 'hypothesis', 'fbml.testing')"
    code = f"import sys, fbml; fbml.clean_products; print(sorted(m for m in {modules} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves() -> None:
    import fbml

    for name in fbml.__all__:
        assert getattr(fbml, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fbml.nope  # noqa: B018
