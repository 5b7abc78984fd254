"""``fbml train``, ``fbml evaluate`` and ``fbml index`` end to end on a small sample marketplace: the three
trainings into one bundle, predictors chosen on validation, evaluation of every predictor and model, the
HTML report, unknown categories, ``--resume``, determinism for a seed, and one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from fbml.bundle.store import MANIFEST, load_bundle
from fbml.cli import main
from fbml.modeling import training
from fbml.tables.clean import clean_tables
from fbml.tables.splits import split_tables
from fbml.text.listings import listing_texts
from fbml.workflows.validation_store import ValidationStore

PRODUCTS = 160
IMAGE_SIZE = 48  # EfficientNet-Lite0's pooled features carry little of a 32 px photo: the image model learns at 48
EPOCHS = {"text": 4, "image": 3, "combined": 2}
UNKNOWN = "Mystery Items"
PREDICTORS = ("text", "image", "combined")
MODELS = ("text-cnn", "text-linear", "image-cnn", "combined-nn")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 160-product sample with its photos cleaned to ``IMAGE_SIZE`` px."""
    from fbml.sample.marketplace import write_sample
    from fbml.vision.cleaning import clean_images

    root = tmp_path_factory.mktemp("market")
    sample = write_sample(root / "raw", products=PRODUCTS, seed=0)
    report = clean_images(sample.image_dir, root / "photos", size=IMAGE_SIZE, workers=1, progress=False)
    assert report.cleaned > 0 and report.rejected == sample.defects.unreadable_photos
    return {"products": sample.products_csv, "images": sample.images_csv, "image_dir": root / "photos", "root": root}


def data_args(market: dict[str, Path], products: Path | None = None) -> list[str]:
    return ["--products", str(products or market["products"]), "--images", str(market["images"]),
            "--image-dir", str(market["image_dir"])]


def train(market, bundle: Path, kind: str, *extra: str, work_dir: Path | None = None) -> int:
    """``fbml train`` with few epochs, on the CPU, at ``IMAGE_SIZE`` px."""
    work = ["--work-dir", str(work_dir)] if work_dir else []
    return main(["train", "--model", kind, "--epochs", str(EPOCHS[kind]), "--image-size", str(IMAGE_SIZE),
                 "--device", "cpu", *work, *extra, *data_args(market), "--out", str(bundle)])


