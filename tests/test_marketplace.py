"""The sample marketplace: determinism, the real format and mess, exact defect counts, learnable signal."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import numpy as np
import polars as pl
import pytest
from fbml.sample.marketplace import TOP_LEVEL_CATEGORIES, SampleDefects, SampleMarketplace, write_sample
from PIL import Image, ImageOps
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

PRODUCT_HEADER = ["", "id", "product_name", "category", "product_description", "price", "location"]
IMAGE_HEADER = ["", "id", "product_id", "bucket_link", "image_ref", "create_time"]
GOOD_PRICE = r"^£\d{1,3}(,\d{3})*\.\d{2}$"
EXIF_ORIENTATION = 0x0112


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def products(sample: SampleMarketplace) -> pl.DataFrame:
    return pl.read_csv(sample.products_csv, infer_schema=False)


def images(sample: SampleMarketplace) -> pl.DataFrame:
    return pl.read_csv(sample.images_csv, infer_schema=False)


def photo_path(sample: SampleMarketplace, bucket_link: str) -> Path:
    return sample.image_dir / bucket_link.rsplit("/", 1)[1]


def opened(path: Path) -> Image.Image | None:
    """The fully decoded image, or None when the file cannot be read as one."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except OSError:
        return None


@pytest.fixture(scope="module")
def photos(sample: SampleMarketplace) -> dict[str, Image.Image | None]:
    """Each image row's decoded photo (None when unreadable), by image id."""
    rows = images(sample)
    return {row["id"]: opened(photo_path(sample, row["bucket_link"])) for row in rows.iter_rows(named=True)}


def thumbnail(photo: Image.Image) -> np.ndarray:
    """The upright photo as 8x8 RGB mean colours in 0..1, flattened."""
    upright = ImageOps.exif_transpose(photo).convert("RGB").resize((8, 8), Image.Resampling.BOX)
    return np.asarray(upright, dtype=np.float32).ravel() / 255


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = write_sample(tmp_path / "a", products=150, seed=3)
    second = write_sample(tmp_path / "b", products=150, seed=3)
    other = write_sample(tmp_path / "c", products=150, seed=4)
    assert files(first.root) == files(second.root)
    assert files(first.root)["Products.csv"] != files(other.root)["Products.csv"]
    assert set(files(first.root)).isdisjoint(set(files(other.root)) - {"Products.csv", "Images.csv", "sample.json"})


def test_overwriting_leaves_exactly_the_new_sample(tmp_path: Path) -> None:
    write_sample(tmp_path / "a", products=60, seed=1)
    write_sample(tmp_path / "a", products=60, seed=2)
    write_sample(tmp_path / "b", products=60, seed=2)
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_tiny_samples_are_clean_and_zero_is_refused(tmp_path: Path) -> None:
    tiny = write_sample(tmp_path / "tiny", products=5)
    assert tiny.defects == SampleDefects(0, 0, 0, 0, 0, 0)
    assert products(tiny).height == 5
    assert products(tiny)["price"].str.contains(GOOD_PRICE).all()
    with pytest.raises(ValueError, match="at least 1"):
        write_sample(tmp_path / "none", products=0)


def test_headers_and_layout(sample: SampleMarketplace) -> None:
    assert products(sample).columns == PRODUCT_HEADER
    assert images(sample).columns == IMAGE_HEADER
    assert sample.products_csv.read_bytes().startswith(b",id,product_name,")
    assert products(sample).height == 650
    assert json.loads(sample.manifest_json.read_text()) == {
        "seed": 0,
        "products": 650,
        "defects": {
            "bad_price": sample.defects.bad_price,
            "duplicate_id": sample.defects.duplicate_id,
            "missing_field": sample.defects.missing_field,
            "orphan_images": sample.defects.orphan_images,
            "products_without_images": sample.defects.products_without_images,
            "unreadable_photos": sample.defects.unreadable_photos,
        },
    }


