"""``fbml train`` and ``fbml evaluate`` end to end on a small sample marketplace: three models into one
bundle, evaluation of all three, unknown categories, ``--resume``, and determinism for a seed."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from fbml import training
from fbml.bundle import MANIFEST, load_bundle
from fbml.cli import main
from fbml.pipeline import clean_tables

PRODUCTS = 100
IMAGE_SIZE = 32
EPOCHS = {"text": 2, "image": 1, "combined": 1}
UNKNOWN = "Mystery Items"


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 100-product sample with its photos cleaned to 32 px."""
    from fbml.images import clean_images
    from fbml.sample import write_sample

    root = tmp_path_factory.mktemp("market")
    sample = write_sample(root / "raw", products=PRODUCTS, seed=0)
    report = clean_images(sample.image_dir, root / "photos", size=IMAGE_SIZE, workers=1, progress=False)
    assert report.cleaned > 0 and report.rejected == sample.defects.unreadable_photos
    return {"products": sample.products_csv, "images": sample.images_csv, "image_dir": root / "photos", "root": root}


def data_args(market: dict[str, Path], products: Path | None = None) -> list[str]:
    return ["--products", str(products or market["products"]), "--images", str(market["images"]),
            "--image-dir", str(market["image_dir"])]


def train(market, bundle: Path, kind: str, *extra: str, work_dir: Path | None = None) -> int:
    """``fbml train``: text for two epochs (so that there is something to resume), the others for one."""
    image = ["--image-size", str(IMAGE_SIZE)] if kind != "text" else []
    work = ["--work-dir", str(work_dir)] if work_dir else []
    return main(["train", "--model", kind, "--epochs", str(EPOCHS[kind]), *image, *work, *extra, *data_args(market),
                 "--out", str(bundle)])


