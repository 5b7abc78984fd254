"""Streamed cleaning: the same tables as the eager cleaning, ids unique across batches, contracts enforced."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import attrs
import polars as pl
import pytest
from contracts.rules import REJECTED_SCHEMA
from fbml.errors import ContractError
from fbml.sample.marketplace import write_raw_table
from fbml.tables.clean import clean_tables
from fbml.tables.cleaning import BATCH_SCHEMA, CLEAN_COLUMNS, clean_products, cleaned_batch
from fbml.tables.sources import read_products, scan_products
from fbml.tables.streaming import RawTables, stream_clean_tables, write_cleaned
from fbml.testing import raw_images, raw_products
from hypothesis import given, settings
from hypothesis import strategies as st

HEADER = ",id,product_name,category,product_description,price,location\n"


def write_table(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "".join(f"{number},{row}\n" for number, row in enumerate(rows)), encoding="utf-8")
    return path


def messy_rows(copies: int) -> list[str]:
    """Rows whose ids repeat across any batching, with every kind of rejection between them."""
    rows = []
    for copy in range(copies):
        rows += [
            f"p{copy % 3},Oak table {copy} | in Leeds | Gumtree,Home / Tables,Solid,£{copy}.50,\"Leeds, West Yorkshire\"",
            f" p{copy % 5} ,Chair,Home,,12,Leeds",
            f"q{copy},,Home,x,3,York",
            f"r{copy},Lamp,Home,x,not a price,York",
            f"p{copy % 3},Broken,,x,1,York",
        ]
    return rows


def outputs(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    images = out / "images.parquet"
    return (pl.read_parquet(out / "products.parquet"), pl.read_parquet(out / "rejected.parquet"),
            pl.read_parquet(images) if images.exists() else None)


def assert_same_as_eager(raw: RawTables, out: Path) -> None:
    counts = stream_clean_tables(raw, out)
    eager = clean_tables(raw.products, raw.images)
    products, rejected, images = outputs(out)
    assert products.equals(eager.cleaned.products)
    assert rejected.equals(eager.rejected)
    assert (images is None) == (eager.manifest is None)
    if eager.manifest is not None and images is not None:
        assert images.equals(eager.manifest.images)
    assert counts.summary() == eager.summary()


@pytest.mark.parametrize("batch_rows", [1, 7, 1000])
def test_streamed_tables_equal_the_eager_ones_whatever_the_batches(tmp_path: Path, batch_rows: int) -> None:
    raw = RawTables(str(write_table(tmp_path / "Products.csv", messy_rows(12))), batch_rows=batch_rows)
    assert_same_as_eager(raw, tmp_path / "out")
    products, rejected, _ = outputs(tmp_path / "out")
    assert products["id"].is_unique().all()
    assert products.height + rejected.height == 60
    assert rejected.filter(pl.col("reason") == "duplicate id").height > 0


@settings(max_examples=25)
@given(data=st.data(), batch_rows=st.sampled_from([1, 3, 1000]))
def test_streamed_drawn_tables_equal_the_eager_ones(data: st.DataObject, batch_rows: int) -> None:
    products = data.draw(raw_products(max_rows=15, bad_rows=0.4), label="products")
    ids = products["id"].drop_nulls().str.strip_chars().unique(maintain_order=True).to_list()
    images = data.draw(raw_images(ids, max_rows=10), label="images")
    with tempfile.TemporaryDirectory() as folder:
        write_raw_table(products, Path(folder) / "Products.csv")
        write_raw_table(images, Path(folder) / "Images.csv")
        raw = RawTables(str(Path(folder) / "Products.csv"), str(Path(folder) / "Images.csv"), batch_rows=batch_rows)
        assert_same_as_eager(raw, Path(folder) / "out")


def test_the_sample_streams_to_the_eager_tables(sample, tmp_path: Path) -> None:
    raw = RawTables(str(sample.products_csv), str(sample.images_csv), batch_rows=100)
    assert_same_as_eager(raw, tmp_path / "out")


@pytest.mark.real_data
def test_the_real_tables_stream_to_the_eager_tables(real_data: Path, tmp_path: Path) -> None:
    raw = RawTables(str(real_data / "Products.csv"), str(real_data / "Images.csv"), batch_rows=2000)
    assert_same_as_eager(raw, tmp_path / "out")


def test_a_lazy_source_cleans_to_the_eager_result(sample) -> None:
    lazy = clean_products(scan_products(sample.products_csv), source="p")
    eager = clean_products(read_products(sample.products_csv), source="p")
    assert lazy.products.equals(eager.products)
    assert lazy.rejected.equals(eager.rejected)


def test_an_empty_table_streams_to_empty_tables(tmp_path: Path) -> None:
    counts = stream_clean_tables(RawTables(str(write_table(tmp_path / "Products.csv", []))), tmp_path / "out")
    products, rejected, _ = outputs(tmp_path / "out")
    assert (products.height, rejected.height, products.columns) == (0, 0, list(CLEAN_COLUMNS))
    assert rejected.schema == REJECTED_SCHEMA
    assert counts.summary() == "products: 0 read, 0 clean, 0 rejected"


def corrupted(batch: pl.DataFrame, **columns: pl.Expr) -> pl.DataFrame:
    return cleaned_batch(batch).with_columns(**columns)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"price": pl.lit(-1.0)}, "CleanProducts: column 'price' fails finite_non_negative (2 failing)"),
        ({"product_name": pl.lit("café")}, "CleanProducts: column 'product_name' fails ascii (2 failing)"),
        ({"raw": pl.lit("not json")}, "Rejected: column 'raw' fails json_object (2 failing)"),
    ],
)
def test_the_stream_is_checked_by_the_contracts(tmp_path: Path, change: dict[str, pl.Expr], message: str) -> None:
    """Rows a broken cleaning would let through are caught in the stream, and nothing is written."""
    raw = RawTables(str(write_table(tmp_path / "Products.csv", messy_rows(1)[:4] + ["z1,Desk,Home,x,5,York"])))
    batches = (cleaned_batch(batch).with_columns(**change) for batch in raw.product_batches())
    with pytest.raises(ContractError) as caught:
        write_cleaned(raw, batches, tmp_path / "out")
    assert str(caught.value) == message
    assert not (tmp_path / "out" / "products.parquet").exists()


def test_ids_repeated_past_the_duplicate_step_are_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = RawTables(str(write_table(tmp_path / "Products.csv", messy_rows(2))))
    monkeypatch.setattr("fbml.tables.streaming.later_duplicates",
                        lambda products: pl.DataFrame(schema={"source_row": pl.Int64, "reason": pl.String}))
    with pytest.raises(ContractError, match="^CleanProducts: column 'id' fails unique \\(2 repeated\\)$"):
        stream_clean_tables(raw, tmp_path / "out")


def test_batches_leave_in_the_batch_schema(tmp_path: Path) -> None:
    raw = RawTables(str(write_table(tmp_path / "Products.csv", messy_rows(1))))
    (batch,) = [cleaned_batch(batch) for batch in raw.product_batches()]
    assert batch.schema == BATCH_SCHEMA
    assert batch.filter(pl.col("reason").is_null())["raw"].is_null().all()
    assert batch.filter(pl.col("reason").is_not_null())["raw"].str.starts_with("{").all()


def test_a_missing_column_is_one_line_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "Products.csv"
    path.write_text(",id,product_name\n0,a,b\n", encoding="utf-8")
    done = run_fbml("clean-products", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"fbml: error: {path}: missing column(s) category") and done.stderr.count("\n") == 1


def test_a_broken_row_deep_in_the_file_is_one_line(tmp_path: Path) -> None:
    path = write_table(tmp_path / "Products.csv", messy_rows(3))
    path.write_bytes(path.read_bytes() + b'9,"unterminated,x,y\n' + b"\xff\xfe bad,\n")
    done = run_fbml("clean-products", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"fbml: error: {path}:")


def test_a_stale_output_is_replaced_only_when_the_new_one_is_whole(tmp_path: Path) -> None:
    raw = RawTables(str(write_table(tmp_path / "Products.csv", messy_rows(2))))
    out = tmp_path / "out"
    stream_clean_tables(raw, out)
    before = outputs(out)[0]
    broken = attrs.evolve(raw, products=str(tmp_path / "missing.csv"))
    with pytest.raises(Exception, match="no such file"):
        stream_clean_tables(broken, out)
    assert outputs(out)[0].equals(before)
    assert sorted(path.name for path in out.iterdir()) == ["products.parquet", "rejected.parquet"]


def run_fbml(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fbml.cli", *args], capture_output=True, text=True)


def test_an_address_without_the_ray_engine_is_one_line(tmp_path: Path) -> None:
    path = write_table(tmp_path / "Products.csv", messy_rows(1))
    done = run_fbml("clean-products", str(path), "--out", str(tmp_path / "out"), "--address", "auto")
    assert (done.returncode, done.stderr) == (2, "fbml: error: --address is for --engine ray\n")
    assert not (tmp_path / "out").exists()


def test_a_lazy_source_is_checked_by_the_raw_contract(sample) -> None:
    scan = scan_products(sample.products_csv)
    with pytest.raises(ContractError, match="^RawProducts: column 'price' fails present$"):
        clean_products(scan.drop("price"))
    with pytest.raises(ContractError, match="^RawProducts: column 'price' fails dtype String \\(got Int32\\)$"):
        clean_products(scan.with_columns(pl.lit(1).alias("price")))
