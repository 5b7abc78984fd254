"""``fbml monitor``: the training profile a bundle keeps, and new listings compared with it. Listings of the same
market (another seed of the sample marketplace) raise nothing; each planted shift (prices x100, descriptions
dropped, photos darkened, one category flooded) exits 1 with a check named after what moved; bad input
exits 2 with one line; the effect sizes are symmetric and do not depend on row order."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest
from fbml.bundle.profile import Profile, numeric_summary, profile_from_json, profile_to_json
from fbml.bundle.store import MANIFEST, load_bundle, save_bundle
from fbml.cli import main
from fbml.errors import FbmlError
from fbml.workflows import drift
from fbml.workflows.monitor import compared
from fbml.workflows.profiling import Observations
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

PRODUCTS = 300
IMAGE_SIZE = 48


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _market(root: Path, seed: int) -> dict[str, Path]:
    from fbml.sample.marketplace import write_sample
    from fbml.vision.cleaning import clean_images

    sample = write_sample(root / "raw", products=PRODUCTS, seed=seed)
    clean_images(sample.image_dir, root / "photos", size=IMAGE_SIZE, workers=1, progress=False)
    return {"products": sample.products_csv, "images": sample.images_csv, "image_dir": root / "photos", "root": root}


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The listings a bundle is trained on: the sample marketplace, seed 0."""
    return _market(tmp_path_factory.mktemp("old"), 0)


