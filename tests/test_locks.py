"""Bundle locks: a second writer is refused at once naming the holder, readers wait for a save, and a
killed holder leaves no lock behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fbml.bundle.locks import WRITER_LOCK, bundle_files, bundle_writer
from fbml.cli import main
from fbml.errors import FbmlError

HOLD = """
import sys, time
from pathlib import Path
from fbml.bundle.locks import bundle_files, bundle_writer
kind, path = sys.argv[1], Path(sys.argv[2])
path.mkdir(exist_ok=True)
lock = bundle_writer(path, "the test's holder") if kind == "writer" else bundle_files(path, shared=False)
with lock:
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """Start a process that holds a lock of ``tmp_path / 'bundle'`` until it is stopped (by its id)."""
    started: list[subprocess.Popen[str]] = []

    def start(kind: str) -> subprocess.Popen[str]:
        process = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(tmp_path / "bundle")],
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=30)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path, holder) -> None:
    process = holder("writer")
    with (pytest.raises(FbmlError, match=rf"bundle is being written by pid {process.pid} \(the test's holder\) since "),
          bundle_writer(tmp_path / "bundle", "me")):
        pass


def test_a_killed_writer_leaves_no_lock(tmp_path: Path, holder) -> None:
    process = holder("writer")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    with bundle_writer(tmp_path / "bundle", "me"):
        assert (tmp_path / "bundle" / WRITER_LOCK).read_text().startswith(f"pid {os.getpid()} (me) since ")
    assert (tmp_path / "bundle" / WRITER_LOCK).read_text() == ""


def test_a_reader_waits_for_a_save_and_gives_up_after_its_limit(tmp_path: Path, holder) -> None:
    holder("files")
    started = time.monotonic()
    with (pytest.raises(FbmlError, match="the bundle's files stayed locked for 0 s"),
          bundle_files(tmp_path / "bundle", shared=True, wait_seconds=0.3)):
        pass
    assert 0.3 <= time.monotonic() - started < 10


def test_readers_share_the_files_lock(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    with bundle_files(tmp_path / "bundle", shared=True), bundle_files(tmp_path / "bundle", shared=True, wait_seconds=0.1):
        pass


def test_a_read_only_bundle_is_read_without_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores the mode
            pytest.skip("running as root: a folder cannot be made read-only")
        with bundle_files(folder, shared=True):
            pass
        with pytest.raises(FbmlError, match="cannot write the bundle"), bundle_files(folder, shared=False):
            pass
    finally:
        folder.chmod(0o755)


def test_fbml_train_into_a_bundle_being_written_stops_at_once(sample, tmp_path: Path, holder, capsys) -> None:
    """Two trainings into one bundle: the second exits 2 with one line naming the first, before any work."""
    process = holder("writer")
    capsys.readouterr()
    code = main(["train", "--model", "text", "--epochs", "1", "--products", str(sample.products_csv),
                 "--images", str(sample.images_csv), "--out", str(tmp_path / "bundle"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert f"being written by pid {process.pid}" in err and len(err.splitlines()) == 1
    assert {path.name for path in (tmp_path / "bundle").iterdir()} <= {WRITER_LOCK, ".fbml-files.lock"}
    assert not (tmp_path / "bundle.work").exists()


def test_two_trainings_at_once_never_lose_a_model(sample, tmp_path: Path) -> None:
    """Each of two concurrent ``fbml train`` runs into one bundle succeeds or exits 2 with one line saying
    why; the bundle then loads and holds the models of every run that succeeded."""
    from fbml.bundle.store import load_bundle

    bundle = tmp_path / "bundle"
    data = ["--products", str(sample.products_csv), "--images", str(sample.images_csv), "--image-dir",
            str(sample.image_dir), "--out", str(bundle), "--device", "cpu", "--epochs", "1"]
    commands = {"text": ["--model", "text"], "image": ["--model", "image", "--image-size", "32"]}
    runs = {kind: subprocess.Popen([sys.executable, "-m", "fbml.cli", "train", *args, *data], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
            for kind, args in commands.items()}
    try:
        outcomes = {kind: (run.wait(timeout=600), run.stderr.read() if run.stderr else "") for kind, run in runs.items()}
    finally:
        for run in runs.values():
            run.kill()
            run.wait(timeout=30)
    assert all(code in (0, 2) for code, _ in outcomes.values()), outcomes
    assert any(code == 0 for code, _ in outcomes.values()), outcomes
    for code, err in outcomes.values():
        if code == 2:
            lines = [line for line in err.splitlines() if line.startswith("fbml: error:")]
            assert len(lines) == 1 and "is being written by pid" in lines[0], err
    models = set(load_bundle(bundle).models)
    expected = {"text": {"text-cnn", "text-linear"}, "image": {"image-cnn"}}
    for kind, (code, _) in outcomes.items():
        if code == 0:
            assert expected[kind] <= models, (kind, models)
