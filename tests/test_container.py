"""The service images: static checks of Containerfile (the torch image, its default target, and the
lean ``onnx`` target), .containerignore and scripts/build_image.sh, and the onnx target's pruned
requirements exported from uv.lock.

The real build (``scripts/build_image.sh``: debootstrap, podman build, smoke test in the mounted
image) downloads several GB (torch and its CUDA wheels) and needs root and podman; it runs only
with ``FBML_CONTAINER_TEST=1``.
"""

from __future__ import annotations

import os
import re
import shlex
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


def _named(instructions: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """The stage ``FROM ... AS name``."""
    return next(stage for stage in _stages(instructions) if stage[0][1].split()[-1] == name)


ONNX_CMD = '["fbml", "serve", "/bundle", "--runtime", "onnx", "--host", "0.0.0.0", "--port", "8080"]'


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
    assert "/health/ready" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    cmd = _args(runtime, "CMD")[-1]
    assert cmd == '["fbml", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8080"]'


def test_onnx_target_serves_the_onnx_runtime_from_the_torch_free_venv(instructions):
    onnx, runtime = _named(instructions, "onnx"), _stages(instructions)[-1]
    assert _stages(instructions).index(onnx) < len(_stages(instructions)) - 1, "the torch image stays the default"
    assert "--from=builder-onnx /app/.venv /app/.venv" in _args(onnx, "COPY")
    assert not any("--from=builder " in args for args in _args(onnx, "COPY"))
    for instruction in ("ENV", "USER", "EXPOSE", "VOLUME", "HEALTHCHECK", "WORKDIR"):
        assert _args(onnx, instruction) == _args(runtime, instruction), instruction
    assert _args(onnx, "CMD")[-1] == ONNX_CMD


def test_onnx_builder_installs_the_lock_without_torch_and_without_resolving(instructions):
    builder = _named(instructions, "builder-onnx")
    runs = _args(builder, "RUN")
    export = next(args for args in runs if "uv export" in args)
    for option in ("--frozen", "--no-dev", "--no-emit-project", "--prune torch", "--prune torchvision"):
        assert option in export, option
    assert "pip install --no-deps --require-hashes" in export and "-r requirements-onnx.txt" in export
    project = [i for i, (name, args) in enumerate(builder) if name == "RUN" and "pip install --no-deps ." in args]
    copies = [i for i, (name, args) in enumerate(builder) if name == "COPY" and "fbml/" in args]
    assert copies and project and copies[0] < project[0], "fbml is installed after its sources are copied"
    assert 'python -c "import torch"' in builder[project[0]][1] and "exit 1" in builder[project[0]][1]
    assert "uv sync" not in " ".join(runs), "uv sync would install torch back"


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv")
def test_the_onnx_requirements_have_the_service_and_no_torch(instructions, tmp_path):
    """The Containerfile's own ``uv export`` over this uv.lock: fully pinned and hashed, with ONNX Runtime
    and the service, without torch, its CUDA wheels or anything that would need them."""
    run = next(args for args in _args(_named(instructions, "builder-onnx"), "RUN") if "uv export" in args)
    command = shlex.split(run[run.index("uv export") : run.index("&&")])
    command[command.index("--output-file") + 1] = str(tmp_path / "requirements.txt")
    subprocess.run(["uv", *command[1:]], cwd=ROOT, check=True, capture_output=True, timeout=120)
    lines = (tmp_path / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pins = {line.split("==")[0] for line in lines if re.match(r"[a-z0-9]", line)}
    assert {"onnxruntime", "litestar", "uvicorn", "numpy", "pillow", "msgspec", "faiss-cpu", "prometheus-client"} <= pins
    assert not {pin for pin in pins if re.match(r"torch|nvidia-|triton|timm|efficientnet", pin)}, pins
    assert all("==" in line for line in lines if re.match(r"[a-z0-9]", line))
    assert sum("--hash=sha256:" in line for line in lines) >= len(pins)


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
    for piece in ("--isolation=chroot", "--format docker", "podman image mount", "chroot", "debootstrap",
                  'FBML_TARGET:-runtime', '--target "$TARGET"', "localhost/fbml:onnx", "export-onnx",
                  "import torch", "/predict/image", "FBML_SMOKE_BUNDLE"):  # fmt: skip
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
