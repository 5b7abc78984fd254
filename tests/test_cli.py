"""The ``fbml`` command line: each stage end to end, and one clear line for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from contracts import CleanProducts, ImageManifest, Rejected
from fbml.cli import main


def fbml(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a child process."""
    command = [sys.executable, "-m", "fbml.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["sample", "clean-products", "clean-images", "baselines", "quickstart"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: fbml" in capsys.readouterr().out


def test_clean_products_accounts_for_every_row(sample, tmp_path: Path) -> None:
    out = tmp_path / "clean"
    result = fbml("clean-products", sample.products_csv, "--images", sample.images_csv, "--out", out)
    assert result.returncode == 0, result.stderr
    products = CleanProducts.validate(pl.read_parquet(out / "products.parquet"))
    rejected = Rejected.validate(pl.read_parquet(out / "rejected.parquet"))
    images = ImageManifest.validate(pl.read_parquet(out / "images.parquet"))
    raw_products = pl.read_csv(sample.products_csv, infer_schema=False).height
    raw_images = pl.read_csv(sample.images_csv, infer_schema=False).height
    by_stage = dict(rejected.group_by("stage").len().iter_rows())
    assert products.height + by_stage["products"] == raw_products
    assert images.height + by_stage["images"] == raw_images
    assert f"products: {raw_products} read, {products.height} clean" in result.stdout
    assert "unparseable price" in result.stdout


@pytest.mark.parametrize(("preset", "expected"), [(None, "dirty_decay_ms:2000,muzzy_decay_ms:2000"), ("narenas:2", "narenas:2")])
def test_clean_products_keeps_freed_memory_for_the_next_batch(sample, tmp_path: Path, preset: str | None, expected: str) -> None:
    """polars appends the variable to its own allocator settings (the last value of each wins); one set by the user is kept."""
    code = ("import os\nfrom fbml.cli import main\n"
            f"main(['clean-products', {str(sample.products_csv)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
            "print(os.environ['_RJEM_MALLOC_CONF'])")
    environment = {name: value for name, value in os.environ.items() if name != "_RJEM_MALLOC_CONF"}
    if preset is not None:
        environment["_RJEM_MALLOC_CONF"] = preset
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    assert done.stdout.splitlines()[-1].endswith(expected)


def test_real_products_from_the_command_line(real_data, tmp_path: Path) -> None:
    result = fbml(
        "clean-products", real_data / "Products.csv", "--images", real_data / "Images.csv", "--out", tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "products: 6081 read, 6081 clean, 0 rejected" in result.stdout
    assert "photos: 10702 read, 10702 joined to a product, 0 rejected" in result.stdout


def test_clean_images_command(sample, tmp_path: Path) -> None:
    result = fbml("clean-images", sample.image_dir, tmp_path / "out", "--size", "32", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "rejected" in result.stdout
    assert len(list((tmp_path / "out").glob("*.jpg"))) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["clean-products", "missing.csv", "--out", "x"], "missing.csv: no such file"),
        (["clean-images", "no-such-dir", "y"], "no-such-dir: no such directory"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fbml.cli", *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"fbml: error: {message}"


def test_wrong_columns_and_unreadable_csv(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    result = fbml("clean-products", wrong, "--out", tmp_path / "o")
    assert result.returncode == 2
    assert result.stderr.startswith(f"fbml: error: {wrong}: missing column(s) id, product_name")
    assert len(result.stderr.strip().splitlines()) == 1
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x00\xff\xfe" * 100)
    result = fbml("clean-products", binary, "--out", tmp_path / "o")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"fbml: error: {binary}: ")


def test_clean_products_refuses_a_latin1_table_in_one_line_that_names_its_encoding(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(",id,product_name,category,product_description,price,location\n0,p1,Café,A,d,£10.00,x\n".encode("latin-1"))
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    for source, message in ((latin1, "is not UTF-8 (byte 0xe9 on line 2): it looks like Latin-1 (ISO-8859-1); "),
                            (folder, "is a folder, not a file")):
        result = fbml("clean-products", source, "--out", tmp_path / "o")
        assert result.returncode == 2
        assert result.stderr.startswith(f"fbml: error: {source}: {message}")
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "status", "triton", "heap"), [
    (["sample", "market"], 0, False, "frozen"), (["clean-images", "no-such-folder", "out"], 2, False, "frozen"),
    (["sample", "market"], 0, True, "not frozen"),
])  # fmt: skip
def test_the_executable_exits_with_mains_status_its_heap_frozen_and_atexit_run(tmp_path: Path, args: list[str], status: int,
                                                                             triton: bool, heap: str) -> None:  # fmt: skip
    """``fbml`` (``console_script``) spares the interpreter's last collections, unless triton is loaded (its bindings
    would report the uncollected objects as leaks), and still runs the atexit handlers."""
    script = ("import atexit, gc, sys, types\n"
              "atexit.register(lambda: print('frozen' if gc.get_freeze_count() else 'not frozen'))\n"
              f"if {triton}: sys.modules['triton'] = types.ModuleType('triton')\n"
              f"sys.argv = ['fbml', *{args!r}]\n"
              "from fbml.cli import console_script\n"
              "console_script()\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == status
    assert done.stdout.splitlines()[-1] == heap