def evaluate(market, bundle: Path, capsys, *extra: str, products: Path | None = None) -> dict:
    capsys.readouterr()
    assert main(["evaluate", str(bundle), *data_args(market, products), "--device", "cpu", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(market, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``fbml train`` text, then image, then combined, into one bundle; the manifest and output after each."""
    bundle = tmp_path_factory.mktemp("trained") / "bundle"
    manifests, outputs = {}, {}
    for kind in ("text", "image", "combined"):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert train(market, bundle, kind) == 0, kind
        manifests[kind] = json.loads((bundle / MANIFEST).read_text())
        outputs[kind] = printed.getvalue()
    return {"bundle": bundle, "manifests": manifests, "outputs": outputs}


@pytest.fixture(scope="module")
def tables(market):
    return clean_tables(market["products"], market["images"])


# --- train ---------------------------------------------------------------------------------------------


def test_three_trainings_grow_one_bundle(trained) -> None:
    manifests = trained["manifests"]
    assert sorted(manifests["text"]["models"]) == ["text-cnn", "text-linear"]
    assert sorted(manifests["text"]["predictors"]) == ["text"]
    assert sorted(manifests["image"]["models"]) == ["image-cnn", "text-cnn", "text-linear"]
    assert sorted(manifests["image"]["predictors"]) == ["image", "text"]
    assert sorted(manifests["combined"]["models"]) == sorted(MODELS)
    assert sorted(manifests["combined"]["predictors"]) == sorted(PREDICTORS)
    for earlier, later in (("text", "image"), ("image", "combined")):  # what was there stays as it was
        for kind, entry in manifests[earlier]["models"].items():
            assert manifests[later]["models"][kind] == entry, kind
        for role, entry in manifests[earlier]["predictors"].items():
            assert manifests[later]["predictors"][role] == entry, role
    assert manifests["combined"]["image"]["backbone"] == "efficientnet_lite0"
    assert manifests["combined"]["image"]["size"] == IMAGE_SIZE
    assert manifests["combined"]["image"]["mean"] == [0.5, 0.5, 0.5]


def test_the_manifest_pins_every_factory_argument(trained) -> None:
    models = trained["manifests"]["combined"]["models"]
    assert set(models["image-cnn"]["options"]) == {"backbone", "trainable_stages", "embedding_dim", "dropout"}
    assert models["image-cnn"]["options"]["trainable_stages"] == 0  # the backbone's default: frozen, features cached
    assert set(models["text-cnn"]["options"]) >= {"embedding_dim", "kernel_sizes", "channels", "positions", "branch_scale"}
    assert models["combined-nn"]["options"] == {"image": models["image-cnn"]["options"], "text": models["text-cnn"]["options"]}
    assert "weights" not in json.dumps(models["image-cnn"]["options"])  # loading never chooses weights to fetch


def test_each_predictor_is_the_simplest_candidate_the_best_does_not_beat_across_folds(trained) -> None:
    """Each candidate is scored on 20 held-out folds of validation products; the chosen one is the best, or a
    simpler one (fewer members, then no bias) within the folds' noise of it, and the spread is reported."""
    bundle = load_bundle(trained["bundle"])
    expected = {"text": {"text-cnn", "text-linear", "text-cnn + text-linear"}, "image": {"image-cnn"}}
    for role in PREDICTORS:
        choice = bundle.predictor(role).report["choice"]
        candidates = choice["candidates"]
        best = max(scores["mean"] for scores in candidates.values())
        chosen = " + ".join(choice["members"]) + (" + bias" if choice["bias"] else "")
        assert candidates[chosen]["mean"] == choice["validation_accuracy"] == choice["validation_folds"]["mean"], role
        assert candidates[choice["best_on_validation"]]["mean"] == best
        assert all(scores["folds"] == 20 and scores["min"] <= scores["mean"] <= scores["max"] for scores in candidates.values())
        if chosen != choice["best_on_validation"]:  # a simpler candidate, within the noise of the best
            assert len(choice["members"]) + choice["bias"] <= len(choice["best_on_validation"].split(" + "))
            noise = (candidates[chosen]["std"] + candidates[choice["best_on_validation"]]["std"]) / 4  # >= paired SE
            assert best - candidates[chosen]["mean"] <= noise + 1e-9
        assert list(bundle.predictor(role).ensemble.names) == choice["members"]
        assert all(weight >= 0 for _, weight in bundle.predictor(role).ensemble.members)
        if role in expected:
            assert {name.removesuffix(" + bias") for name in candidates} == expected[role]
    combined = {name.removesuffix(" + bias") for name in bundle.predictor("combined").report["choice"]["candidates"]}
    text_members = " + ".join(bundle.predictor("text").ensemble.names)
    # the seed's network, late fusion, or late fusion with the network as a member
    assert combined == {"combined-nn", f"{text_members} + image-cnn", f"{text_members} + image-cnn + combined-nn"}


def test_the_combined_network_keeps_the_trained_text_branch(trained) -> None:
    """Started from a trained text CNN, the combined network trains the photo's side only."""
    bundle = load_bundle(trained["bundle"])
    text, combined = bundle.model("text-cnn").state_dict(), bundle.model("combined-nn").text.state_dict()
    assert text.keys() == combined.keys()
    for name in text:
        assert torch.equal(text[name], combined[name]), name
    history = bundle.models["combined-nn"].report["history"]
    assert history["start"] is not None


def test_trained_models_beat_the_majority_class(trained, tables) -> None:
    """On the test split of the sample (products no model trained on), every predictor beats always
    answering the training split's most common category; text, whose words are planted, by far."""
    splits = split_tables(tables, seed=0).products
    majority = splits.train["category"].mode().sort()[0]
    majority_rate = float((splits.test["category"] == majority).mean())
    bundle = load_bundle(trained["bundle"])
    for role in PREDICTORS:
        accuracy = bundle.predictor(role).report["test"]["per_product"]["accuracy"]
        assert accuracy > majority_rate + (0.4 if role != "image" else 0.0), (role, accuracy, majority_rate)


def test_a_combined_training_trains_its_missing_branches_first(market, tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "bundle"
    capsys.readouterr()
    assert train(market, bundle, "combined") == 0
    out = capsys.readouterr().out
    assert "needs a trained text model: training it first" in out and "needs a trained image model" in out
    assert sorted(json.loads((bundle / MANIFEST).read_text())["predictors"]) == sorted(PREDICTORS)


def test_the_bundle_ships_models_trained_on_every_product_and_says_so(trained) -> None:
    """By default the test split is scored with models trained on training + validation (kept in the work
    folder), then every model is trained on every product and shipped; each report says which."""
    bundle = load_bundle(trained["bundle"])
    for kind, model in bundle.models.items():
        assert model.report["trained_on"] == "train+validation+test", kind
    assert bundle.subcategories.report["trained_on"] == "train+validation+test"
    for role in PREDICTORS:
        report = bundle.predictor(role).report
        assert report["test_scored_with"] == "train+validation" and report["choice"]["shipped"] == "train+validation+test"
    kept = trained["bundle"].parent / "bundle.work" / "tested-0"
    assert {"text-cnn.safetensors", "text-linear.linear.json", "image-cnn.safetensors",
            "subcategories.codec.json"} <= {path.name for path in kept.iterdir()}


def test_keep_test_split_ships_the_models_that_never_saw_it(market, tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "bundle"
    assert train(market, bundle, "text", "--keep-test-split") == 0
    out = capsys.readouterr().out
    assert "ships models trained on train+validation" in out
    shipped = load_bundle(bundle)
    assert {model.report["trained_on"] for model in shipped.models.values()} == {"train+validation"}
    assert not (tmp_path / "bundle.work" / "tested-0").exists()


def test_the_combined_test_split_is_scored_with_branches_that_never_saw_it(trained) -> None:
    """The combined training's test figures come from the branches kept in the work folder, not the shipped
    ones (trained on the test products too): its test score of the image branch (the same photos) equals the
    image training's own, and the text branch's kept linear model is not the shipped one."""

    def test_lines(output: str) -> dict[str, str]:
        return {line.split()[0]: line.strip() for line in output.splitlines() if " test accuracy " in line}

    image, combined = (test_lines(trained["outputs"][kind]) for kind in ("image", "combined"))
    assert combined["image-cnn"] == image["image-cnn"]
    kept = ValidationStore(trained["bundle"].parent / "bundle.work" / "tested-0").load_linear("text-linear")
    shipped = load_bundle(trained["bundle"]).model("text-linear")
    assert kept.to_json() != shipped.to_json()


def test_another_image_size_or_backbone_is_refused(market, trained, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], copy)
    capsys.readouterr()
    assert main(["train", "--model", "combined", "--epochs", "1", "--image-size", "64", *data_args(market),
                 "--out", str(copy)]) == 2
    assert f"the bundle's image models use {IMAGE_SIZE} px photos, not 64" in capsys.readouterr().err
    assert main(["train", "--model", "image", "--epochs", "1", "--backbone", "resnet50", "--image-size", str(IMAGE_SIZE),
                 *data_args(market), "--out", str(copy)]) == 2
    assert "the bundle's image models use the efficientnet_lite0 backbone, not resnet50" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbone", "vgg"], "unknown backbone 'vgg' (choose from efficientnet_lite0, resnet50)"),
        (["--trainable-stages", "9"], "trainable_stages must be between 0 and 7 for efficientnet_lite0, got 9"),
        (["--device", "cuda"], "device cuda is not available"),
        (["--device", "gpu"], "device gpu is not a device"),
    ],
)
def test_bad_training_options_stop_before_any_work(market, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    capsys.readouterr()
    code = main(["train", "--model", "image", *args, *data_args(market), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.work").exists()


def test_image_model_needs_photos(market, tmp_path: Path, capsys) -> None:
    code = main(["train", "--model", "image", "--products", str(market["products"]), "--images",
                 str(market["images"]), "--out", str(tmp_path / "b")])
    assert code == 2
    assert "needs an images table and --image-dir" in capsys.readouterr().err


def test_image_features_are_cached_on_disk_once(trained) -> None:
    """The image and combined trainings (and the index) read one frozen-feature cache."""
    work = trained["bundle"].with_name("bundle.work")
    caches = sorted(work.glob("features-*"))
    assert len(caches) == 1
    assert (caches[0] / "features.npy").is_file() and (caches[0] / "index.json").is_file()


# --- evaluate ------------------------------------------------------------------------------------------


def check_scores(scores: dict, classes: int) -> None:
    for level in ("per_example", "per_product"):
        report = scores[level]
        matrix = report["confusion"]
        assert len(matrix) == classes and all(len(row) == classes for row in matrix)
        assert sum(map(sum, matrix)) == report["examples"]
        assert report["accuracy"] == pytest.approx(sum(matrix[i][i] for i in range(classes)) / report["examples"])


def test_evaluate_lists_every_predictor_and_model(market, trained, tables, capsys) -> None:
    results = evaluate(market, trained["bundle"], capsys)
    similar = results.pop("similar_listings")
    assert 0.0 < similar["subcategory_precision_at_10"] <= similar["precision_at_10"] <= 1.0
    assert 0.0 <= similar["tied_at_10"] <= 1.0
    classes = load_bundle(trained["bundle"]).codec.num_classes
    assert list(results) == [*PREDICTORS, *sorted(MODELS, key=list(load_bundle(trained["bundle"]).models).index)]
    for scores in results.values():
        check_scores(scores, classes)
    products, photos = tables.cleaned.products.height, tables.manifest.images.height
    for name in ("text", "text-cnn", "text-linear"):
        assert results[name]["per_example"]["examples"] == results[name]["per_product"]["examples"] == products
        assert results[name]["excluded"] == 0
    for name in ("image", "combined", "image-cnn", "combined-nn"):
        # every photo row is scored or counted as left out (the unreadable ones were not cleaned)
        assert results[name]["per_example"]["examples"] + results[name]["excluded"] == photos
        assert results[name]["excluded"] >= 1
    for name in PREDICTORS:  # each predictor's subcategories are scored (the sample's paths have two levels or more)
        assert 0.0 <= results[name]["subcategory_accuracy"] <= 1.0
    assert all("subcategory_accuracy" not in results[name] for name in MODELS)


def test_predictions_name_a_subcategory_of_the_predicted_category(trained, tables) -> None:
    """The text and combined predictors answer a subcategory (``category / subcategory``) of the category they
    chose, with its joint probability at most the category's (none when the model learned no subcategory of
    that category: the sample has a few listings of each); a photo alone gets none (no text to read)."""
    bundle = load_bundle(trained["bundle"])
    products = tables.cleaned.products
    texts = listing_texts(products)
    found = bundle.predict_many(texts=texts)
    known = bundle.subcategories.codec.classes
    for prediction in found:
        if any(name.startswith(prediction.category + " / ") for name in known):
            assert prediction.subcategory in known and prediction.subcategory.startswith(prediction.category + " / ")
            assert 0.0 < prediction.subcategory_probability <= prediction.probabilities[prediction.category] + 1e-6
        else:
            assert (prediction.subcategory, prediction.subcategory_probability) == (None, None)
    right = [p.subcategory == " / ".join(path.split(" / ")[:2]) for p, path in zip(found, products["category_path"], strict=True)]
    assert sum(right) > len(right) / 4  # the sample's subcategories are few listings each; chance is about 1 in 8
    photo = np.zeros((48, 48, 3), np.uint8)
    assert bundle.predict(image=photo).subcategory is None
    combined = bundle.predict(text=texts[0], image=photo)
    assert combined.subcategory is not None and combined.subcategory.startswith(combined.category + " / ")


class _Tables(HTMLParser):
    """The rows of the per-class tables of a report page, by table."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_evaluate_report_has_a_row_for_every_class(market, trained, tmp_path: Path, capsys) -> None:
    report = tmp_path / "report"
    evaluate(market, trained["bundle"], capsys, "--report", str(report))
    page = (report / "index.html").read_text()
    parser = _Tables()
    parser.feed(page)
    classes = load_bundle(trained["bundle"]).codec.classes
    per_class = [table for table in parser.tables if table and table[0][:1] == ["class"]]
    assert len(per_class) == len(PREDICTORS) + len(MODELS)
    for table in per_class:
        assert [row[0] for row in table[1:]] == list(classes)
    assert len(list(report.glob("*-reliability.png"))) == len(per_class)
    # a dozen queries, each shown with its ten nearest listings (photo, name, category path, score)
    similar = [table for table in parser.tables if table and table[0] == ["photo", "listing", "category path", "score"]]
    assert len(similar) == 12 and all(len(table) == 11 for table in similar)
    assert 'id="similar"' in page and "subcategory precision at 10" in page


def test_evaluate_refuses_a_report_folder_that_is_not_a_report_before_work(market, trained, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["evaluate", str(trained["bundle"]), *data_args(market), "--report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "mine" in err and len(err.strip().splitlines()) == 1
    assert (folder / "notes.txt").read_text() == "keep me"


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
    unknown_photos = tables.manifest.images.filter(pl.col("category") == UNKNOWN).height
    assert unknown_photos > changed  # some of them have several photos: products and photos differ
    capsys.readouterr()
    assert main(["evaluate", str(trained["bundle"]), *data_args(market, path), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["model", "examples", "accuracy", "macro-F1"]
    table = lines[1:next(row for row, line in enumerate(lines) if line.startswith("subcategory accuracy"))]
    rows = {line.split()[0]: line.split()[1:] for line in table}
    assert list(rows)[:3] == list(PREDICTORS)
    counted = next(line for line in lines if line.startswith("classes: "))
    assert lines[-1].startswith("similar listings (ten nearest among these products): precision_at_10 ")
    excluded = {part.split()[0]: int(part.split()[1]) for part in counted.split("category): ", 1)[1].split(", ")}
    for kind, (examples, *_rest) in rows.items():
        if kind.startswith("text"):
            assert int(examples) == tables.cleaned.products.height - changed
            assert excluded[kind] == changed
        else:  # photo rows: each one scored or left out, the unknown category's photos among those left out
            assert int(examples) + excluded[kind] == tables.manifest.images.height
            assert excluded[kind] >= unknown_photos


def test_training_data_with_an_unknown_category_is_refused(market, trained, unknown_category_products, tmp_path,
                                                           capsys) -> None:
    path, _ = unknown_category_products
    copy = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], copy)
    capsys.readouterr()
    code = main(["train", "--model", "text", "--epochs", "1", *data_args(market, path), "--out", str(copy)])
    assert code == 2
    assert f"the data has categories the bundle's codec lacks: ['{UNKNOWN}']" in capsys.readouterr().err


# --- index ---------------------------------------------------------------------------------------------


def test_training_the_combined_model_reports_its_index(trained, tables) -> None:
    """The index holds every product (those without a photo by their text); its part weights were
    chosen on the validation products (by subcategory precision, among recipes that keep the category
    and rarely tie); precision@10 at three depths and the tied share are reported for the test products among
    themselves (a couple of dozen here, about two of each category: a tenth is about what can be found)."""
    bundle = load_bundle(trained["bundle"])
    report = bundle.index.report
    assert set(report["weights"]) == {"text", "image", "classes", "subcategories"}
    assert report["products"] == len(bundle.index) == tables.cleaned.products.height
    assert report["test_products"] == split_tables(tables, seed=0).products.test.height
    assert 0.0 < report["precision_at_10"] <= 1.0
    assert 0.0 < report["subcategory_precision_at_10"] <= report["precision_at_10"]
    assert report["path_precision_at_10"] <= report["subcategory_precision_at_10"]
    assert 0.0 <= report["tied_at_10"] <= 1.0
    validation = report["validation"]
    assert 0.0 < validation["subcategory_precision_at_10"] <= validation["precision_at_10"] <= 1.0
    assert bundle.subcategories is not None and bundle.subcategories.num_classes > 1


def test_index_weights_are_chosen_on_vectors_of_models_that_never_saw_the_validation_products(market, trained, tables) -> None:
    """The validation figures the weights were chosen by come from the models the training split alone made (kept in
    the work folder, not the shipped ones), over the validation products alone as the catalogue."""
    from fbml.bundle.listings import alikeness
    from fbml.workflows.index import catalogue_parts
    from fbml.workflows.inputs import training_data, with_photo_ids
    from fbml.workflows.train import split_models, tested_models

    bundle = load_bundle(trained["bundle"])
    data = training_data(tables, market["image_dir"], trained["bundle"].parent / "bundle.work", progress=False)
    split = split_models(bundle, data)
    assert {entry.report["trained_on"] for entry in split.models.values()} == {"train"}
    assert split.model("text-linear").to_json() != bundle.model("text-linear").to_json()
    report = bundle.index.report
    validation = with_photo_ids(data.splits.products.validation, tables)
    assert report["validation_products"] == validation.height
    rows = np.arange(validation.height)
    recipe = bundle.listing_recipe()
    split_parts, shipped_parts = (catalogue_parts(models, tables, market["image_dir"], validation, work_dir=data.work_dir, progress=False)
                                  for models in (split, bundle))  # fmt: skip
    split_vectors, shipped_vectors = split_parts.vectors(recipe), shipped_parts.vectors(recipe)
    assert alikeness(split_vectors, validation["category_path"].to_numpy(), rows, rows).to_json() == report["validation"]
    assert split_vectors.shape != shipped_vectors.shape or not np.allclose(split_vectors, shipped_vectors, atol=1e-3)
    test = with_photo_ids(data.splits.products.test, tables)
    test_parts = catalogue_parts(tested_models(bundle, data), tables, market["image_dir"], test, work_dir=data.work_dir,
                                 progress=False)  # fmt: skip
    vectors = test_parts.vectors(recipe)
    found = alikeness(vectors, test["category_path"].to_numpy(), np.arange(test.height), np.arange(test.height)).to_json()
    assert found == {name: report[name] for name in found}


def test_index_rebuilds_over_a_catalogue_and_prints_json(market, trained, tables, tmp_path: Path, capsys) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained["bundle"], bundle)
    capsys.readouterr()
    assert main(["index", str(bundle), *data_args(market), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["products"] == tables.cleaned.products.height  # products without a photo are indexed by text
    assert report["weights"] == load_bundle(trained["bundle"]).index.report["weights"]
    assert 0.3 < report["precision_at_10"] <= 1.0
    assert 0.0 < report["subcategory_precision_at_10"] <= report["precision_at_10"] and "tied_at_10" in report
    assert report["method"] == "exact" and len(load_bundle(bundle).index) == report["products"]

    assert main(["index", str(bundle), *data_args(market), "--device", "cpu", "--method", "hnsw", "--json"]) == 0
    approximate = json.loads(capsys.readouterr().out)
    index = load_bundle(bundle).index
    assert approximate["method"] == index.engine.method == "hnsw"
    assert abs(approximate["precision_at_10"] - report["precision_at_10"]) < 0.02  # a few hundred rows: near exact


# --- one prediction path -------------------------------------------------------------------------------

DECORATIONS = ("Crème ", " ﬁne", " “quoted”", "\u00a0\u00a0", " 🚲", "\r\n")


def raw_listing_texts(market) -> dict[str, str]:
    """Each raw row's listing text, made by ``fbml.listing_text`` from its raw name and description (ids the
    sample repeats left out: cleaning keeps the first valid row of those)."""
    from fbml.tables.sources import read_products
    from fbml.text.listings import listing_text

    raw = read_products(market["products"])
    once = raw.filter(pl.col("id").is_not_null() & ~pl.col("id").is_duplicated())
    return {row["id"]: listing_text(row["product_name"] or "", row["product_description"]) for row in once.iter_rows(named=True)}


def known_texts(frame: pl.DataFrame, texts: dict[str, str]) -> pl.DataFrame:
    """The rows of ``frame`` whose product's raw text is known."""
    return frame.filter(pl.col("id").is_in(list(texts)))


def decorated(text: str, row: int) -> str:
    """``text`` with some of the mess a caller's text has: accents, ligatures, curly quotes, spaces, emoji."""
    return DECORATIONS[row % len(DECORATIONS)] + text + DECORATIONS[(row + 3) % len(DECORATIONS)]


def test_the_library_the_http_api_and_evaluate_give_the_same_probabilities(market, trained, tables, tmp_path: Path) -> None:
    """Every product and photo of the sample: ``evaluate``'s probabilities (cleaned tables, decoded photo cache),
    ``Bundle.predict_many``'s (``listing_text`` of the raw rows, the photo files) and the HTTP API's (the same
    texts with accents, ligatures, curly quotes, emoji and non-breaking spaces added, the photo files) agree."""
    from contracts.bundle import Role
    from fbml.serving.app import create_app
    from fbml.workflows.evaluate import evaluations
    from litestar.testing import TestClient

    bundle = load_bundle(trained["bundle"])
    results = evaluations(bundle, tables, market["image_dir"], work_dir=tmp_path, progress=False)
    raw_texts = raw_listing_texts(market)
    products, photos = (known_texts(results[role].frame, raw_texts) for role in (Role.TEXT, Role.COMBINED))
    kept = {role: results[role].frame["id"].is_in(list(raw_texts)).to_numpy() for role in Role}
    texts = [raw_texts[product_id] for product_id in products["id"].to_list()]
    photo_texts = [raw_texts[product_id] for product_id in photos["id"].to_list()]
    files = [market["image_dir"] / f"{image_id}.jpg" for image_id in photos["image_id"].to_list()]
    assert len(texts) + len(files) > 300
    library = {
        Role.TEXT: bundle.probabilities([Role.TEXT], texts=texts)[Role.TEXT],
        Role.IMAGE: bundle.probabilities([Role.IMAGE], images=files)[Role.IMAGE],
        Role.COMBINED: bundle.probabilities([Role.COMBINED], texts=photo_texts, images=files)[Role.COMBINED],
    }
    for role, probabilities in library.items():
        np.testing.assert_allclose(probabilities, results[role].probabilities[kept[role]], rtol=0, atol=1e-5, err_msg=str(role))
    messy = [decorated(text, row) for row, text in enumerate(texts)]
    messy_photo_texts = [decorated(text, row) for row, text in enumerate(photo_texts)]
    expected = {
        "text": bundle.predict_many(texts=messy),
        "combined": bundle.predict_many(texts=messy_photo_texts, images=files),
        "image": bundle.predict_many(images=files),
    }
    with TestClient(create_app(bundle)) as client:
        answers = {
            "text": [client.post("/predict/text", json={"text": text}) for text in messy],
            "image": [client.post("/predict/image", files={"image": ("p.jpg", file.read_bytes())}) for file in files],
            "combined": [client.post("/predict/combined", files={"image": ("p.jpg", file.read_bytes()), "text": (None, text)})
                         for text, file in zip(messy_photo_texts, files, strict=True)],
        }
    for route, responses in answers.items():
        for response, prediction in zip(responses, expected[route], strict=True):
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["category"] == prediction.category and body["model_version"] == bundle.model_version
            got = [body["probabilities"][name] for name in bundle.codec.classes]
            np.testing.assert_allclose(got, [prediction.probabilities[name] for name in bundle.codec.classes], rtol=0, atol=1e-5)


def test_index_time_and_query_time_vectors_of_a_listing_are_equal(market, trained, tables, tmp_path: Path) -> None:
    """With every part weighted (text, photos, classes), each catalogue listing's vector as ``fbml index`` builds
    it (cleaned tables, decoded photo cache) equals the one ``Bundle.embed`` makes from its raw text and photo files."""
    import attrs
    from fbml.workflows.index import reindexed_bundle

    bundle = load_bundle(trained["bundle"])
    weights = {"text": 1.0, "image": 0.5, "classes": 2.0}
    weighted = attrs.evolve(bundle, index=attrs.evolve(bundle.search_index(), report={"weights": weights}))
    index = reindexed_bundle(weighted, tables, market["image_dir"], work_dir=tmp_path, progress=False).search_index()
    raw_texts = raw_listing_texts(market)
    manifest = tables.manifest.images
    photos_of = {product_id: [market["image_dir"] / f"{image_id}.jpg" for image_id in group["image_id"].to_list()
                              if (market["image_dir"] / f"{image_id}.jpg").is_file()]
                 for (product_id,), group in manifest.group_by("id", maintain_order=True)}  # fmt: skip
    rows = [row for row, product_id in enumerate(index.catalogue["id"].to_list()) if product_id in raw_texts]
    ids = [index.catalogue["id"][row] for row in rows]
    vectors = bundle_with(weighted, index).embed_many(texts=[raw_texts[product_id] for product_id in ids],
                                                      images=[photos_of.get(product_id, []) for product_id in ids])
    np.testing.assert_allclose(vectors, index.vectors[rows], rtol=0, atol=1e-5)
    counts = [len(photos_of.get(product_id, [])) for product_id in ids]
    assert {0, 1, 2} <= set(counts)  # listings without a photo, with one and with two are all checked
    one = counts.index(1)
    single = bundle_with(weighted, index).embed(text=raw_texts[ids[one]], image=photos_of[ids[one]][0])
    np.testing.assert_allclose(single, index.vectors[rows[one]], rtol=0, atol=1e-5)


def test_training_scores_its_photos_from_the_image_trainings_frozen_features(market, trained, tables, monkeypatch) -> None:
    """Training's index, test scores and profile start the image branches from the frozen features the image
    training cached: the parts so made are those the photos make through the whole networks (to float16's
    precision), the backbone does not run, and features of another backbone are not used."""
    import attrs
    from fbml.modeling.features import stored_features
    from fbml.modeling.inference import FrozenFeatures
    from fbml.modeling.models import ImageClassifier, weights_digest
    from fbml.workflows.index import catalogue_parts
    from fbml.workflows.inputs import decoded_photos

    bundle = load_bundle(trained["bundle"])
    work, settings = trained["bundle"].with_name("bundle.work"), bundle.image_settings()
    photos = decoded_photos(tables, market["image_dir"], work, settings.size, progress=False)
    image = bundle.models["image-cnn"].module
    values = stored_features(image, photos, (settings.mean, settings.std), work)
    assert values is not None  # the image training left them where the later steps look
    features = FrozenFeatures(weights_digest(image.frozen), settings.preparation, values)
    products = tables.cleaned.products

    def parts(frozen: FrozenFeatures | None):
        return catalogue_parts(bundle, tables, market["image_dir"], products, work_dir=work, progress=False, features=frozen)

    through_networks = parts(None)
    with monkeypatch.context() as patched:
        patched.setattr(ImageClassifier, "frozen_features", lambda *_: pytest.fail("the backbone ran"))
        from_features = parts(features)
    assert np.abs(through_networks.image).sum() > 0
    for name in ("text", "image", "classes", "subcategories"):
        np.testing.assert_allclose(getattr(from_features, name), getattr(through_networks, name), rtol=0, atol=2e-3, err_msg=name)
    other = parts(attrs.evolve(features, backbone="another backbone"))
    for name in ("image", "classes"):
        np.testing.assert_array_equal(getattr(other, name), getattr(through_networks, name))


def bundle_with(bundle, index):
    import attrs

    return attrs.evolve(bundle, index=index)


# --- resume and determinism ----------------------------------------------------------------------------


def test_resume_from_the_command_line(market, trained, tmp_path: Path, monkeypatch, capsys) -> None:
    """Interrupt ``fbml train`` after its first epoch's checkpoint, then ``--resume``: the run completes
    with each epoch once, and ends with the same model as the uninterrupted run of the fixture."""
    bundle, work = tmp_path / "bundle", tmp_path / "work"
    real_save = training._save_checkpoint
    epochs_saved = []

    def save_then_interrupt(directory, model, optimizer, schedule, state, rng):
        real_save(directory, model, optimizer, schedule, state, rng)
        epochs_saved.append(len(state.history))
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_interrupt)
    assert train(market, bundle, "text", work_dir=work) == 130
    assert "fbml: interrupted" in capsys.readouterr().err
    assert epochs_saved == [1]
    assert not (bundle / MANIFEST).exists()  # nothing saved into the bundle by the interrupted run
    monkeypatch.undo()

    assert train(market, bundle, "text", "--resume", work_dir=work) == 0
    resumed = json.loads((bundle / MANIFEST).read_text())["models"]["text-cnn"]
    assert [epoch["epoch"] for epoch in resumed["report"]["history"]["epochs"]] == list(range(1, EPOCHS["text"] + 1))
    uninterrupted = trained["manifests"]["text"]["models"]["text-cnn"]
    assert resumed["weights"]["sha256"] == uninterrupted["weights"]["sha256"]


def test_training_twice_gives_the_same_bundle(market, trained, tmp_path: Path, capsys) -> None:
    """Same data, model and seed, in the same process: byte-identical files (content-addressed)."""
    bundle = tmp_path / "bundle"
    capsys.readouterr()
    assert train(market, bundle, "text") == 0
    out = capsys.readouterr().out
    assert "text: trained text-cnn" in out and "test accuracy" in out
    assert (tmp_path / "bundle.work" / "runs" / "text-cnn").is_dir()  # TensorBoard by default next to the bundle
    assert (tmp_path / "bundle.work" / "checkpoints" / "text-cnn" / "last.pt").is_file()
    again = json.loads((bundle / MANIFEST).read_text())
    first = trained["manifests"]["text"]
    for kind, entry in first["models"].items():  # the reports differ in their timings only
        assert {key: value for key, value in again["models"][kind].items() if key != "report"} == \
            {key: value for key, value in entry.items() if key != "report"}, kind
    assert {role: entry["members"] for role, entry in again["predictors"].items()} == \
        {role: entry["members"] for role, entry in first["predictors"].items()}
    assert again["text"] == first["text"]
