"""Each light ``fbml`` command imports only what it uses: run on its typical path in a fresh interpreter,
the heavy libraries it has no use for are never imported (each costs seconds per process, in every
worker too where workers are spawned)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "timm", "sklearn", "pandera", "pandas", "gensim", "litestar", "ray", "onnxruntime", "scipy")
RUN = """
import json, sys
from fbml.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def heavy_imports(*args: str | Path) -> tuple[list[str], str]:
    """The heavy top-level modules ``fbml ARGS`` imported, and what it printed; it must succeed."""
    done = subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    *printed, last = done.stdout.splitlines()
    result = json.loads(last)
    assert result["code"] == 0, done.stderr[-2000:]
    return [name for name in HEAVY if name in result["modules"]], "\n".join(printed)


def test_help_imports_nothing_heavy() -> None:
    heavy, printed = heavy_imports("--help")
    assert heavy == [] and "clean-products" in printed


def test_sample_imports_nothing_heavy(tmp_path: Path) -> None:
    heavy, printed = heavy_imports("sample", tmp_path / "market", "--products", "30")
    assert heavy == [] and "wrote" in printed


def test_clean_products_imports_nothing_heavy(sample, tmp_path: Path) -> None:
    heavy, printed = heavy_imports("clean-products", sample.products_csv, "--images", sample.images_csv,
                                   "--out", tmp_path / "out")
    assert heavy == []
    assert "products: 650 read, 641 clean, 9 rejected" in printed


def test_clean_images_imports_nothing_heavy(sample, tmp_path: Path) -> None:
    heavy, printed = heavy_imports("clean-images", sample.image_dir, tmp_path / "photos", "--size", "32", "--workers", "2")
    assert heavy == []
    assert f"{sample.defects.unreadable_photos} rejected" in printed


def test_photo_workers_start_without_the_report_modules() -> None:
    """The photo cleaning's workers are forked before polars loads (the report's; it loads while they clean), so
    neither they nor the parent pay for it before the first photo."""
    code = "import sys, fbml.vision.cleaning; print(sorted({'polars', 'numpy', 'contracts'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert done.stdout.strip() == "[]"


def test_baselines_import_no_deep_learning(sample) -> None:
    """The baselines are scikit-learn's; the tables are checked by pandera (so pandas) as they are cleaned in memory."""
    heavy, printed = heavy_imports("baselines", "--products", sample.products_csv, "--images", sample.images_csv,
                                   "--image-dir", sample.image_dir, "--pixel-size", "4", "--json")
    assert heavy == ["sklearn", "pandera", "pandas", "scipy"]
    assert json.loads(printed)["image"]["test_photos"] > 0


def test_the_predict_workflow_imports_nothing_heavy() -> None:
    """``fbml predict``'s modules (streamed cleaning, photo decoding, the bundle's prediction path) import no heavy
    library: loading the bundle imports its runtime alone (a whole run on each runtime: ``tests/test_predict.py``)."""
    code = f"import sys, fbml.workflows.predict; print(sorted(set({HEAVY!r}) & {{name.split('.')[0] for name in sys.modules}}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert done.stdout.strip() == "[]"
