"""The HTML evaluation report: its figures against scikit-learn and hand computations, and the page as parsed."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from fbml.errors import FbmlError
from fbml.workflows.report import (
    INDEX,
    ModelResults,
    calibration_bins,
    expected_calibration_error,
    per_class_scores,
    worst_mistakes,
    write_report,
)
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

CLASSES = ("Appliances", "Baby & Kids Stuff", "Clothes, Footwear & Accessories", "Computers & Software", "Garden")
EVIL = "<script>alert('owned')</script>"


class _Page(HTMLParser):
    """The parts of a report page the tests look at: tables (by class and model), images, scripts, links, text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, object]] = []
        self.images: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "table":
            self.tables.append({"class": attributes.get("class"), "model": attributes.get("data-model"), "rows": []})
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag in ("td", "th") and self._row is not None and self._cell is None:
            self._cell = []
        elif tag == "img":
            self.images.append(attributes)
        if "href" in attributes:
            self.hrefs.append(attributes["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "tr" and self._row is not None:
            rows = self.tables[-1]["rows"]
            assert isinstance(rows, list)
            rows.append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, kind: str, model: str) -> list[list[str]]:
        found = [table["rows"] for table in self.tables if table["class"] == kind and table["model"] == model]
        assert len(found) == 1, f"expected one {kind} table for {model}, found {len(found)}"
        rows = found[0]
        assert isinstance(rows, list)
        return rows


def _parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser


@pytest.fixture
def photos(tmp_path: Path) -> list[Path | None]:
    """Three real photos (JPEG, transparent PNG, tall grey JPEG), an unreadable file, a missing one, and no photo."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (640, 480), (200, 40, 40)).save(folder / "red.jpg")
    Image.new("RGBA", (300, 300), (0, 128, 0, 100)).save(folder / "green.png")
    Image.new("L", (100, 400), 90).save(folder / "tall.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return [folder / "red.jpg", folder / "green.png", folder / "tall.jpg", folder / "broken.jpg", folder / "missing.jpg", None]


def _results(name: str, products: int, photos: list[Path | None], *, seed: int, skill: float = 2.0) -> ModelResults:
    """Plausible results over ``CLASSES``; class 4 ("Garden") is never the truth and never predicted."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, products)
    logits = rng.normal(0.0, 1.0, (products, len(CLASSES)))
    logits[np.arange(products), labels] += skill
    logits[:, 4] = -30.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probabilities[0] = [0.01, 0.97, 0.01, 0.005, 0.005]  # product 0: the most confident mistake (truth 0)
    labels[0] = 0
    titles = [f"listing {index}" for index in range(products)]
    titles[0] = f"{EVIL} & cheap"
    return ModelResults(
        name=name,
        class_names=CLASSES,
        product_ids=[f"p{index:04d}" for index in range(products)],
        labels=labels,
        probabilities=probabilities,
        titles=titles,
        photos=[photos[index % len(photos)] for index in range(products)],
    )


@pytest.fixture
def report(tmp_path: Path, photos: list[Path | None]) -> tuple[Path, list[ModelResults]]:
    results = [_results(name, 60, photos, seed=seed) for seed, name in enumerate(("text", "image", "combined"))]
    page = write_report(
        tmp_path / "report", results, title="Evaluation", notes={"bundle": "/models/b", "date": "2025-01-01"}, mistakes=8
    )
    return page, results


def test_every_model_has_a_row_for_every_class_also_one_without_support(report: tuple[Path, list[ModelResults]]) -> None:
    page, results = report
    assert page == page.parent / INDEX and page.is_file()
    parsed = _parse(page)
    for result in results:
        rows = parsed.rows("per-class", result.name)
        assert [row[0] for row in rows] == list(CLASSES)
        support = {row[0]: int(row[1]) for row in rows}
        assert support == {name: int((result.labels == index).sum()) for index, name in enumerate(CLASSES)}
        assert rows[4][1:] == ["0", "0", "0.000", "0.000", "0.000"]  # "Garden": neither truth nor predicted


def test_summary_figures_match_the_data(report: tuple[Path, list[ModelResults]]) -> None:
    page, results = report
    overview = _parse(page).rows("overview", None)  # type: ignore[arg-type]
    for row, result in zip(overview, results, strict=True):
        accuracy = (result.probabilities.argmax(axis=1) == result.labels).mean()
        ece = expected_calibration_error(result.labels, result.probabilities)
        assert row[0] == result.name
        assert row[1] == f"{result.size:,}"
        assert row[2] == f"{accuracy:.3f}"
        assert row[4] == f"{ece:.3f}"


def test_every_picture_exists_beside_the_page_and_opens(report: tuple[Path, list[ModelResults]]) -> None:
    page, results = report
    parsed = _parse(page)
    sources = [image["src"] for image in parsed.images]
    assert len(sources) >= 3 * len(results)
    for source in sources:
        assert source and "/" not in source and ":" not in source, source
        path = page.parent / source
        assert path.is_file(), source
        with Image.open(path) as image:
            image.load()
            assert image.width > 10 and image.height > 10
    for number, result in enumerate(results, start=1):
        charts = {f"{number}-{result.name}-{kind}.png" for kind in ("f1", "confusion", "reliability")}
        assert charts <= set(sources)


def test_mistakes_show_photos_or_a_placeholder_and_the_top_two_classes(
    report: tuple[Path, list[ModelResults]], photos: list[Path | None]
) -> None:
    page, results = report
    parsed = _parse(page)
    for result in results:
        rows = parsed.rows("mistakes", result.name)
        wrong = int((result.probabilities.argmax(axis=1) != result.labels).sum())
        assert len(rows) == min(8, wrong)
        assert rows[0][1].startswith(EVIL)  # product 0 is the most confident mistake
        assert rows[0][2].startswith("Appliances")
        assert rows[0][3].startswith("Baby & Kids Stuff 0.970")
    problems = {"photo unreadable", "photo missing", "no photo"}
    alts = {image["alt"] for image in parsed.images}
    assert problems <= alts  # each kind of bad photo appears among the 3 x 8 mistakes and has a placeholder
    assert any(image["src"] == "no-photo.png" for image in parsed.images)
    assert any(str(image["src"]).startswith("photo-") for image in parsed.images)


def test_user_text_is_escaped(tmp_path: Path, photos: list[Path | None]) -> None:
    result = _results(f"model {EVIL}", 30, photos, seed=3)
    page = write_report(tmp_path / "r", [result], title=f"title {EVIL}", notes={EVIL: f"note {EVIL}"})
    content = page.read_text(encoding="utf-8")
    parsed = _parse(page)
    assert "script" not in parsed.tags
    assert "<script" not in content
    text = "".join(parsed.text)
    assert f"title {EVIL}" in text and f"note {EVIL}" in text and f"{EVIL} & cheap" in text


def test_the_page_needs_nothing_from_outside(report: tuple[Path, list[ModelResults]]) -> None:
    page, _ = report
    parsed = _parse(page)
    assert not {"script", "link", "iframe", "object", "embed"} & set(parsed.tags)
    content = page.read_text(encoding="utf-8")
    assert "http:" not in content and "https:" not in content and "@import" not in content
    assert all(href.startswith("#") for href in parsed.hrefs)


def test_ece_by_hand() -> None:
    probabilities = np.array([[0.55, 0.45], [0.35, 0.65], [0.7, 0.3], [0.9, 0.1], [0.05, 0.95]])
    labels = np.array([0, 0, 0, 0, 0])  # correct, wrong, correct, correct, wrong
    # 5 bins: (0.4,0.6] {0.55 right}: gap 0.45; (0.6,0.8] {0.65 wrong, 0.7 right}: |0.5-0.675|;
    # (0.8,1] {0.9 right, 0.95 wrong}: |0.5-0.925|  ->  (0.45 + 2 * 0.175 + 2 * 0.425) / 5
    assert expected_calibration_error(labels, probabilities, bins=5) == pytest.approx(0.33)
    assert calibration_bins(labels, probabilities, bins=5).counts.tolist() == [0, 0, 1, 2, 2]
    # 15 bins put every product in its own bin: mean of |correct - confidence|
    assert expected_calibration_error(labels, probabilities) == pytest.approx((0.45 + 0.65 + 0.3 + 0.1 + 0.95) / 5)


def test_ece_bins_are_closed_on_the_right() -> None:
    probabilities = [[0.6, 0.4, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.8, 0.2, 0.0], [0.4, 0.3, 0.3]]
    binned = calibration_bins([0, 0, 0, 1, 0], probabilities, bins=5)
    # 0.4 in (0.2, 0.4]; 0.5 and 0.6 in (0.4, 0.6]; 0.8 in (0.6, 0.8]; 1.0 in (0.8, 1]
    assert binned.counts.tolist() == [0, 1, 2, 1, 1]
    assert binned.accuracy.tolist() == [0, 1, 1, 0, 1]
    assert binned.confidence.tolist() == pytest.approx([0, 0.4, 0.55, 0.8, 1.0])


def test_ece_is_zero_when_calibrated_and_not_otherwise() -> None:
    rows, labels = [], []
    for top, correct, total in ((0.7, 7, 10), (0.5, 2, 4), (1.0, 5, 5)):
        rest = (1 - top) / 2
        for index in range(total):
            rows.append([top, rest, rest])
            labels.append(0 if index < correct else 1)
    probabilities = np.array(rows)
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.0, abs=1e-12)
    over_confident = np.array([[0.9, 0.05, 0.05]] * 10)
    assert expected_calibration_error([0] * 5 + [1] * 5, over_confident) == pytest.approx(0.4)


