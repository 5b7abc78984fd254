"""``--engine ray``: Ray Data map_batches on a local Ray cluster writes the default engine's tables."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import polars as pl
import pytest
from fbml.errors import FbmlError
from fbml.tables.streaming import RawTables, stream_clean_tables

from test_sources import IMAGES_SHORT, PRODUCTS_CSV, s3_endpoint  # noqa: F401  (s3_endpoint: a fixture)
from test_streaming import messy_rows, outputs, write_table

ray = pytest.importorskip("ray")

from fbml.tables.ray_engine import ray_clean_tables  # noqa: E402


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[None]:
    """A one-CPU Ray cluster on this machine for the module's tests; the engine uses the one connected."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def assert_engines_agree(raw: RawTables, tmp_path: Path) -> None:
    """Both engines write the same rows, rejections and reasons (sorted, so order cannot hide a difference;
    the ray engine keeps the order as well), and print the same counts."""
    by_ray = ray_clean_tables(raw, tmp_path / "ray")
    by_default = stream_clean_tables(raw, tmp_path / "default")
    assert by_ray.summary() == by_default.summary()
    for ours, theirs in zip(outputs(tmp_path / "ray"), outputs(tmp_path / "default"), strict=True):
        assert (ours is None) == (theirs is None)
        if ours is not None and theirs is not None:
            assert ours.sort(ours.columns).equals(theirs.sort(theirs.columns))
            assert ours.equals(theirs)


def test_generated_tables_with_duplicates_across_batches(local_cluster: None, tmp_path: Path) -> None:
    raw = RawTables(str(write_table(tmp_path / "Products.csv", messy_rows(12))), batch_rows=7)
    assert_engines_agree(raw, tmp_path)
    rejected = pl.read_parquet(tmp_path / "ray" / "rejected.parquet")
    assert rejected.filter(pl.col("reason") == "duplicate id").height > 0


def test_the_sample_with_its_photos(local_cluster: None, sample, tmp_path: Path) -> None:
    assert_engines_agree(RawTables(str(sample.products_csv), str(sample.images_csv), batch_rows=200), tmp_path)


@pytest.mark.real_data
def test_the_real_tables(local_cluster: None, real_data: Path, tmp_path: Path) -> None:
    raw = RawTables(str(real_data / "Products.csv"), str(real_data / "Images.csv"), batch_rows=2500)
    assert_engines_agree(raw, tmp_path)


def test_reads_from_s3(local_cluster: None, s3_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    import boto3

    credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    client = boto3.client("s3", endpoint_url=s3_endpoint, **credentials)
    client.create_bucket(Bucket="fbml-ray")
    client.put_object(Bucket="fbml-ray", Key="Products.csv", Body=PRODUCTS_CSV.encode())
    client.put_object(Bucket="fbml-ray", Key="Images.csv", Body=IMAGES_SHORT.encode())
    options = {"aws_endpoint_url": s3_endpoint, "aws_access_key_id": "test", "aws_secret_access_key": "test",
               "aws_region": "us-east-1", "aws_allow_http": "true"}
    raw = RawTables("s3://fbml-ray/Products.csv", "s3://fbml-ray/Images.csv", storage_options=options)
    assert_engines_agree(raw, tmp_path)
    assert pl.read_parquet(tmp_path / "ray" / "products.parquet")["price"].to_list() == [5.0, 1200.5]
    assert pl.read_parquet(tmp_path / "ray" / "images.parquet").height == 3


def test_a_missing_ray_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    raw = RawTables(str(write_table(tmp_path / "Products.csv", messy_rows(1))))
    with pytest.raises(FbmlError, match=r"^--engine ray needs Ray: install fbml\[ray\]$"):
        ray_clean_tables(attrs.evolve(raw), tmp_path / "out")


def test_the_command_line_engine(local_cluster: None, sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fbml.cli import main

    args = ["clean-products", str(sample.products_csv), "--images", str(sample.images_csv), "--out"]
    assert main([*args, str(tmp_path / "ray"), "--engine", "ray"]) == 0
    by_ray = capsys.readouterr().out
    assert main([*args, str(tmp_path / "default")]) == 0
    assert by_ray.replace("/ray/", "/default/") == capsys.readouterr().out
    assert "products: 650 read, 641 clean, 9 rejected" in by_ray
