"""The photos of the mistakes: a thumbnail of each readable photo, one placeholder for those that cannot
be shown, and the page shows each with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from fbml.workflows.report import write_report
from fbml.workflows.report.results import ModelResults
from fbml.workflows.report.thumbnails import PLACEHOLDER, THUMBNAIL, thumbnails

from report_examples import EVIL, example_photos, example_results, parse


@pytest.fixture
def photos(tmp_path: Path) -> list[Path | None]:
    return example_photos(tmp_path)


@pytest.fixture
def report(tmp_path: Path, photos: list[Path | None]) -> tuple[Path, list[ModelResults]]:
    results = [example_results(name, 60, photos, seed=seed) for seed, name in enumerate(("text", "image", "combined"))]
    return write_report(tmp_path / "report", results, title="Evaluation", mistakes=8), results


def test_a_thumbnail_per_readable_photo_and_one_placeholder(photos: list[Path | None]) -> None:
    thumbs, pictures = thumbnails(photos)
    assert [thumbs[path].file for path in photos] == ["photo-001.jpg", "photo-002.jpg", "photo-003.jpg", *[PLACEHOLDER] * 3]
    assert [thumbs[path].problem for path in photos] == [None, None, None, "photo unreadable", "photo missing", "no photo"]
    assert [picture.name for picture in pictures] == ["photo-001.jpg", "photo-002.jpg", "photo-003.jpg", PLACEHOLDER]
    assert all(picture.image.size == (THUMBNAIL, THUMBNAIL) and picture.image.mode == "RGB" for picture in pictures)
    assert thumbnails(photos[:3])[1][-1].name != PLACEHOLDER  # no placeholder when every photo reads


def test_mistakes_show_photos_or_a_placeholder_and_the_top_two_classes(
    report: tuple[Path, list[ModelResults]], photos: list[Path | None]
) -> None:
    page, results = report
    parsed = parse(page)
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
