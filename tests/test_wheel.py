"""The wheel ``uv build`` makes: every module of fbml and contracts, the page's static files, py.typed, the
extras and the command. ``scripts/check_wheel.sh`` installs it and uses it; this is the fast check."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fbml", "contracts")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([uv, "build", "--quiet", "--wheel", "--out-dir", str(out)], cwd=ROOT, check=True, timeout=300)
    (path,) = out.glob("fbml-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def metadata(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [entry for entry in wheel.namelist() if entry.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def package_files() -> set[str]:
    """The files of fbml and contracts in the checkout (bytecode aside), as the wheel names them."""
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_the_wheel_holds_every_file_of_fbml_and_contracts_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    packaged = {name for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packaged == package_files()
    for needed in ("fbml/py.typed", "contracts/py.typed", "fbml/testing.py", "contracts/tables.py", "fbml/serving/static/index.html"):
        assert needed in names


def test_the_pages_static_files_are_packaged_where_the_app_reads_them(wheel: zipfile.ZipFile) -> None:
    from fbml.serving.docs import OWN
    from fbml.serving.page import ASSETS

    assert {f"fbml/serving/static/{name}" for name, _ in [*ASSETS.values(), *OWN.values()]} <= set(wheel.namelist())


def test_the_metadata_names_the_dependencies_the_extras_and_the_command(wheel: zipfile.ZipFile) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    fields: Message = Parser().parsestr(metadata(wheel, "METADATA"))
    requires = fields.get_all("Requires-Dist") or []
    assert sorted(fields.get_all("Provides-Extra") or []) == sorted(project["optional-dependencies"]) == ["otel", "ray", "testing"]
    for extra, dependencies in project["optional-dependencies"].items():
        assert {f"{dependency}; extra == '{extra}'" for dependency in dependencies} <= set(requires)
    assert set(project["dependencies"]) <= set(requires)
    assert "hypothesis>=6.115; extra == 'testing'" in requires
    assert "fbml = fbml.cli:console_script" in metadata(wheel, "entry_points.txt")