def evaluate(market, bundle: Path, capsys, products: Path | None = None) -> dict:
    capsys.readouterr()
    assert main(["evaluate", str(bundle), *data_args(market, products), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(market, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``fbml train`` text, then image, then combined, into one bundle; the manifest after each step."""
    bundle = tmp_path_factory.mktemp("trained") / "bundle"
    manifests = {}
    for kind in ("text", "image", "combined"):
        assert train(market, bundle, kind) == 0, kind
        manifests[kind] = json.loads((bundle / MANIFEST).read_text())
    return {"bundle": bundle, "manifests": manifests}


@pytest.fixture(scope="module")
def tables(market):
    return clean_tables(market["products"], market["images"])


# --- train ---------------------------------------------------------------------------------------------


def test_three_models_trained_into_one_bundle(trained) -> None:
    manifests = trained["manifests"]
    assert list(manifests["text"]["models"]) == ["text"]
    assert list(manifests["image"]["models"]) == ["text", "image"]
    assert list(manifests["combined"]["models"]) == ["text", "image", "combined"]
    # adding a model leaves the earlier ones and the shared files as they were
    assert manifests["combined"]["models"]["text"] == manifests["text"]["models"]["text"]
    assert manifests["combined"]["models"]["image"] == manifests["image"]["models"]["image"]
    assert manifests["combined"]["text"] == manifests["text"]["text"]
    assert manifests["combined"]["codec"] == manifests["text"]["codec"]
    assert manifests["combined"]["image"]["size"] == IMAGE_SIZE


def test_bundle_reports_the_training(trained, tables) -> None:
    bundle = load_bundle(trained["bundle"])
    assert bundle.codec.classes == tuple(sorted(set(tables.cleaned.products["category"])))
    for kind, entry in bundle.models.items():
        history = entry.report["history"]
        assert [epoch["epoch"] for epoch in history["epochs"]] == list(range(1, EPOCHS[kind] + 1)), kind
        assert (0 if kind == "combined" else 1) <= history["best_epoch"] <= EPOCHS[kind]  # 0: kept its start
        for split in ("per_example", "per_product"):
            assert 0.0 <= entry.report["test"][split]["accuracy"] <= 1.0
        assert entry.report["config"]["kind"] == kind
        assert entry.report["config"]["config"]["epochs"] == EPOCHS[kind]
    assert bundle.models["combined"].options == {"image": bundle.models["image"].options,
                                                 "text": bundle.models["text"].options}


def test_combined_model_keeps_the_trained_text_branch(trained) -> None:
    """Started from a trained text model, the combined model trains the photo's side only."""
    bundle = load_bundle(trained["bundle"])
    text, combined = bundle.models["text"].module.state_dict(), bundle.models["combined"].module.text.state_dict()
    assert text.keys() == combined.keys()
    for name in text:
        assert torch.equal(text[name], combined[name]), name
    history = bundle.models["combined"].report["history"]
    assert history["start"] is not None and 0.0 <= history["start"]["validation_accuracy"] <= 1.0


def test_another_image_size_is_refused(market, trained, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "bundle"
    copy.mkdir()
    for file in trained["bundle"].iterdir():
        (copy / file.name).symlink_to(file)
    capsys.readouterr()
    code = main(["train", "--model", "combined", "--epochs", "1", "--image-size", "48", *data_args(market),
                 "--out", str(copy)])
    assert code == 2
    assert "the bundle's image models use 32 px photos, not 48" in capsys.readouterr().err


def test_image_model_needs_photos(market, tmp_path: Path, capsys) -> None:
    code = main(["train", "--model", "image", "--products", str(market["products"]), "--images",
                 str(market["images"]), "--out", str(tmp_path / "b")])
    assert code == 2
    assert "needs an images table and --image-dir" in capsys.readouterr().err


# --- evaluate ------------------------------------------------------------------------------------------


def check_scores(scores: dict, classes: int) -> None:
    for level in ("per_example", "per_product"):
        report = scores[level]
        assert 0.0 <= report["accuracy"] <= 1.0
        assert 0.0 <= report["macro_f1"] <= 1.0
        matrix = report["confusion"]
        assert len(matrix) == classes and all(len(row) == classes for row in matrix)
        assert sum(map(sum, matrix)) == report["examples"]
        assert report["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(classes)) / report["examples"])


def test_evaluate_lists_every_model(market, trained, tables, capsys) -> None:
    results = evaluate(market, trained["bundle"], capsys)
    classes = tables.cleaned.products["category"].n_unique()
    assert set(results) == {"text", "image", "combined"}
    for scores in results.values():
        check_scores(scores, classes)
    products = tables.cleaned.products.height
    photos = tables.manifest.images.height
    products_with_photos = tables.manifest.images["id"].n_unique()
    assert results["text"]["per_example"]["examples"] == products
    assert results["text"]["per_product"]["examples"] == products
    assert results["text"]["excluded"] == 0
    for kind in ("image", "combined"):
        # every photo row is scored or counted as left out (the unreadable ones were not cleaned)
        assert results[kind]["per_example"]["examples"] + results[kind]["excluded"] == photos
        assert results[kind]["excluded"] >= 1
        assert results[kind]["per_product"]["examples"] <= products_with_photos


@pytest.fixture(scope="module")
def unknown_category_products(market) -> tuple[Path, int]:
    """The products table with the category of ten clean products changed to one the codec lacks."""
    raw = pl.read_csv(market["products"], infer_schema=False)
    clean_ids = set(clean_tables(market["products"]).cleaned.products["id"])
    chosen = [identifier for identifier in raw["id"] if identifier in clean_ids][:10]
    changed = raw.with_columns(
        pl.when(pl.col("id").is_in(chosen)).then(pl.lit(f"{UNKNOWN} / Odd Things")).otherwise(pl.col("category"))
        .alias("category")
    )
    path = market["root"] / "unknown-products.csv"
    changed.write_csv(path)
    return path, len(chosen)


def test_evaluate_excludes_an_unknown_category(market, trained, unknown_category_products, capsys) -> None:
    """Products of a category the codec lacks are left out and counted, not a crash (the table output)."""
    path, changed = unknown_category_products
    tables = clean_tables(path, market["images"])
    assert tables.cleaned.products.filter(pl.col("category") == UNKNOWN).height == changed
    unknown_photos = tables.manifest.images.filter(pl.col("category") == UNKNOWN).height
    assert unknown_photos > changed  # some of them have several photos: products and photos differ
    capsys.readouterr()
    assert main(["evaluate", str(trained["bundle"]), *data_args(market, path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["model", "examples", "accuracy", "macro-F1"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    assert list(rows) == ["text", "image", "combined"]
    classes = load_bundle(trained["bundle"]).codec.num_classes
    assert lines[-1].startswith(f"classes: {classes}; rows left out (no photo or unknown category): ")
    excluded = {part.split()[0]: int(part.split()[1]) for part in lines[-1].split("category): ", 1)[1].split(", ")}
    for kind, (examples, accuracy, macro_f1, products, product_accuracy, product_f1) in rows.items():
        assert all(0.0 <= float(value) <= 1.0 for value in (accuracy, macro_f1, product_accuracy, product_f1))
        if kind == "text":
            assert int(examples) == int(products) == tables.cleaned.products.height - changed
            assert excluded[kind] == changed
        else:  # photo rows: each one scored or left out, the unknown category's photos among those left out
            assert int(examples) + excluded[kind] == tables.manifest.images.height
            assert excluded[kind] >= unknown_photos


def test_training_data_with_an_unknown_category_is_refused(market, trained, unknown_category_products, tmp_path,
                                                           capsys) -> None:
    path, _ = unknown_category_products
    copy = tmp_path / "bundle"
    copy.mkdir()
    for file in trained["bundle"].iterdir():
        (copy / file.name).symlink_to(file)
    capsys.readouterr()
    code = main(["train", "--model", "text", "--epochs", "1", *data_args(market, path), "--out", str(copy)])
    assert code == 2
    assert f"the data has categories the bundle's codec lacks: ['{UNKNOWN}']" in capsys.readouterr().err


# --- resume and determinism ----------------------------------------------------------------------------


def test_resume_from_the_command_line(market, trained, tmp_path: Path, monkeypatch, capsys) -> None:
    """Interrupt ``fbml train`` after its first epoch's checkpoint, then ``--resume``: the run completes
    with each epoch once, and ends with the same model as the uninterrupted run of the fixture."""
    bundle, work = tmp_path / "bundle", tmp_path / "work"
    real_save = training._save_checkpoint
    epochs_saved = []

    def save_then_interrupt(directory, model, optimizer, schedule, state):
        real_save(directory, model, optimizer, schedule, state)
        epochs_saved.append(len(state.history))
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_interrupt)
    assert train(market, bundle, "text", work_dir=work) == 130
    assert "fbml: interrupted" in capsys.readouterr().err
    assert epochs_saved == [1]
    assert not (bundle / MANIFEST).exists()  # nothing saved into the bundle by the interrupted run
    monkeypatch.undo()

    assert train(market, bundle, "text", "--resume", work_dir=work) == 0
    assert "text model: 2 epochs" in capsys.readouterr().out
    resumed = json.loads((bundle / MANIFEST).read_text())["models"]["text"]
    assert [epoch["epoch"] for epoch in resumed["report"]["history"]["epochs"]] == [1, 2]
    uninterrupted = trained["manifests"]["text"]["models"]["text"]
    assert resumed["weights"]["sha256"] == uninterrupted["weights"]["sha256"]


def test_training_twice_gives_the_same_bundle(market, trained, tmp_path: Path, capsys) -> None:
    """Same data, model and seed, in the same process: byte-identical weights (a content-addressed file)."""
    bundle = tmp_path / "bundle"
    capsys.readouterr()
    assert train(market, bundle, "text") == 0
    out = capsys.readouterr().out
    assert f"text model: {EPOCHS['text']} epochs" in out and "test accuracy" in out
    assert (tmp_path / "bundle.work" / "runs" / "text").is_dir()  # TensorBoard by default next to the bundle
    assert (tmp_path / "bundle.work" / "checkpoints" / "text" / "last.pt").is_file()
    again = json.loads((bundle / MANIFEST).read_text())
    assert again["models"]["text"]["weights"] == trained["manifests"]["text"]["models"]["text"]["weights"]
    assert again["text"] == trained["manifests"]["text"]["text"]


def test_training_the_combined_model_reports_its_index(market, trained, tmp_path: Path, capsys) -> None:
    """``fbml train --model combined`` prints the search index's precision@10 (the bundle's own figure)."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    capsys.readouterr()
    assert train(market, bundle, "combined") == 0
    out = capsys.readouterr().out
    report = load_bundle(bundle).index.report
    assert f"precision@10 {report['precision_at_10']:.3f} over {report['test_products']} test products" in out
