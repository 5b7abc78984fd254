"""Compiled bytecode for the whole-process figures: fbml's and the contracts' own modules compiled here, as installing
the wheel compiles them, and whether the environment's packages are compiled too.

A deployment runs compiled bytecode (the ``Containerfile`` installs with ``UV_COMPILE_BYTECODE=1``). Where
``PYTHONDONTWRITEBYTECODE`` is set (this machine, and presumably CI's) nothing else writes ``.pyc`` files: every
interpreter compiles fbml (about 0.1 s) and, unless ``uv sync --compile-bytecode`` ran, torch and polars (``import
torch`` about twice as slow) from source at each start, which is not what a service or a batch job starts with.
"""

from __future__ import annotations

import compileall
import importlib.util
from pathlib import Path


def compiled_here() -> str:
    """Compile fbml's and the contracts' modules; a line saying so and whether the environment's (torch's) are."""
    import contracts
    import fbml

    for package in (fbml, contracts):
        compileall.compile_dir(Path(str(package.__file__)).parent, quiet=1)
    spec = importlib.util.find_spec("torch")
    origin = None if spec is None else spec.origin
    compiled = origin is not None and Path(importlib.util.cache_from_source(origin)).is_file()
    state = "are compiled" if compiled else "are NOT compiled: run `uv sync --compile-bytecode` first"
    return f"bytecode: fbml and contracts compiled here; the environment's (torch's) {state}"
