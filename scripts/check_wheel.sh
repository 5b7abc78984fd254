#!/usr/bin/env bash
# Build fbml's wheel, install it with its testing extra into a fresh venv, and use it from a folder
# outside the checkout: (a) the README's property test (fbml.testing + fbml.clean_products) under
# pytest, (b) `fbml quickstart` (it trains small models: minutes).
#
# Versions are pinned to uv.lock's (as constraints), so uv's cache serves them; what it lacks comes
# from the package registry. Every step runs in its own process group under a time limit; the group
# is killed when the step ends, times out or the script is stopped, and the temporary folder
# (FBML_CHECK_WHEEL_KEEP=1 keeps it) is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/fbml-check-wheel.XXXXXX")
step_pid=

stop_step() {
    if [ -n "$step_pid" ]; then
        kill -TERM "$step_pid" 2>/dev/null || true  # timeout passes it on to the step's process group
        wait "$step_pid" 2>/dev/null || true
        kill -KILL -- "-$step_pid" 2>/dev/null || true
        step_pid=
    fi
}

cleanup() {
    stop_step
    if [ "${FBML_CHECK_WHEEL_KEEP:-0}" = 1 ]; then
        echo "check_wheel: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bounded SECONDS COMMAND...: COMMAND in a process group of its own (timeout's), all of it killed after
# SECONDS; whatever it leaves running in its group is killed when it ends.
bounded() {
    local seconds=$1 status=0
    shift
    timeout --kill-after=30 "$seconds" "$@" &
    step_pid=$!
    wait "$step_pid" || status=$?
    kill -KILL -- "-$step_pid" 2>/dev/null || true
    step_pid=
    if [ "$status" -eq 124 ]; then
        echo "check_wheel: timed out after ${seconds} s: $*" >&2
    fi
    return "$status"
}

say() { echo "== check_wheel (${SECONDS} s): $*"; }

say "build the wheel"
bounded 600 uv build --quiet --wheel --out-dir "$work/dist"
wheels=("$work"/dist/fbml-*.whl)
wheel=${wheels[0]}
say "built $(basename "$wheel")"

say "a fresh venv with the wheel, its testing extra and pytest"
python=$(uv python find)
bounded 300 uv venv --quiet --python "$python" "$work/venv"
bounded 300 uv export --quiet --frozen --no-hashes --all-extras --all-groups --no-emit-project --output-file "$work/constraints.txt"
bounded 1200 uv pip install --quiet --python "$work/venv/bin/python" --constraint "$work/constraints.txt" "$wheel[testing]" pytest

mkdir "$work/outside"
cd "$work/outside"
venv_python=$work/venv/bin/python
export PYTHONPATH= PYTHONNOUSERSITE=1

say "the installed package: its files, found at run time, and a cheap import"
bounded 300 "$venv_python" - "$work/venv" <<'EOF'
import sys
from importlib.resources import files
from pathlib import Path

import contracts
import fbml

venv = Path(sys.argv[1]).resolve()
for module in (fbml, contracts):
    where = Path(module.__file__).resolve()
    assert where.is_relative_to(venv), f"{module.__name__} imported from {where}, not from the venv"
fbml.clean_products  # noqa: B018
assert not {"hypothesis", "fbml.testing", "torch"} & set(sys.modules), "import fbml imported too much"
for name in ("index.html", "page.css", "page.js", "docs.html", "docs.js"):
    assert files("fbml.serving").joinpath("static", name).is_file(), f"fbml/serving/static/{name} is not installed"
from openapi_ui_bundles import swagger_ui  # noqa: E402  (/docs serves its files: installed as a dependency)

for name in ("swagger-ui.css", "swagger-ui-bundle.js"):
    assert (swagger_ui.static_path / name).is_file(), f"Swagger UI's {name} is not installed"
assert files("fbml").joinpath("py.typed").is_file(), "fbml/py.typed is not installed"
from fbml.testing import photos, raw_images, raw_products  # noqa: E402,F401
print(f"fbml {fbml.__version__} from {Path(fbml.__file__).parent}")
EOF

say "(a) the README's property test, under pytest"
"$venv_python" - "$repo/README.md" >test_fbml_properties.py <<'EOF'
import re
import sys

section = open(sys.argv[1], encoding="utf-8").read().split("### Property tests with fbml.testing", 1)[1]
print(re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1), end="")
EOF
bounded 900 "$venv_python" -m pytest -q -p no:cacheprovider --rootdir "$work/outside" test_fbml_properties.py

say "(b) fbml quickstart"
bounded 1800 "$work/venv/bin/fbml" quickstart --out "$work/quickstart"
for made in bundle/bundle.json report/index.html clean/products.parquet; do
    [ -f "$work/quickstart/$made" ] || { echo "check_wheel: quickstart wrote no $made" >&2; exit 1; }
done

say "passed"