@pytest.fixture(scope="module")
def new(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Unseen listings of the same market: seed 1."""
    return _market(tmp_path_factory.mktemp("new"), 1)


@pytest.fixture(scope="module")
def bundle(old, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text bundle trained on ``old`` (its photos profiled too)."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    assert main(["train", "--model", "text", "--epochs", "2", "--device", "cpu", *_data(old), "--out", str(out)]) == 0
    return out


def _data(market: dict[str, Path]) -> list[str]:
    return ["--products", str(market["products"]), "--images", str(market["images"]), "--image-dir", str(market["image_dir"])]


def monitor(bundle: Path, market: dict[str, Path], capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    status = main(["monitor", str(bundle), *_data(market), "--json", *extra])
    out = capsys.readouterr().out
    return status, json.loads(out) if status in (0, 1) else {}


def drifted(result: dict) -> set[str]:
    return {check["name"] for check in result["checks"] if check["drifted"]}


def _shifted(market: dict[str, Path], root: Path, products: pl.DataFrame | None = None, image_dir: Path | None = None) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    changed = dict(market)
    if products is not None:
        changed["products"] = root / "Products.csv"
        products.write_csv(changed["products"])
    if image_dir is not None:
        changed["image_dir"] = image_dir
    return changed


def _raw(market: dict[str, Path]) -> pl.DataFrame:
    return pl.read_csv(market["products"], infer_schema=False)


# --- the bundle keeps a profile ----------------------------------------------------------------------------


def test_training_saves_a_small_profile_listed_in_the_manifest(bundle) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    entry = manifest["profile"]
    assert (bundle / entry["file"]).stat().st_size < 512 * 1024
    profile = load_bundle(bundle).profile
    assert profile is not None
    assert {"products.price", "text.length", "photos.brightness", "predictions.text.confidence"} <= set(profile.numeric)
    assert {"products.category", "predictions.text.category"} <= set(profile.categorical)
    assert {"products.rejected", "products.missing", "text.words"} <= set(profile.rates)
    text = (bundle / entry["file"]).read_text()
    assert "Gumtree" not in text and "Posted by" not in text  # no listing's text, only summaries


def test_a_changed_profile_file_is_refused(bundle, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    profile = copy / json.loads((copy / MANIFEST).read_text())["profile"]["file"]
    profile.write_text(profile.read_text().replace("0.", "1.", 1))
    with pytest.raises(FbmlError, match="checksum"):
        load_bundle(copy)


# --- same market: nothing; planted shifts: named ------------------------------------------------------------


def test_listings_of_the_same_market_raise_nothing(bundle, new, capsys) -> None:
    status, result = monitor(bundle, new, capsys)
    assert status == 0, drifted(result)
    assert result["drift"] is False and not drifted(result)
    names = {check["name"] for check in result["checks"]}
    assert {"products.price.psi", "products.category.js_distance", "photos.brightness.psi",
            "predictions.text.confidence.wasserstein", "text.words.unknown"} <= names
    assert all(set(check) == {"name", "statistic", "value", "threshold", "drifted"} for check in result["checks"])


def test_the_order_of_the_new_listings_changes_no_check(bundle, new) -> None:
    """The same clean listings in another order: the same value for every check (raw rows in another order may
    keep another of two rows with one id, so the clean tables themselves are shuffled)."""
    import attrs
    from fbml.tables.clean import clean_tables
    from fbml.workflows.profiling import listing_observations

    loaded = load_bundle(bundle)
    assert loaded.profile is not None
    tables = clean_tables(new["products"], new["images"])
    assert tables.manifest is not None
    shuffled = attrs.evolve(
        tables,
        cleaned=attrs.evolve(tables.cleaned, products=tables.cleaned.products.sample(fraction=1.0, shuffle=True, seed=3)),
        manifest=attrs.evolve(tables.manifest, images=tables.manifest.images.sample(fraction=1.0, shuffle=True, seed=4)),
    )
    first, again = (compared(loaded.profile, listing_observations(loaded, each, None, None)) for each in (tables, shuffled))
    assert len(first.checks) > 10
    assert {check.name: pytest.approx(check.value, abs=1e-6) for check in first.checks} == {check.name: check.value for check in again.checks}


def test_prices_times_100_are_named(bundle, new, capsys, tmp_path: Path) -> None:
    products = _raw(new).with_columns(pl.col("price").str.replace(r"\.", "00."))
    status, result = monitor(bundle, _shifted(new, tmp_path, products), capsys)
    assert status == 1
    assert {"products.price.psi", "products.price.wasserstein"} <= drifted(result)
    assert not any(name.startswith(("photos.", "text.")) for name in drifted(result))


def test_dropped_descriptions_are_named(bundle, new, capsys, tmp_path: Path) -> None:
    products = _raw(new).with_columns(pl.lit(None, pl.String).alias("product_description"))
    status, result = monitor(bundle, _shifted(new, tmp_path, products), capsys)
    assert status == 1
    assert {"products.missing.description", "text.length.psi"} <= drifted(result)
    assert not any(name.startswith(("photos.", "products.price")) for name in drifted(result))


def test_darkened_photos_are_named(bundle, new, capsys, tmp_path: Path) -> None:
    dark = tmp_path / "dark"
    dark.mkdir()
    for photo in new["image_dir"].iterdir():
        with Image.open(photo) as image:
            Image.eval(image.convert("RGB"), lambda value: value * 2 // 5).save(dark / photo.name, "JPEG", quality=90)
    status, result = monitor(bundle, _shifted(new, tmp_path, image_dir=dark), capsys)
    assert status == 1
    assert {"photos.brightness.psi", "photos.brightness.wasserstein"} <= drifted(result)
    assert not any(name.startswith(("products.", "text.", "predictions.")) for name in drifted(result))


def test_a_flooded_category_is_named_and_reported(bundle, new, capsys, tmp_path: Path) -> None:
    raw = _raw(new)
    flood = raw["category"][0]
    products = raw.with_columns(pl.when(pl.int_range(pl.len()) % 3 != 0).then(pl.lit(flood)).otherwise(pl.col("category"))
                                .alias("category"))
    report = tmp_path / "report"
    status, result = monitor(bundle, _shifted(new, tmp_path, products), capsys, "--report", str(report))
    assert status == 1
    assert "products.category.js_distance" in drifted(result)
    page = (report / "index.html").read_text()
    assert "products.category.js_distance" in page
    pictures = sorted(path.name for path in report.glob("*.png"))
    assert len(pictures) == len(drifted(result)) and any("products-category" in name for name in pictures)


def test_the_table_names_what_drifted(bundle, new, capsys, tmp_path: Path) -> None:
    products = _raw(new).with_columns(pl.col("price").str.replace(r"\.", "00."))
    changed = _shifted(new, tmp_path, products)
    capsys.readouterr()
    assert main(["monitor", str(bundle), *_data(changed)]) == 1
    out = capsys.readouterr().out
    assert "products.price.psi" in out and out.strip().splitlines()[-1].startswith("drift: ")


# --- bad input: exit 2, one line, before the long work ------------------------------------------------------


def test_a_bundle_without_a_profile_exits_2_in_one_line(bundle, new, capsys, tmp_path: Path) -> None:
    import attrs

    older = tmp_path / "older"
    save_bundle(attrs.evolve(load_bundle(bundle), profile=None), older)
    assert "profile" not in json.loads((older / MANIFEST).read_text()) or json.loads((older / MANIFEST).read_text())["profile"] is None
    capsys.readouterr()
    assert main(["monitor", str(older), *_data(new)]) == 2
    err = capsys.readouterr().err
    assert "no training profile" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    ([], "give --products"),
    (["--images", "x.csv"], "come with --products"),
    (["--products", "missing.csv", "--images", "missing.csv"], "missing.csv"),
    (["--predictions", "no-such-folder"], "no such prediction log folder"),
])
def test_bad_inputs_exit_2_in_one_line(bundle, capsys, tmp_path: Path, args: list[str], message: str) -> None:
    capsys.readouterr()
    assert main(["monitor", str(bundle), *(arg if arg.startswith("--") else str(tmp_path / arg) for arg in args)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# --- the profile's JSON is checked ----------------------------------------------------------------------


def _profile_json() -> dict:
    observations = Observations({"a": np.arange(100.0)}, {"c": ["x", "y", "y"]})
    return profile_to_json(observations.profile())


def test_a_profile_round_trips() -> None:
    value = _profile_json()
    assert profile_to_json(profile_from_json(json.loads(json.dumps(value)))) == value


@pytest.mark.parametrize(("change", "message"), [
    (lambda v: v["numeric"]["a"].update(shares=[0.5] * len(v["numeric"]["a"]["shares"])), "sum to"),
    (lambda v: v["numeric"]["a"].update(edges=v["numeric"]["a"]["edges"][::-1]), "do not increase"),
    (lambda v: v["numeric"]["a"]["quantiles"].__setitem__(0, float("nan")), "not finite"),
    (lambda v: v["numeric"]["a"].update(scale=-1.0), "scale"),
    (lambda v: v["numeric"]["a"].update(quantiles=[1.0]), "Expected `array` of length"),
    (lambda v: v.update(vectors=[[0.0] * 3] * 300), "length <= 256"),
    (lambda v: v.update(vectors=[[0.0, 1.0], [0.0]]), "one non-zero width"),
    (lambda v: v.update(rates={"r": {"total": 1, "counts": {"x": 2}}}), "more than its total"),
    (lambda v: v.update(format="fbml.profile/9"), "format"),
    (lambda v: v.update(surprise=1), "unknown field"),
])
def test_a_broken_profile_is_refused_with_what_is_wrong(change, message: str) -> None:
    value = _profile_json()
    change(value)
    with pytest.raises(FbmlError, match=message):
        profile_from_json(value)


# --- effect sizes: symmetric, order-free, and sized to catch what matters -----------------------------------

shares = arrays(np.float64, 6, elements=st.floats(0.0, 1.0)).filter(lambda a: a.sum() > 0).map(lambda a: a / a.sum())
samples = arrays(np.float64, st.integers(5, 60), elements=st.floats(-1e3, 1e3))


@given(shares, shares)
def test_psi_is_symmetric(first: np.ndarray, second: np.ndarray) -> None:
    assert drift.psi(first, second) == pytest.approx(drift.psi(second, first))
    assert drift.psi(first, first) == 0


@given(samples, samples, st.floats(0.01, 100))
def test_wasserstein_is_symmetric(first: np.ndarray, second: np.ndarray, scale: float) -> None:
    levels = np.linspace(0.01, 0.99, 99)
    a, b = np.quantile(first, levels), np.quantile(second, levels)
    assert drift.wasserstein(a, b, scale) == pytest.approx(drift.wasserstein(b, a, scale))


@given(st.dictionaries(st.sampled_from("abcdef"), st.floats(0.01, 1), min_size=1),
       st.dictionaries(st.sampled_from("abcdef"), st.floats(0.01, 1), min_size=1))
def test_js_distance_is_symmetric_and_bounded(first: dict[str, float], second: dict[str, float]) -> None:
    p = {key: value / sum(first.values()) for key, value in first.items()}
    q = {key: value / sum(second.values()) for key, value in second.items()}
    assert drift.js_distance(p, q) == pytest.approx(drift.js_distance(q, p))
    assert 0 <= drift.js_distance(p, q) <= 1 + 1e-9


@given(samples, samples, st.randoms(use_true_random=False))
def test_checks_do_not_depend_on_row_order(reference: np.ndarray, values: np.ndarray, rng) -> None:
    labels = [str(int(value) % 4) for value in values]
    profile = Observations({"x": reference}, {"c": [str(int(value) % 3) for value in reference]}).profile()
    order = list(range(len(values)))
    rng.shuffle(order)
    first = compared(profile, Observations({"x": np.repeat(values, 4)}, {"c": labels * 4}))
    again = compared(profile, Observations({"x": np.repeat(values[order], 4)}, {"c": [labels[i] for i in order] * 4}))
    assert [(check.name, check.value) for check in first.checks] == [(check.name, pytest.approx(check.value)) for check in again.checks]
    shuffled = reference.copy()
    rng.shuffle(shuffled)
    assert numeric_summary(shuffled) == numeric_summary(reference)


def test_the_domain_classifier_tells_shifted_vectors_apart_and_not_others() -> None:
    rng = np.random.default_rng(0)
    reference, same = rng.normal(size=(200, 40)), rng.normal(size=(300, 40))
    shifted = same + np.where(np.arange(40) < 4, 0.8, 0.0)
    threshold = drift.auc_threshold(200, 300)
    assert drift.domain_auc(reference, same) < threshold < drift.domain_auc(reference, shifted)
    order = rng.permutation(300)
    assert drift.domain_auc(reference, shifted[order]) == pytest.approx(drift.domain_auc(reference, shifted))


def test_vectors_compare_through_the_profile() -> None:
    rng = np.random.default_rng(1)
    profile = Observations(vectors=rng.normal(size=(200, 16))).profile()
    assert not compared(profile, Observations(vectors=rng.normal(size=(200, 16)))).drift
    moved = compared(profile, Observations(vectors=rng.normal(size=(200, 16)) + 1.0))
    assert moved.drift and [check.name for check in moved.checks] == ["listings.vectors.domain_auc"]
    other = compared(profile, Observations(vectors=rng.normal(size=(200, 8))))
    assert not other.checks and "8" in other.notes[0]


def test_a_profile_is_a_msgspec_struct_that_refuses_unknown_fields() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"format": "fbml.profile/1", "rows": []}, Profile)


# --- real data: unseen products of the real market raise nothing --------------------------------------------


def test_unseen_real_products_raise_nothing(real_data: Path, tmp_path: Path) -> None:
    """The real bundle (``$FBML_REAL_BUNDLE`` where set: one trained on the real data with ``--keep-test-split``, split
    seed 0) profiled as training would, with its models' features on half of its test split; the other half
    (products it never trained on) compared. Without one, the data's checks alone."""
    import hashlib

    from fbml.bundle.bundle import Bundle
    from fbml.tables.clean import clean_tables, restricted_tables
    from fbml.tables.splits import split_tables
    from fbml.text.labels import label_codec
    from fbml.workflows.inputs import decoded_photos
    from fbml.workflows.profiling import listing_observations, photo_side

    tables = clean_tables(real_data / "Products.csv", real_data / "Images.csv")
    bundle_dir = os.environ.get("FBML_REAL_BUNDLE")
    # without the real bundle, the data's checks alone (a bundle of no model observes no predictions)
    real = load_bundle(bundle_dir) if bundle_dir else Bundle(label_codec(tables.cleaned.products["category"]))
    test_ids = split_tables(tables, seed=0).products.test["id"].to_list()
    halves = ([], [])
    for identifier in test_ids:
        halves[hashlib.sha256(identifier.encode()).digest()[0] % 2].append(identifier)
    held_out, unseen = (restricted_tables(tables, pl.col("id").is_in(half)) for half in halves)
    reference = restricted_tables(tables, ~pl.col("id").is_in(halves[1]))
    photos = decoded_photos(tables, real_data / "images_224", tmp_path, photo_side(real), progress=False)
    profile = listing_observations(real, reference, photos, real_data / "images_224", held_out=held_out).profile()
    result = compared(profile, listing_observations(real, unseen, photos, real_data / "images_224"))
    print(result.table())
    assert not result.drift, [check.name for check in result.checks if check.drifted]


# --- serving feeds it: the prediction log read by monitor --------------------------------------------------


@pytest.fixture(scope="module")
def served_log(bundle, new, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prediction log of an app over the bundle that answered /predict/text for 80 of the new listings."""
    from fbml.serving.app import create_app
    from fbml.text.listings import listing_text
    from litestar.testing import TestClient

    folder = tmp_path_factory.mktemp("log") / "predictions"
    raw = _raw(new).head(80)
    with TestClient(create_app(load_bundle(bundle), log_predictions=folder)) as client:
        for name, description in raw.select("product_name", "product_description").iter_rows():
            answer = client.post("/predict/text", json={"text": listing_text(name, description)}, headers={"X-Request-ID": "r-1"})
            assert answer.status_code == 200
    return folder


def test_the_app_logs_one_row_per_prediction(served_log: Path) -> None:
    from fbml.workflows.prediction_log import read_prediction_log

    log = read_prediction_log(served_log)
    assert log.height == 80 and set(log["role"]) == {"text"} and set(log["request_id"]) == {"r-1"}
    assert log["photo_bytes"].is_null().all() and log["text_length"].min() > 0


def test_monitor_reads_the_prediction_log(bundle, served_log: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["monitor", str(bundle), "--predictions", str(served_log), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    names = {check["name"] for check in result["checks"]}
    assert {"served.predictions.text.confidence.psi", "served.predictions.text.category.js_distance",
            "served.text.length.psi"} <= names and not drifted(result)


def test_lower_confidence_in_the_log_is_named(bundle, served_log: Path, capsys, tmp_path: Path) -> None:
    from fbml.workflows.prediction_log import log_parts

    lower = tmp_path / "lower"
    lower.mkdir()
    for part in log_parts(served_log):
        pl.read_parquet(part).with_columns(pl.col("confidence") / 2).write_parquet(lower / part.name)
    capsys.readouterr()
    assert main(["monitor", str(bundle), "--predictions", str(lower), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert {"served.predictions.text.confidence.psi", "served.predictions.text.confidence.wasserstein"} <= drifted(result)
    assert not any("category" in name or "length" in name for name in drifted(result))
