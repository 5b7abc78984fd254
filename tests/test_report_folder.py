"""The report's folder: an earlier report is replaced, anything else refused, and a marker file never
makes the report remove a file outside its folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fbml.errors import FbmlError
from fbml.workflows.report import write_report
from fbml.workflows.report.folder import INDEX, MARKER, report_files

from report_examples import example_photos, example_results, parse


@pytest.fixture
def photos(tmp_path: Path) -> list[Path | None]:
    return example_photos(tmp_path)


def test_refuses_a_folder_that_is_not_a_report(tmp_path: Path, photos: list[Path | None]) -> None:
    result = example_results("text", 20, photos, seed=1)
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
    result = example_results("text", 40, photos, seed=2)
    write_report(folder, [result], title="first", mistakes=6)
    assert list(folder.glob("photo-*.jpg"))
    page = write_report(folder, [example_results("other", 40, photos, seed=2)], title="second", mistakes=0)
    assert not list(folder.glob("photo-*.jpg")) and not list(folder.glob("1-text-*"))
    assert {image["src"] for image in parse(page).images} == {"1-other-f1.png", "1-other-confusion.png", "1-other-reliability.png"}
    assert "second" in page.read_text(encoding="utf-8")


def test_a_marker_never_names_a_file_outside_the_folder(tmp_path: Path, photos: list[Path | None]) -> None:
    folder, outside = tmp_path / "report", tmp_path / "precious.txt"
    write_report(folder, [example_results("text", 20, photos, seed=1)], title="t", mistakes=0)
    outside.write_text("keep")
    marker = folder / MARKER
    listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
    marker.write_text(json.dumps({"files": [*listed, "../precious.txt", str(outside), "", ".", MARKER]}), encoding="utf-8")
    assert report_files(folder) == tuple(listed)
    write_report(folder, [example_results("other", 20, photos, seed=1)], title="t", mistakes=0)
    assert outside.read_text() == "keep" and (folder / INDEX).is_file()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"files": "index.html"}), json.dumps({"pages": []})])
def test_an_unreadable_marker_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / MARKER).write_text(content, encoding="utf-8")
    with pytest.raises(FbmlError, match="unreadable report marker"):
        report_files(tmp_path)


def test_a_link_left_in_the_folder_is_replaced_never_written_through(tmp_path: Path, photos: list[Path | None]) -> None:
    """An earlier report's page and pictures replaced by symbolic links to files outside: writing the report again
    replaces the links with its own files and leaves what they pointed to as it was; a marker that is a link is refused."""
    folder, outside = tmp_path / "report", tmp_path / "precious.txt"
    write_report(folder, [example_results("text", 20, photos, seed=1)], title="t", mistakes=0)
    outside.write_text("keep")
    names = json.loads((folder / MARKER).read_text(encoding="utf-8"))["files"]
    for name in names:
        (folder / name).unlink()
        (folder / name).symlink_to(outside)
    write_report(folder, [example_results("text", 20, photos, seed=1)], title="t", mistakes=0)
    assert outside.read_text() == "keep"
    assert all((folder / name).is_file() and not (folder / name).is_symlink() for name in names)
    (folder / MARKER).unlink()
    (folder / MARKER).symlink_to(outside)
    with pytest.raises(FbmlError, match="is a symbolic link, not a report fbml wrote"):
        report_files(folder)
