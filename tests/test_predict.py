"""``fbml predict`` on a small sample marketplace with the bundle ``test_workflows`` trains: a row per clean product
(combined for a product with a photo, text for one without), every input row predicted or rejected, the answers
``fbml evaluate``, ``Bundle.predict`` and the HTTP API give, resume after a SIGKILL equal to an uninterrupted
run, the ONNX runtime, the Ray engine, listing vectors, one-line errors before any work, and a run that imports
only what it uses (neither pandera nor pandas; torch only with the torch runtime, ONNX Runtime only with its own)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import numpy as np
import polars as pl
import pytest
from contracts.bundle import Role
from fbml.bundle.store import load_bundle, read_manifest, save_bundle
from fbml.cli import main
from fbml.errors import FbmlError
from fbml.modeling.metrics import group_means, per_product, product_means
from fbml.tables.clean import clean_tables
from fbml.text.listings import listing_texts
from fbml.workflows.evaluate import evaluations
from fbml.workflows.predict import MIN_PARTS, PARTS, STATE, Decoding, PredictOptions, catalogue, default_part_size, scoring_roles
from fbml.workflows.predict import PART_SIZE as PART_SIZE_DEFAULT
from hypothesis import given
from hypothesis import strategies as st

from test_cli_imports import heavy_imports
from test_workflows import market, tables, trained  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PART_SIZE = 40


def arguments(market, bundle: Path, out: Path, *extra: str) -> list[str]:  # noqa: F811
    """``fbml predict``'s arguments for the market, scored in this process (unless ``extra`` says otherwise) on one
    inference thread (the module's torch threads stay one)."""
    workers = [] if "--workers" in extra or "--engine" in extra else ["--workers", "1"]
    return ["predict", str(bundle), "--products", str(market["products"]), "--images", str(market["images"]),
            "--image-dir", str(market["image_dir"]), "--out", str(out), "--device", "cpu", "--part-size", str(PART_SIZE),
            "--threads", "1", *workers, *extra]  # fmt: skip


def predict(market, bundle: Path, out: Path, *extra: str) -> int:  # noqa: F811
    return main(arguments(market, bundle, out, *extra))


@pytest.fixture(scope="module")
def predicted(market, trained, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("predicted")
    assert predict(market, trained["bundle"], out) == 0
    return out


@pytest.fixture(scope="module")
def onnx_bundle(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A copy of the trained bundle with ONNX graphs."""
    bundle = tmp_path_factory.mktemp("onnx") / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    assert main(["export-onnx", str(bundle)]) == 0
    return bundle


def probabilities_of(top: list[dict], classes: tuple[str, ...]) -> dict[str, float]:
    return {entry["category"]: entry["probability"] for entry in top if entry["category"] in classes}


# --- the table ----------------------------------------------------------------------------------------------


def test_a_row_per_clean_product_and_every_input_row_accounted_for(predicted: Path, market, tables, trained) -> None:  # noqa: F811
    rows = pl.read_parquet(predicted / "predictions.parquet")
    rejected = pl.read_parquet(predicted / "rejected.parquet")
    products = tables.cleaned.products
    assert rows["product_id"].to_list() == products["id"].to_list()  # clean products' order, each once
    assert rows.columns == ["product_id", "role", "category", "probability", "top", "subcategory", "subcategory_probability",
                            "model_version"]  # fmt: skip
    assert rows["model_version"].unique().to_list() == [load_bundle(trained["bundle"]).model_version]
    named = rows.filter(pl.col("subcategory").is_not_null())  # a child of the predicted category, when it has one
    assert named.height > rows.height / 2
    assert all(sub.startswith(category + " / ") for sub, category in zip(named["subcategory"], named["category"], strict=True))
    assert (named["subcategory_probability"] <= named["probability"] + 1e-6).all()
    photographed = set(tables.manifest.images["id"]) - set(rejected.filter(pl.col("stage") == "images")["raw"]
                                                            .str.json_path_match("$.id"))  # fmt: skip
    by_role = dict(zip(rows["product_id"], rows["role"], strict=True))
    assert {product for product, role in by_role.items() if role == "combined"} <= set(tables.manifest.images["id"])
    assert {product for product, role in by_role.items() if role == "text"}.isdisjoint(photographed)
    assert rows.filter(pl.col("role") == "combined").height > 100 and rows.filter(pl.col("role") == "text").height > 0
    # every products row predicted or rejected once; every photo row joined (or rejected by cleaning), and each
    # joined row's photo scored or rejected once with why
    assert rows.height + rejected.filter(pl.col("stage") == "products").height == tables.products_read
    photo_rejections = rejected.filter(pl.col("stage") == "images")
    by_cleaning = photo_rejections.filter(pl.col("source") == str(market["images"]))
    assert tables.manifest.images.height + by_cleaning.height == tables.images_read
    not_decoded = photo_rejections.filter(pl.col("source") == str(market["image_dir"]))
    assert not_decoded["source_row"].is_unique().all() and not_decoded["source_row"].max() <= tables.manifest.images.height
    assert not_decoded.height > 0 and set(not_decoded["reason"]) == {"photo file missing"}  # the sample's unreadable photos
    assert photo_rejections.height == by_cleaning.height + not_decoded.height
    for top, probability, category in rows.select("top", "probability", "category").iter_rows():
        assert top[0] == {"category": category, "probability": probability} and len(top) == 5
        assert [entry["probability"] for entry in top] == sorted((entry["probability"] for entry in top), reverse=True)


def test_combined_rows_are_evaluates_per_product_answers(predicted: Path, market, trained, tmp_path: Path) -> None:  # noqa: F811
    bundle = load_bundle(trained["bundle"])
    found = evaluations(bundle, clean_tables(market["products"], market["images"]), market["image_dir"], work_dir=tmp_path,
                        progress=False)[Role.COMBINED]  # fmt: skip
    ids, means = product_means(found.frame["id"].to_list(), found.probabilities)
    rows = pl.read_parquet(predicted / "predictions.parquet").filter(pl.col("role") == "combined")
    assert rows["product_id"].sort().to_list() == sorted(ids)
    expected = dict(zip(ids, means, strict=True))
    classes = bundle.codec.classes
    for product_id, category, probability, top in rows.select("product_id", "category", "probability", "top").iter_rows():
        mean = expected[product_id]
        assert category == classes[int(np.argmax(mean))]
        got = probabilities_of(top, classes)
        np.testing.assert_allclose([got[name] for name in got], [mean[classes.index(name)] for name in got], rtol=0, atol=1e-5)
        assert probability == pytest.approx(float(mean.max()), abs=1e-5)
    # so the per-product accuracy is evaluate's
    labels, _ = per_product(found.frame["id"].to_list(), found.labels, found.probabilities)
    truth = dict(zip(ids, (classes[label] for label in labels), strict=True))
    accuracy = np.mean([category == truth[product_id] for product_id, category in rows.select("product_id", "category").iter_rows()])
    assert accuracy == pytest.approx(found.scores.per_product.accuracy, abs=1e-9)


def test_rows_are_what_bundle_predict_and_the_http_api_answer(predicted: Path, market, trained, tables) -> None:  # noqa: F811
    from fbml.serving.app import create_app
    from litestar.testing import TestClient

    bundle = load_bundle(trained["bundle"])
    rows = pl.read_parquet(predicted / "predictions.parquet")
    products = tables.cleaned.products
    text_rows = rows.filter(pl.col("role") == "text").head(5)
    texts = listing_texts(products.filter(pl.col("id").is_in(text_rows["product_id"].implode())))
    for prediction, row in zip(bundle.predict_many(texts=texts, role="text"), text_rows.iter_rows(named=True), strict=True):
        assert (prediction.category, prediction.role) == (row["category"], "text")
        assert prediction.probabilities[row["category"]] == pytest.approx(row["probability"], abs=1e-6)
    # a product with one photo: its combined row is Bundle.predict's and the API's answer for its text and photo
    manifest = tables.manifest.images
    single = manifest.group_by("id").len().filter(pl.col("len") == 1)["id"]
    chosen = rows.filter((pl.col("role") == "combined") & pl.col("product_id").is_in(single.implode())).head(3)
    files = {path.stem: path for path in market["image_dir"].iterdir()}
    with TestClient(create_app(bundle)) as client:
        for row in chosen.iter_rows(named=True):
            photo_row = manifest.filter(pl.col("id") == row["product_id"])
            text, photo = listing_texts(photo_row)[0], files[photo_row["image_id"][0]]
            prediction = bundle.predict(text=text, image=photo)
            assert prediction.category == row["category"]
            assert prediction.probabilities[row["category"]] == pytest.approx(row["probability"], abs=1e-5)
            answer = client.post("/predict/combined", files={"image": ("photo.jpg", photo.read_bytes()), "text": (None, text)})
            assert answer.status_code == 200, answer.text
            assert answer.json()["category"] == row["category"]
            assert answer.json()["probabilities"][row["category"]] == pytest.approx(row["probability"], abs=1e-5)


# --- resume -------------------------------------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux's ``/proc``)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def test_resume_after_sigkill_equals_an_uninterrupted_run(predicted: Path, market, trained, tmp_path: Path) -> None:  # noqa: F811
    """Killed while two worker processes score its parts: the workers leave on their own, and the resumed run (in
    one process) ends with the uninterrupted run's tables."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fbml.cli", "predict", str(trained["bundle"]), "--products", str(market["products"]),
               "--images", str(market["images"]), "--image-dir", str(market["image_dir"]), "--out", str(out),
               "--device", "cpu", "--part-size", "5", "--threads", "1"]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*command, "--workers", "2"], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list((out / PARTS).glob("part-*.parquet"))) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        workers = children_of(process.pid)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    written = sorted((out / PARTS).glob("part-*.parquet"))
    assert process.returncode == -signal.SIGKILL and not (out / "predictions.parquet").exists()
    assert len(workers) >= 2  # the two workers (and the resource tracker, which leaves with them)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a killed run's workers lingered"
    assert 2 <= len(written) < json.loads((out / PARTS / STATE).read_text())["parts"]
    before = {path: path.stat().st_mtime_ns for path in written}
    stale = out / PARTS / f".{written[-1].name}.0123abcd.tmp"  # as a kill in the middle of a write leaves
    stale.write_bytes(b"half a part")
    completed = subprocess.run([*command, "--workers", "1", "--resume"], env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert f"resumed: {len(written)} part(s) were written already" in completed.stdout
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in before.items())  # not scored again
    assert not stale.exists()
    for name in ("predictions.parquet", "rejected.parquet"):
        resumed, uninterrupted = pl.read_parquet(out / name), pl.read_parquet(predicted / name)
        if name == "predictions.parquet":
            noisy = ("top", "probability", "subcategory_probability")  # a batch's composition moves floats by an ULP
            assert resumed.drop(*noisy).equals(uninterrupted.drop(*noisy))
            for column in ("probability", "subcategory_probability"):
                np.testing.assert_allclose(resumed[column].fill_null(0.0).to_numpy(), uninterrupted[column].fill_null(0.0).to_numpy(),
                                           rtol=0, atol=1e-6)
        else:
            assert resumed.sort(resumed.columns).equals(uninterrupted.sort(uninterrupted.columns))