def test_products_carry_the_real_mess(sample: SampleMarketplace) -> None:
    table = products(sample)
    index = table[""].cast(pl.Int64)
    assert index.is_sorted() and index.n_unique() == table.height
    levels = table["category"].drop_nulls().str.split(" / ")
    assert set(levels.list.first()) == set(TOP_LEVEL_CATEGORIES)
    assert levels.list.len().min() == 2 and levels.list.len().max() == 5
    counts = levels.list.first().value_counts()["count"]
    assert counts.max() < 3 * counts.min()
    description = table["product_description"]
    assert description.str.contains("\r").sum() > 50
    assert description.str.contains("[^\x00-\x7f]").sum() > 50
    assert table["product_name"].str.contains("[^\x00-\x7f]").sum() > 20
    assert description.str.contains("Posted by ").sum() > 20
    no_comma = (~table["location"].str.contains(",")).sum()
    assert 0.01 * table.height < no_comma < 0.1 * table.height
    named = table.filter(pl.col("product_name").is_not_null())
    assert all(
        name.endswith(f" | in {location} | Gumtree") for name, location in named.select("product_name", "location").rows()
    )
    assert table["id"].str.contains(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$").all()


def test_prices_are_pounds_except_the_bad_ones(sample: SampleMarketplace) -> None:
    prices = products(sample)["price"]
    good = prices.str.contains(GOOD_PRICE)
    assert prices.null_count() == 0
    assert (~good).sum() == sample.defects.bad_price
    values = prices.filter(good).str.replace_all("[£,]", "").cast(pl.Float64)
    assert (values > 1000).sum() >= 2
    assert values.max() == 10_000_000


def test_image_rows_look_real(sample: SampleMarketplace) -> None:
    table = images(sample)
    assert table["image_ref"].str.contains(r"^[A-Za-z0-9]{16}$").all()
    assert table["create_time"].str.contains(r"^2022-02-\d{2}$").all()
    links = table["bucket_link"].str.extract(r"^https://example-bucket\.s3\.eu-west-1\.amazonaws\.com/images/(.+)\.(?:jpg|png)$")
    assert (links == table["id"]).all()
    per_product = table.group_by("product_id").len()["len"]
    assert set(per_product) == {1, 2}
    assert 1.4 < table.height / per_product.len() < 1.8


def test_every_image_row_has_its_file_and_nothing_else_is_there(sample: SampleMarketplace) -> None:
    table = images(sample)
    expected = {photo_path(sample, link).name for link in table["bucket_link"]}
    assert expected == {path.name for path in sample.image_dir.iterdir()}
    assert all(name.removesuffix(".jpg").removesuffix(".png") in set(table["id"]) for name in expected)


def test_defect_counts_match_independent_counts(sample: SampleMarketplace, photos: dict[str, Image.Image | None]) -> None:
    table = products(sample).with_row_index("row")
    image_rows = images(sample)
    bad_price = ~pl.col("price").str.contains(GOOD_PRICE)
    missing = pl.col("product_name").is_null() | pl.col("category").is_null()
    duplicate = ~pl.col("id").is_first_distinct()
    problems = table.select(row_problems=bad_price.cast(int) + missing.cast(int) + duplicate.cast(int))
    clean = table.filter(~bad_price & ~missing & ~duplicate)
    counted = SampleDefects(
        bad_price=table.filter(bad_price).height,
        duplicate_id=table.height - table["id"].n_unique(),
        missing_field=table.filter(missing).height,
        orphan_images=image_rows.filter(~pl.col("product_id").is_in(table["id"].implode())).height,
        products_without_images=clean.filter(~pl.col("id").is_in(image_rows["product_id"].implode())).height,
        unreadable_photos=sum(photo is None for photo in photos.values()),
    )
    assert counted == sample.defects
    assert problems["row_problems"].max() == 1
    assert min(attrs.astuple(sample.defects)) >= 1
    assert 0.005 * table.height < table.height - clean.height < 0.03 * table.height
    assert image_rows.join(clean.select("id"), left_on="product_id", right_on="id").height == (
        image_rows.height - sample.defects.orphan_images
    )


def test_unreadable_photos_are_one_text_file_and_one_truncated_jpeg(
    sample: SampleMarketplace, photos: dict[str, Image.Image | None]
) -> None:
    bad = [image_id for image_id, photo in photos.items() if photo is None]
    contents = [(sample.image_dir / f"{image_id}.jpg").read_bytes() for image_id in bad]
    assert sorted(content.startswith(b"\xff\xd8") for content in contents) == [False, True]


def test_photos_vary_in_mode_size_format_and_orientation(
    sample: SampleMarketplace, photos: dict[str, Image.Image | None]
) -> None:
    readable = [photo for photo in photos.values() if photo is not None]
    modes = {photo.mode for photo in readable}
    assert {"RGB", "L", "CMYK", "RGBA", "P", "I;16"} <= modes
    assert sum(photo.mode == "RGB" for photo in readable) > 0.8 * len(readable)
    assert {photo.getexif().get(EXIF_ORIENTATION) for photo in readable} >= {6, 8}
    sides = np.array([photo.size for photo in readable])
    assert sides.min() < 100 and sides.max() > 500
    assert (sides[:, 0] > sides[:, 1]).any() and (sides[:, 0] < sides[:, 1]).any()
    total = sum(path.stat().st_size for path in sample.image_dir.iterdir())
    assert total < 20_000_000


def test_text_predicts_the_category(sample: SampleMarketplace) -> None:
    table = products(sample).filter(pl.col("category").is_not_null() & pl.col("product_name").is_not_null())
    text = (table["product_name"] + " " + table["product_description"]).to_list()
    labels = table["category"].str.split(" / ").list.first().to_list()
    features = TfidfVectorizer(sublinear_tf=True).fit_transform(text)
    with threadpool_limits(1):  # BLAS threads on a small problem only slow it down
        accuracy = cross_val_score(LogisticRegression(max_iter=2000), features, labels, cv=5).mean()
    print(f"text accuracy {accuracy:.3f}")
    assert 0.6 < accuracy < 1.0


def test_photos_predict_the_category(sample: SampleMarketplace, photos: dict[str, Image.Image | None]) -> None:
    category = dict(products(sample).select("id", pl.col("category").str.split(" / ").list.first()).rows())
    rows = images(sample).filter(pl.col("product_id").is_in(list(category)))
    labelled = [(photos[image_id], category[product]) for image_id, product in rows.select("id", "product_id").rows()]
    pairs = [(photo, label) for photo, label in labelled if photo is not None]
    features = np.stack([thumbnail(photo) for photo, _ in pairs])
    labels = [label for _, label in pairs]
    majority = max(labels.count(label) for label in set(labels)) / len(labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=1000))
    with threadpool_limits(1):
        accuracy = cross_val_score(model, features, labels, cv=5).mean()
    print(f"image accuracy {accuracy:.3f} (majority {majority:.3f})")
    assert accuracy > majority + 0.2


def test_a_link_in_the_output_folder_is_replaced_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    out = tmp_path / "sample"
    out.mkdir()
    for name in ("Products.csv", "Images.csv", "sample.json"):
        (out / name).symlink_to(outside)
    sample = write_sample(out, products=20, seed=0, progress=False)
    assert outside.read_text() == "keep"
    assert not sample.products_csv.is_symlink() and sample.products_csv.read_text().startswith(",id,")