def test_ece_of_nothing_is_zero() -> None:
    assert expected_calibration_error(np.zeros(0, dtype=np.int64), np.zeros((0, 3))) == 0.0


def test_per_class_scores_equal_scikit_learn() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, 300)  # class 4 is only predicted, class 5 never occurs
    predicted = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 5, 300))
    scores = per_class_scores(labels, predicted, 6)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(range(6)), zero_division=0
    )
    np.testing.assert_allclose(scores.precision, precision)
    np.testing.assert_allclose(scores.recall, recall)
    np.testing.assert_allclose(scores.f1, f1)
    np.testing.assert_array_equal(scores.support, support)
    assert scores.f1[4] == 0 and scores.precision[4] == 0 and scores.support[5] == 0


def test_per_class_scores_by_hand() -> None:
    with np.errstate(all="raise"):
        scores = per_class_scores([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 3)
    # class 0: tp 1, predicted 2, true 2; class 1: tp 2, predicted 3, true 3; class 2: nothing at all
    assert scores.precision.tolist() == [0.5, pytest.approx(2 / 3), 0.0]
    assert scores.recall.tolist() == [0.5, pytest.approx(2 / 3), 0.0]
    assert scores.f1.tolist() == [0.5, pytest.approx(2 / 3), 0.0]
    assert scores.support.tolist() == [2, 3, 0]


def test_worst_mistakes_are_the_most_confident_wrong_ones() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95], [0.7, 0.3]])
    labels = np.array([0, 0, 0, 0, 1])
    assert worst_mistakes(labels, probabilities, 3).tolist() == [3, 1, 4]
    assert worst_mistakes(labels, probabilities, 10).tolist() == [3, 1, 4, 2]
    assert worst_mistakes(labels, probabilities, 0).tolist() == []