def test_resume_refuses_the_parts_of_another_bundle_or_input(market, trained, tmp_path: Path, capsys) -> None:  # noqa: F811
    out = tmp_path / "out"
    (out / PARTS).mkdir(parents=True)
    state = {"format": "fbml.predict/1", "model_version": "another", "runtime": "torch", "products": "x", "images": "y",
             "image_dir": str(market["image_dir"].resolve()), "part_size": PART_SIZE, "parts": 4, "embeddings": False}
    (out / PARTS / STATE).write_text(json.dumps(state))
    capsys.readouterr()
    assert predict(market, trained["bundle"], out, "--resume") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "model_version, products, images" in error and "differ" in error
    (out / PARTS / "notes.txt").write_text("mine")
    (out / PARTS / STATE).unlink()
    assert predict(market, trained["bundle"], out) == 2
    assert "is not the parts of an fbml predict run" in capsys.readouterr().err


# --- runtimes, engines, vectors -------------------------------------------------------------------------------


def test_the_onnx_runtime_gives_the_torch_answers(predicted: Path, market, onnx_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    assert predict(market, onnx_bundle, tmp_path / "out", "--runtime", "onnx") == 0
    onnx, torch_rows = pl.read_parquet(tmp_path / "out" / "predictions.parquet"), pl.read_parquet(predicted / "predictions.parquet")
    assert onnx.select("product_id", "role", "category").equals(torch_rows.select("product_id", "role", "category"))
    np.testing.assert_allclose(onnx["probability"].to_numpy(), torch_rows["probability"].to_numpy(), rtol=0, atol=1e-4)


def test_a_run_loads_only_the_predictors_it_uses_and_answers_as_whole(predicted: Path, market, trained, tmp_path: Path) -> None:  # noqa: F811
    """Without photos a run needs the text predictor alone, with photos the combined one too, with embeddings all;
    a bundle loaded with some roles holds their models only, no index or profile, answers as the whole bundle
    does, and cannot be saved. A texts-only run writes the rows the full run wrote for products without photos."""
    manifest = read_manifest(trained["bundle"])
    assert scoring_roles(manifest, photos=False, embeddings=False) == {Role.TEXT}
    assert scoring_roles(manifest, photos=True, embeddings=False) == {Role.TEXT, Role.COMBINED}
    assert scoring_roles(manifest, photos=True, embeddings=True) is None
    whole = load_bundle(trained["bundle"])
    text_only = load_bundle(trained["bundle"], roles=[Role.TEXT])
    assert set(text_only.predictors) == {Role.TEXT} and text_only.partial and not whole.partial
    assert set(text_only.models) == {member for member, _ in whole.predictor(Role.TEXT).ensemble.members}
    assert text_only.index is None and text_only.profile is None and text_only.subcategories is not None
    assert whole.index is not None and whole.profile is not None
    assert text_only.model_version == whole.model_version
    texts = ["Oak dining table and four chairs", "Crème brûlée dish set, Le Creuset", "Mountain bike, 21 gears"]
    assert text_only.predict_many(texts=texts) == whole.predict_many(texts=texts)
    with pytest.raises(FbmlError, match="load it whole to save it"):
        save_bundle(text_only, tmp_path / "copy")
    with pytest.raises(FbmlError, match="unknown predictor 'photo'"):
        load_bundle(trained["bundle"], roles=["photo"])
    lacking = tmp_path / "lacking"
    shutil.copytree(trained["bundle"], lacking)
    content = json.loads((lacking / "bundle.json").read_text())
    del content["predictors"]["image"]
    (lacking / "bundle.json").write_text(json.dumps(content))
    with pytest.raises(FbmlError, match="the bundle has no image predictor"):
        load_bundle(lacking, roles=[Role.IMAGE, Role.TEXT])
    out = tmp_path / "texts"
    assert main(["predict", str(trained["bundle"]), "--products", str(market["products"]), "--out", str(out), "--device", "cpu",
                 "--part-size", str(PART_SIZE), "--threads", "1"]) == 0  # fmt: skip
    texts_run = pl.read_parquet(out / "predictions.parquet")
    full = pl.read_parquet(predicted / "predictions.parquet").filter(pl.col("role") == "text")
    assert (texts_run["role"] == "text").all() and full.height > 0
    assert texts_run.filter(pl.col("product_id").is_in(full["product_id"].implode())).equals(full)


def test_embeddings_are_the_bundles_listing_vectors(market, trained, tables, tmp_path: Path) -> None:  # noqa: F811
    assert predict(market, trained["bundle"], tmp_path / "out", "--embeddings") == 0
    rows = pl.read_parquet(tmp_path / "out" / "predictions.parquet")
    bundle = load_bundle(trained["bundle"])
    vectors = rows["embedding"].to_numpy()
    assert vectors.shape == (rows.height, bundle.listing_width())
    text_only = rows.filter(pl.col("role") == "text").head(3)
    products = tables.cleaned.products.filter(pl.col("id").is_in(text_only["product_id"].implode()))
    expected = bundle.embed_many(texts=listing_texts(products))
    got = np.stack(text_only["embedding"].to_list())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_the_ray_engine_writes_the_same_table(predicted: Path, market, trained, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    assert predict(market, trained["bundle"], tmp_path / "out", "--engine", "ray") == 0
    for name in ("predictions.parquet", "rejected.parquet"):
        by_ray, by_default = pl.read_parquet(tmp_path / "out" / name), pl.read_parquet(predicted / name)
        if name == "predictions.parquet":
            noisy = ("top", "probability", "subcategory_probability")  # a batch's composition moves floats by an ULP
            assert by_ray.drop(*noisy).equals(by_default.drop(*noisy))
            np.testing.assert_allclose(by_ray["probability"].to_numpy(), by_default["probability"].to_numpy(), rtol=0, atol=1e-6)
        else:
            assert by_ray.equals(by_default)


def test_worker_processes_write_the_same_table(predicted: Path, market, trained, tmp_path: Path, capsys) -> None:  # noqa: F811
    """Two worker processes, each loading the bundle once and scoring whole parts, write the table one process wrote;
    a bundle that a worker cannot load ends the run in one line, its workers stopped."""
    assert predict(market, trained["bundle"], tmp_path / "out", "--workers", "2") == 0
    for name in ("predictions.parquet", "rejected.parquet"):
        by_workers, by_one = pl.read_parquet(tmp_path / "out" / name), pl.read_parquet(predicted / name)
        assert by_workers.equals(by_one), name
    broken = tmp_path / "broken"
    shutil.copytree(trained["bundle"], broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # the manifest reads; the weights' checksums fail
    before = children_of(os.getpid())
    capsys.readouterr()
    assert predict(market, broken, tmp_path / "broken-out", "--workers", "2") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "does not match its checksum" in error, error
    assert children_of(os.getpid()) <= before


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_a_run_imports_only_its_runtime(predicted: Path, market, onnx_bundle: Path, runtime: str, tmp_path: Path) -> None:  # noqa: F811
    """Cleaning, photo decoding and the rejected rows are checked by the contracts' rules: no pandera, no pandas;
    the networks run on the runtime asked for, and only it is imported. The table is the default run's."""
    heavy, printed = heavy_imports(*arguments(market, onnx_bundle, tmp_path / "out", "--runtime", runtime))
    assert heavy == [runtime if runtime == "torch" else "onnxruntime"]
    assert "photos: " in printed and "wrote" in printed
    rows, expected = pl.read_parquet(tmp_path / "out" / "predictions.parquet"), pl.read_parquet(predicted / "predictions.parquet")
    assert rows.select("product_id", "role", "category").equals(expected.select("product_id", "role", "category"))
    assert pl.read_parquet(tmp_path / "out" / "rejected.parquet").equals(pl.read_parquet(predicted / "rejected.parquet"))


def test_photos_decoded_while_the_bundle_loads_are_redone_if_it_reads_another_side(market, trained, tmp_path: Path) -> None:  # noqa: F811
    bundle = load_bundle(trained["bundle"])
    assert bundle.image is not None
    scored = catalogue(market["products"], market["images"], market["image_dir"], scratch=tmp_path, part_size=PART_SIZE)
    assert list(tmp_path.iterdir()) == []  # the cleaning's folder is gone
    with ThreadPoolExecutor(max_workers=1) as pool:
        early = Decoding.early(read_manifest(trained["bundle"]), scored, PredictOptions(), pool, scored.parts[1])
        assert early.for_bundle(bundle, scored) is early and set(early.started) == {1}
        side = bundle.image.size + 8
        redone = early.for_bundle(attrs.evolve(bundle, image=attrs.evolve(bundle.image, size=side)), scored)
        assert redone.started == {} and redone.source.size == side
        assert redone.part(scored.parts[1]).result().pixels.shape[1:] == (3, side, side)
        assert early.part(scored.parts[1]).result().pixels.shape[1:] == (3, side - 8, side - 8)


# --- errors before the work -----------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_before_any_work(market, trained, tmp_path: Path, capsys) -> None:  # noqa: F811
    bundle = trained["bundle"]
    cases = [
        (["--image-dir", str(tmp_path / "nowhere")], "no such photo folder"),
        (["--out", str(market["image_dir"] / "out")], "is inside the photo folder"),
        (["--out", str(bundle / "out")], "is inside the bundle"),
        (["--address", "auto"], "--address is for --engine ray"),
        (["--engine", "ray", "--workers", "2"], "--workers is for --engine polars"),
    ]
    (tmp_path / "file").write_text("x")
    cases.append((["--out", str(tmp_path / "file")], "exists and is not a folder"))
    for extra, message in cases:
        capsys.readouterr()
        assert predict(market, bundle, tmp_path / "out", *extra) == 2, extra
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, (extra, error)
    capsys.readouterr()
    assert predict(market, tmp_path, tmp_path / "out") == 2  # not a bundle
    assert capsys.readouterr().err.startswith("fbml: error:")
    assert not (tmp_path / "out" / "predictions.parquet").exists()


# --- the one aggregation ---------------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**7))
def test_default_parts_are_at_most_part_size_and_at_least_min_parts_when_there_are_products_enough(products: int) -> None:
    size = default_part_size(products)
    parts = -(-products // size)
    assert 1 <= size <= PART_SIZE_DEFAULT
    assert parts >= min(MIN_PARTS, products) and (size == PART_SIZE_DEFAULT or parts < 2 * MIN_PARTS)


@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=12))
def test_product_means_average_each_products_rows_in_first_seen_order(ids: list[str]) -> None:
    probabilities = np.random.default_rng(len(ids)).dirichlet(np.ones(3), size=len(ids)).astype(np.float32)
    products, means = product_means(ids, probabilities)
    assert products == list(dict.fromkeys(ids))
    for product, mean in zip(products, means, strict=True):
        rows = [row for row, identifier in enumerate(ids) if identifier == product]
        np.testing.assert_allclose(mean, probabilities[rows].mean(axis=0), rtol=1e-6)
    labels, per_product_means = per_product(ids, np.array([ord(identifier) for identifier in ids]), probabilities)
    assert np.array_equal(per_product_means, means) and [chr(label) for label in labels] == products



@given(st.lists(st.integers(0, 4), max_size=12))
def test_group_means_average_each_groups_rows_and_leave_empty_groups_zero(groups: list[int]) -> None:
    values = np.random.default_rng(len(groups)).normal(size=(len(groups), 3)).astype(np.float32)
    means = group_means(np.asarray(groups, np.int64), values, 5)
    assert means.shape == (5, 3) and means.dtype == np.float32
    for group in range(5):
        rows = [row for row, member in enumerate(groups) if member == group]
        expected = values[rows].mean(axis=0) if rows else np.zeros(3, np.float32)
        np.testing.assert_allclose(means[group], expected, rtol=1e-5, atol=1e-6)
