"""What the workflows read: each product's photo ids for the index's catalogue (``fbml.workflows.inputs``)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from contracts.limits import MAX_LISTING_PHOTOS
from fbml.tables.clean import clean_tables
from fbml.workflows.inputs import with_photo_ids

PRODUCTS = (
    ",id,product_name,category,product_description,price,location\n"
    '0,a,Oak table,"Home & Garden / Dining / Tables",Solid oak,£10.00,"Leeds, West Yorkshire"\n'
    '1,b,Red bike,"Sports / Cycling",Fast,£20.00,"York, North Yorkshire"\n'
    '2,c,Kettle,"Appliances",Boils,£5.00,"Hull, East Yorkshire"\n'
)


def tables_with_photos(tmp_path: Path, photos: list[tuple[str, str]]) -> tuple[Path, Path]:
    products, images = tmp_path / "products.csv", tmp_path / "images.csv"
    products.write_text(PRODUCTS)
    images.write_text(",id,product_id\n" + "".join(f"{row},{image},{product}\n" for row, (image, product) in enumerate(photos)))
    return products, images


def test_each_product_gets_its_photo_ids_in_the_images_tables_order(tmp_path: Path) -> None:
    tables = clean_tables(*tables_with_photos(tmp_path, [("i3", "b"), ("i1", "a"), ("i2", "b"), ("i9", "zz")]))
    products = with_photo_ids(tables.cleaned.products, tables)
    photos = dict(products.select("id", "photos").iter_rows())
    assert photos == {"a": ["i1"], "b": ["i3", "i2"], "c": []}
    assert products["photos"].dtype == pl.List(pl.String)
    assert products.drop("photos").equals(tables.cleaned.products)


def test_without_an_images_table_no_product_has_photos(tmp_path: Path) -> None:
    products, _ = tables_with_photos(tmp_path, [])
    tables = clean_tables(products, None)
    assert with_photo_ids(tables.cleaned.products, tables)["photos"].to_list() == [[], [], []]


def test_a_product_keeps_at_most_the_catalogues_share_of_photos(tmp_path: Path) -> None:
    many = [(f"i{number}", "a") for number in range(MAX_LISTING_PHOTOS + 5)]
    tables = clean_tables(*tables_with_photos(tmp_path, many))
    photos = with_photo_ids(tables.cleaned.products, tables).filter(pl.col("id") == "a")["photos"][0].to_list()
    assert photos == [image for image, _ in many[:MAX_LISTING_PHOTOS]]