def test_refuses_a_folder_that_is_not_a_report(tmp_path: Path, photos: list[Path | None]) -> None:
    result = _results("text", 20, photos, seed=1)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    with pytest.raises(FbmlError, match="not empty"):
        write_report(busy, [result], title="t")
    assert [path.name for path in busy.iterdir()] == ["thesis.tex"]
    a_file = tmp_path / "file.html"
    a_file.write_text("x")
    with pytest.raises(FbmlError, match="not a folder"):
        write_report(a_file, [result], title="t")


def test_replaces_an_earlier_report_and_accepts_an_empty_folder(tmp_path: Path, photos: list[Path | None]) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    result = _results("text", 40, photos, seed=2)
    write_report(folder, [result], title="first", mistakes=6)
    assert list(folder.glob("photo-*.jpg"))
    page = write_report(folder, [_results("other", 40, photos, seed=2)], title="second", mistakes=0)
    assert not list(folder.glob("photo-*.jpg")) and not list(folder.glob("1-text-*"))
    assert {image["src"] for image in _parse(page).images} == {"1-other-f1.png", "1-other-confusion.png", "1-other-reliability.png"}
    assert "second" in page.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("titles", ["only one"], "titles"),
        ("photos", [None] * 11, "photos"),
        ("product_ids", [f"p{index}" for index in range(9)], "product_ids"),
        ("probabilities", np.full((10, 4), 0.25), "probabilities"),
        ("probabilities", np.full((10, 5), 0.5), "sum to 1"),
        ("labels", np.arange(10) % 6, "labels"),
        ("labels", np.zeros(10) + 0.5, "integer"),
        ("class_names", ("a", "a", "b", "c", "d"), "distinct"),
        ("titles", "a string", "sequence of strings"),
    ],
)
def test_inconsistent_results_are_refused(field: str, value: object, message: str) -> None:
    fields: dict[str, object] = {
        "name": "text",
        "class_names": CLASSES,
        "product_ids": [f"p{index}" for index in range(10)],
        "labels": np.arange(10) % 5,
        "probabilities": np.full((10, 5), 0.2),
        "titles": ["t"] * 10,
        "photos": [None] * 10,
    }
    ModelResults(**fields)  # type: ignore[arg-type]  # the valid base case
    with pytest.raises(FbmlError, match=message):
        ModelResults(**{**fields, field: value})  # type: ignore[arg-type]


def test_report_arguments_are_checked(tmp_path: Path, photos: list[Path | None]) -> None:
    result = _results("text", 10, photos, seed=0)
    with pytest.raises(FbmlError, match="distinct"):
        write_report(tmp_path / "a", [result, result], title="t")
    with pytest.raises(FbmlError, match="at least one"):
        write_report(tmp_path / "b", [], title="t")
    with pytest.raises(FbmlError, match="mistakes"):
        write_report(tmp_path / "c", [result], title="t", mistakes=-1)
    assert not (tmp_path / "a").exists()
