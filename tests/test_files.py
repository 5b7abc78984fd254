"""Atomic files and folders: whole or absent, and with the permissions plain ``open``/``mkdir`` give."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import fbml.files
import pytest
from fbml.errors import FbmlError
from fbml.files import atomic_directory, temporary_target, write_atomically
from fbml.vision.cache import remove_stale_builds


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=lambda mask: f"umask-{mask:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask set to the parameter for the test (each test process runs one test at a time)."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_mode_open_gives(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "model.json"
    write_atomically(target, b"{}")
    with open(tmp_path / "plain.json", "wb"):
        pass
    assert target.read_bytes() == b"{}"
    assert mode(target) == 0o666 & ~umask == mode(tmp_path / "plain.json")


def test_built_folders_get_the_mode_mkdir_gives(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "cache"
    with atomic_directory(target) as building:
        (building / "pixels.npy").write_bytes(b"x")
    (tmp_path / "plain").mkdir()
    assert (target / "pixels.npy").read_bytes() == b"x"
    assert mode(target) == 0o777 & ~umask == mode(tmp_path / "plain")


def test_a_taken_temporary_name_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(fbml.files.secrets, "token_hex", lambda _: next(names))
    (tmp_path / ".model.json.aaaaaaaa.tmp").write_bytes(b"someone else's")
    write_atomically(tmp_path / "model.json", b"mine")
    assert (tmp_path / "model.json").read_bytes() == b"mine"
    assert (tmp_path / ".model.json.aaaaaaaa.tmp").read_bytes() == b"someone else's"
    assert not (tmp_path / ".model.json.bbbbbbbb.tmp").exists()


def test_no_free_temporary_name_is_an_error_not_a_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fbml.files.secrets, "token_hex", lambda _: "cccccccc")
    (tmp_path / ".model.json.cccccccc.tmp").write_bytes(b"")
    with pytest.raises(FbmlError, match=r"no free temporary name for model.json after 100 attempts"):
        write_atomically(tmp_path / "model.json", b"mine")
    assert not (tmp_path / "model.json").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.json"
    target.write_bytes(b"old")

    def broken_fsync(_: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(fbml.files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk gone"):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["model.json"]


def test_a_failed_build_leaves_the_old_folder_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "cache"
    target.mkdir()
    (target / "old").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_directory(target) as building:
        (building / "new").write_bytes(b"new")
        raise RuntimeError("killed")
    assert [path.name for path in tmp_path.iterdir()] == ["cache"]
    assert [path.name for path in target.iterdir()] == ["old"]


def test_a_killed_build_leaves_a_folder_that_the_next_build_removes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build killed before its clean-up (here: the clean-up does nothing) leaves a folder named as
    ``temporary_target`` says, which ``remove_stale_builds`` deletes; other names stay."""
    target = tmp_path / "cache"
    monkeypatch.setattr(fbml.files.shutil, "rmtree", lambda *_, **__: None)
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as building:
        raise KeyboardInterrupt
    monkeypatch.undo()
    (tmp_path / ".cache.notours.tmp").mkdir()
    (tmp_path / ".other.0123abcd.tmp").mkdir()
    assert building.exists() and temporary_target(building.name) == target.name
    assert remove_stale_builds(target, older_than=time.time() + 1) == [building]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".cache.notours.tmp", ".other.0123abcd.tmp"]


def test_a_stale_build_newer_than_the_start_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cache"
    monkeypatch.setattr(fbml.files.shutil, "rmtree", lambda *_, **__: None)
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as building:
        raise KeyboardInterrupt
    monkeypatch.undo()
    assert remove_stale_builds(target, older_than=building.stat().st_mtime - 1) == []
    assert building.exists()


@pytest.mark.parametrize(("name", "target"), [
    (".model.json.0123abcd.tmp", "model.json"),
    (".cache.k3j_a8x1.old", "cache"),  # tempfile's alphabet, as earlier versions named them
    (".a.b.c.0123abcd.tmp", "a.b.c"),
    (".model.json.0123abc.tmp", None),
    (".model.json.0123ABCD.tmp", None),
    ("model.json.0123abcd.tmp", None),
    (".model.json.0123abcd.part", None),
    (".0123abcd.tmp", None),
])
def test_temporary_target_names_what_a_temporary_is_for(name: str, target: str | None) -> None:
    assert temporary_target(name) == target
