"""The report's page as parsed: a row for every class, the figures of the data, every picture beside it,
user text escaped, nothing fetched from outside; write_report's arguments checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from fbml.errors import FbmlError
from fbml.modeling.metrics import expected_calibration_error
from fbml.workflows.report import write_report
from fbml.workflows.report.folder import INDEX
from fbml.workflows.report.results import ModelResults
from PIL import Image

from report_examples import CLASSES, EVIL, example_photos, example_results, parse


@pytest.fixture
def photos(tmp_path: Path) -> list[Path | None]:
    return example_photos(tmp_path)


@pytest.fixture
def report(tmp_path: Path, photos: list[Path | None]) -> tuple[Path, list[ModelResults]]:
    results = [example_results(name, 60, photos, seed=seed) for seed, name in enumerate(("text", "image", "combined"))]
    page = write_report(
        tmp_path / "report", results, title="Evaluation", notes={"bundle": "/models/b", "date": "2025-01-01"}, mistakes=8
    )
    return page, results


def test_every_model_has_a_row_for_every_class_also_one_without_support(report: tuple[Path, list[ModelResults]]) -> None:
    page, results = report
    assert page == page.parent / INDEX and page.is_file()
    parsed = parse(page)
    for result in results:
        rows = parsed.rows("per-class", result.name)
        assert [row[0] for row in rows] == list(CLASSES)
        support = {row[0]: int(row[1]) for row in rows}
        assert support == {name: int((result.labels == index).sum()) for index, name in enumerate(CLASSES)}
        assert rows[4][1:] == ["0", "0", "0.000", "0.000", "0.000"]  # "Garden": neither truth nor predicted


def test_summary_figures_match_the_data(report: tuple[Path, list[ModelResults]]) -> None:
    page, results = report
    overview = parse(page).rows("overview", None)  # type: ignore[arg-type]
    for row, result in zip(overview, results, strict=True):
        accuracy = (result.probabilities.argmax(axis=1) == result.labels).mean()
        ece = expected_calibration_error(result.labels, result.probabilities)
        assert row[0] == result.name
        assert row[1] == f"{result.size:,}"
        assert row[2] == f"{accuracy:.3f}"
        assert row[4] == f"{ece:.3f}"


def test_every_picture_exists_beside_the_page_and_opens(report: tuple[Path, list[ModelResults]]) -> None:
    page, results = report
    parsed = parse(page)
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


def test_user_text_is_escaped(tmp_path: Path, photos: list[Path | None]) -> None:
    result = example_results(f"model {EVIL}", 30, photos, seed=3)
    page = write_report(tmp_path / "r", [result], title=f"title {EVIL}", notes={EVIL: f"note {EVIL}"})
    content = page.read_text(encoding="utf-8")
    parsed = parse(page)
    assert "script" not in parsed.tags
    assert "<script" not in content
    text = "".join(parsed.text)
    assert f"title {EVIL}" in text and f"note {EVIL}" in text and f"{EVIL} & cheap" in text


def test_the_page_needs_nothing_from_outside(report: tuple[Path, list[ModelResults]]) -> None:
    page, _ = report
    parsed = parse(page)
    assert not {"script", "link", "iframe", "object", "embed"} & set(parsed.tags)
    content = page.read_text(encoding="utf-8")
    assert "http:" not in content and "https:" not in content and "@import" not in content
    assert all(href.startswith("#") for href in parsed.hrefs)


def test_report_arguments_are_checked(tmp_path: Path, photos: list[Path | None]) -> None:
    result = example_results("text", 10, photos, seed=0)
    with pytest.raises(FbmlError, match="distinct"):
        write_report(tmp_path / "a", [result, result], title="t")
    with pytest.raises(FbmlError, match="at least one"):
        write_report(tmp_path / "b", [], title="t")
    with pytest.raises(FbmlError, match="mistakes"):
        write_report(tmp_path / "c", [result], title="t", mistakes=-1)
    assert not (tmp_path / "a").exists()
