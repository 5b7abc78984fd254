"""The service image: static checks of Containerfile, .containerignore and scripts/build_image.sh.

The real build (``scripts/build_image.sh``: debootstrap, podman build, smoke test in the mounted
image) downloads several GB (torch and its CUDA wheels) and needs root and podman; it runs only
with ``FBML_CONTAINER_TEST=1``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "Containerfile"
CONTAINERIGNORE = ROOT / ".containerignore"
BUILD_SCRIPT = ROOT / "scripts" / "build_image.sh"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    if current:
        logical.append(current)
    return [(line.split(None, 1)[0].upper(), (line.split(None, 1) + [""])[1].strip()) for line in logical]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _instructions(CONTAINERFILE.read_text(encoding="utf-8"))


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _args(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for instruction, args in stage if instruction == name]


def test_base_image_is_a_build_arg_used_by_every_stage(instructions):
    preamble = instructions[: next(i for i, (name, _) in enumerate(instructions) if name == "FROM")]
    assert ("ARG", "BASE_IMAGE=localhost/fbml-base:bookworm") in preamble
    froms = [args for name, args in instructions if name == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    assert all(args.startswith("${BASE_IMAGE}") for args in froms), froms


def test_builder_installs_the_locked_environment_dependencies_first(instructions):
    builder = _stages(instructions)[0]
    env = " ".join(_args(builder, "ENV"))
    for setting in ("UV_COMPILE_BYTECODE=1", "UV_LINK_MODE=copy", "UV_NO_CACHE=1", "UV_PROJECT_ENVIRONMENT=/app/.venv"):
        assert setting in env
    runs = _args(builder, "RUN")
    sync_deps = next(i for i, (name, args) in enumerate(builder) if name == "RUN" and "--no-install-project" in args)
    sync_all = next(
        i for i, (name, args) in enumerate(builder)
        if name == "RUN" and "uv sync" in args and "--no-install-project" not in args
    )
    assert sync_deps < sync_all
    assert all("--frozen --no-dev" in args for args in runs if "uv sync" in args)
    copies = [(i, args) for i, (name, args) in enumerate(builder) if name == "COPY"]
    before_deps = " ".join(args for i, args in copies if i < sync_deps)
    assert "pyproject.toml" in before_deps and "uv.lock" in before_deps
    assert "fbml" not in before_deps.replace("pyproject", ""), "sources must come after the dependency layer"
    after_deps = " ".join(args for i, args in copies if sync_deps < i < sync_all)
    for path in ("README.md", "contracts/", "fbml/"):
        assert path in after_deps


def test_runtime_stage_serves_as_a_non_root_user(instructions):
    runtime = _stages(instructions)[-1]
    copies = " ".join(_args(runtime, "COPY"))
    assert "--from=builder /app/.venv" in copies
    assert not any("tests" in args for args in _args(runtime, "COPY"))
    users = _args(runtime, "USER")
    assert users and users[-1] not in ("root", "0"), users
    assert "8080" in " ".join(_args(runtime, "EXPOSE"))
    env = " ".join(_args(runtime, "ENV"))
    assert "PATH=/app/.venv/bin:" in env and "FBML_BUNDLE=/bundle" in env
    assert "/bundle" in " ".join(_args(runtime, "VOLUME"))
    healthcheck = " ".join(_args(runtime, "HEALTHCHECK"))
    assert "/health" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    cmd = _args(runtime, "CMD")[-1]
    assert cmd == '["fbml", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8080"]'


def test_bundle_is_an_optional_build_arg(instructions):
    assert any(name == "ARG" and args.split("=")[0] == "BUNDLE" for name, args in instructions)
    assert any(name == "COPY" and "${BUNDLE:-" in args for name, args in instructions)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .containerignore pattern as a regex: ``**/`` any directories (or none), ``*`` within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (or a folder above it) is excluded; the last matching pattern wins."""
    prefixes = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_containerignore_keeps_local_state_out_of_the_context():
    patterns = [
        line.strip() for line in CONTAINERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python", ".git/HEAD", "fbml/__pycache__/cli.cpython-311.pyc", ".pytest_cache/README.md",
        ".hypothesis/examples/x", "tests/test_cli.py", "data/Products.csv", "runs/text/events",
        "model.work/runs/x", "fbml-quickstart/Products.csv",
    ):
        assert _ignored(path, patterns), path
    for path in ("pyproject.toml", "uv.lock", "README.md", "fbml/cli.py", "contracts/tables.py", "bundle/bundle.json"):
        assert not _ignored(path, patterns), path


def test_build_script_is_valid_bash():
    assert os.access(BUILD_SCRIPT, os.X_OK), "scripts/build_image.sh should be executable"
    result = subprocess.run(["bash", "-n", str(BUILD_SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = BUILD_SCRIPT.read_text(encoding="utf-8")
    for piece in ("--isolation=chroot", "--format docker", "podman image mount", "chroot", "debootstrap"):
        assert piece in text, piece


@pytest.mark.container
@pytest.mark.skipif(os.environ.get("FBML_CONTAINER_TEST") != "1", reason="set FBML_CONTAINER_TEST=1 (downloads GBs)")
def test_image_builds_and_passes_its_smoke_test():
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, podman image mount, chroot)")
    if shutil.which("apt-get") is None and (shutil.which("podman") is None or shutil.which("debootstrap") is None):
        pytest.skip("needs podman and debootstrap (or apt-get to install them)")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=3 * 60 * 60
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "smoke test passed" in result.stdout
    assert "==> " in result.stdout and "OK: " in result.stdout
