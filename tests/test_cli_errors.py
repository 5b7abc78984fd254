"""Every command on bad paths, ports and inputs: exit status 2 and one line naming what is wrong, before
any long work, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fbml.cli import main

Setup = Callable[[Path, object], list[str]]


def header_only(root: Path) -> tuple[Path, Path]:
    products, images = root / "P.csv", root / "I.csv"
    products.write_text(",id,product_name,category,product_description,price,location\n")
    images.write_text(",id,product_id\n")
    return products, images


def data(sample) -> list[str]:
    return ["--products", str(sample.products_csv), "--images", str(sample.images_csv), "--image-dir", str(sample.image_dir)]


def a_file(root: Path) -> Path:
    path = root / "a-file"
    path.write_text("not a folder")
    return path


def a_folder(root: Path, name: str = "folder", files: int = 0) -> Path:
    path = root / name
    path.mkdir(exist_ok=True)
    for index in range(files):
        (path / f"{index}.txt").write_text("x")
    return path


def a_bundle(root: Path) -> Path:
    """A folder that passes for a bundle as far as the commands' first checks go (its manifest is read later)."""
    path = root / "bundle"
    path.mkdir(exist_ok=True)
    (path / "bundle.json").write_text('{"format": "fbml.bundle/2", "codec": {"file": "codec-0000000000000000.json", '
                                      '"sha256": "' + "0" * 64 + '"}}')
    return path


def busy_port() -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener, listener.getsockname()[1]


CASES: dict[str, tuple[Setup, str]] = {
    "sample into a file": (lambda root, sample: ["sample", str(a_file(root))], "a-file"),
    "clean-products of a missing file": (lambda root, sample: ["clean-products", str(root / "nope.csv"), "--out", str(root / "o")],
                                         "nope.csv: no such file"),
    "clean-products of a folder": (lambda root, sample: ["clean-products", str(a_folder(root)), "--out", str(root / "o")],
                                   "folder"),
    "clean-products into a file": (lambda root, sample: ["clean-products", str(sample.products_csv), "--out", str(a_file(root))],
                                   "a-file: exists and is not a folder"),
    "clean-images of a file": (lambda root, sample: ["clean-images", str(a_file(root)), str(root / "o")], "a-file"),
    "clean-images into a file": (lambda root, sample: ["clean-images", str(sample.image_dir), str(a_file(root))], "a-file"),
    "clean-images of size 0": (lambda root, sample: ["clean-images", str(sample.image_dir), str(root / "o"), "--size", "0"],
                               "must be at least 1, got 0"),
    "baselines on header-only tables": (lambda root, sample: ["baselines", "--products", str(header_only(root)[0]),
                                                             "--images", str(header_only(root)[1])], "no clean products"),
    "baselines with a missing photo folder": (lambda root, sample: ["baselines", *data(sample)[:4], "--image-dir",
                                                                   str(root / "none")], "none: no such photo folder"),
    "train into a file": (lambda root, sample: ["train", "--model", "text", *data(sample), "--out", str(a_file(root))],
                          "a-file: exists and is not a bundle folder"),
    "train an image model on an empty folder": (lambda root, sample: ["train", "--model", "image", *data(sample)[:4],
                                                                     "--image-dir", str(a_folder(root)), "--out", str(root / "b")],
                                                "the photo folder has no files"),
    "train on a missing device": (lambda root, sample: ["train", "--model", "text", *data(sample), "--out", str(root / "b"),
                                                        "--device", "cuda:3"], "device cuda:3 is not available"),
    "train with 0 epochs": (lambda root, sample: ["train", "--model", "text", *data(sample), "--out", str(root / "b"),
                                                  "--epochs", "0"], "must be at least 1, got 0"),
    "train with epochs not a number": (lambda root, sample: ["train", "--model", "text", *data(sample), "--out", str(root / "b"),
                                                             "--epochs", "ten"], "not an integer: 'ten'"),
    "evaluate a folder that is not a bundle": (lambda root, sample: ["evaluate", str(a_folder(root, files=1)), *data(sample)],
                                               "not a bundle (no bundle.json)"),
    "evaluate a missing bundle": (lambda root, sample: ["evaluate", str(root / "none"), *data(sample)],
                                  "not a bundle (no such folder)"),
    "index a missing bundle": (lambda root, sample: ["index", str(root / "none"), *data(sample)], "not a bundle"),
    "serve a missing bundle": (lambda root, sample: ["serve", str(root / "none")], "not a bundle"),
    "serve on port 99999": (lambda root, sample: ["serve", str(root), "--port", "99999"], "a port is between 1 and 65535"),
    "serve photos of a missing folder": (lambda root, sample: ["serve", str(root), "--photos", str(root / "none")],
                                         "none: no such folder"),
    "serve photos of a file": (lambda root, sample: ["serve", str(root), "--photos", str(a_file(root))], "a-file: not a folder"),
    "quickstart into a file": (lambda root, sample: ["quickstart", "--out", str(a_file(root))], "a-file"),
    "clean-images into its own source": (lambda root, sample: ["clean-images", str(sample.image_dir), str(sample.image_dir)],
                                         "the destination is the source folder"),
    "clean-images into a folder inside its source": (lambda root, sample: ["clean-images", str(sample.image_dir),
                                                                           str(sample.image_dir / "small")],
                                                     "the destination is inside the source folder"),
    "train a text model with a missing photo folder": (lambda root, sample: ["train", "--model", "text", *data(sample)[:4],
                                                                              "--image-dir", str(root / "none"), "--out",
                                                                              str(root / "b")], "none: no such photo folder"),
    "train into the photo folder": (lambda root, sample: ["train", "--model", "text", *data(sample), "--out",
                                                         str(sample.image_dir / "bundle")], "the bundle is inside the photo folder"),
    "evaluate with a missing photo folder": (lambda root, sample: ["evaluate", str(root), *data(sample)[:4], "--image-dir",
                                                                  str(root / "none")], "none: no such photo folder"),
    "evaluate a report into the photo folder": (lambda root, sample: ["evaluate", str(root), *data(sample), "--report",
                                                                     str(sample.image_dir)], "the report is the photo folder"),
    "index with a missing photo folder": (lambda root, sample: ["index", str(a_bundle(root)), *data(sample)[:4], "--image-dir",
                                                               str(root / "none")], "none: no such photo folder"),
    "an unknown command": (lambda root, sample: ["nonsense"], "invalid choice: 'nonsense'"),
    "a missing argument": (lambda root, sample: ["train", "--model", "text"], "the following arguments are required"),
}


def run(args: list[str]) -> int:
    """``main``'s exit status, also when argparse exits from inside parsing."""
    try:
        return main(args)
    except SystemExit as exited:
        return int(exited.code or 0)


@pytest.mark.parametrize(("setup", "message"), CASES.values(), ids=CASES.keys())
def test_a_bad_invocation_is_one_line_and_exit_2(tmp_path: Path, sample, capsys, setup: Setup, message: str) -> None:
    args = setup(tmp_path, sample)
    capsys.readouterr()
    code = run(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fbml: error: ") and message in lines[0], err


def test_serve_on_a_port_in_use_is_one_line(trained_bundle_dir: Path) -> None:
    listener, port = busy_port()
    try:
        result = subprocess.run([sys.executable, "-m", "fbml.cli", "serve", str(trained_bundle_dir), "--port", str(port)],
                                capture_output=True, text=True, timeout=120)
    finally:
        listener.close()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"fbml: error: cannot listen on 127.0.0.1:{port} (Address already in use)"]


@pytest.fixture(scope="module")
def trained_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small text bundle trained through the CLI."""
    from fbml.sample.marketplace import write_sample

    root = tmp_path_factory.mktemp("cli-errors")
    sample = write_sample(root / "raw", products=80, seed=1)
    assert main(["train", "--model", "text", "--epochs", "1", "--products", str(sample.products_csv),
                 "--images", str(sample.images_csv), "--out", str(root / "bundle"), "--device", "cpu"]) == 0
    return root / "bundle"


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_resume_from_a_broken_checkpoint_is_one_line(tmp_path: Path, sample, capsys, damage: str) -> None:
    import torch

    work = tmp_path / "work"
    checkpoint = work / "checkpoints" / "text-cnn" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    if damage == "truncated":
        torch.save({"model": {"x": torch.zeros(3)}}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:40])
    else:
        torch.save({"model": {"not.a.key": torch.zeros(3)}, "optimizer": {}, "schedule": {}, "history": "[]"}, checkpoint)
    capsys.readouterr()
    code = main(["train", "--model", "text", "--epochs", "1", "--products", str(sample.products_csv), "--images",
                 str(sample.images_csv), "--out",
                 str(tmp_path / "b"), "--work-dir", str(work), "--resume", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "last.pt: cannot resume from this checkpoint" in err[0] and "without --resume" in err[0]


def test_evaluate_of_a_text_bundle_with_a_missing_photo_folder_is_one_line(trained_bundle_dir: Path, tmp_path: Path,
                                                                           sample, capsys) -> None:
    """A text-only bundle needs no photos, but a folder the user typed that does not exist is still an error."""
    capsys.readouterr()
    code = main(["evaluate", str(trained_bundle_dir), *data(sample)[:4], "--image-dir", str(tmp_path / "typo")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"fbml: error: {tmp_path / 'typo'}: no such photo folder"]


@pytest.mark.parametrize("setting", ["missing", "a-file"])
def test_serve_with_an_unusable_metrics_folder_is_one_line_before_any_worker(trained_bundle_dir: Path, tmp_path: Path,
                                                                             setting: str) -> None:
    """Several workers with $PROMETHEUS_MULTIPROC_DIR naming a missing folder (or a file) crashed in a loop while the
    parent served nothing; now nothing starts."""
    import os

    from fbml.serving.server import free_port

    folder = tmp_path / "metrics" if setting == "missing" else a_file(tmp_path)
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    for workers in ("1", "2"):
        result = subprocess.run([sys.executable, "-m", "fbml.cli", "serve", str(trained_bundle_dir), "--port", str(free_port()),
                                 "--workers", workers], capture_output=True, text=True, timeout=120, env=environment)
        assert result.returncode == 2, result.stderr
        reason = "no such folder" if setting == "missing" else "not a folder"
        assert result.stderr.strip().splitlines() == [f"fbml: error: PROMETHEUS_MULTIPROC_DIR={folder}: {reason}"]
