"""What serving a bundle imports: in a fresh interpreter, loading a bundle and running every model, predictor
and the search once imports none of the training stack (timm, scikit-learn, pandera, pandas, scipy's
optimiser); on the ONNX runtime, not torch either."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fbml.bundle.store import save_bundle
from fbml.workflows.export import export_onnx

from test_app import indexed, models_bundle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notices about its ONNX exporter

TRAINING_ONLY = ("timm", "sklearn", "pandera", "pandas", "scipy.optimize")
WATCHED = (*TRAINING_ONLY, "torch", "scipy")
SERVE_ONCE = """
import json, sys
from pathlib import Path

import numpy as np

from fbml.bundle.store import load_bundle

bundle = load_bundle(Path(sys.argv[1]), runtime=sys.argv[2])
images = list(np.random.default_rng(0).integers(0, 256, size=(2, 40, 50, 3), dtype=np.uint8))
texts = ["red kettle, small", "Café  crème\\tnovel 2"]
found = bundle.probabilities([*bundle.predictors, *bundle.models], texts=texts, images=images)
ran = sorted(str(kind) for kind in bundle.models if found[kind].shape[0] == 2)
roles = sorted(str(role) for role in bundle.predictors if found[role].shape[0] == 2)
found = len(bundle.similar(image=images[0], k=3)) + len(bundle.similar(text=texts[1], k=3))
watched = json.loads(sys.argv[3])
loaded = sorted(name for name in watched if name in sys.modules)
print(json.dumps({"models": ran, "predictors": roles, "searched": found, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    """The API tests' bundle (four models, three predictors, an index; 32 px photos), saved and exported to ONNX."""
    path = tmp_path_factory.mktemp("imports") / "bundle"
    save_bundle(indexed(models_bundle()), path)
    export_onnx(path)
    return path


def served_once(bundle: Path, runtime: str) -> dict[str, object]:
    """What a fresh interpreter ran and which of ``WATCHED`` it had imported by then."""
    command = [sys.executable, "-c", SERVE_ONCE, str(bundle), runtime, json.dumps(WATCHED)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    assert answer["models"] == ["combined-nn", "image-cnn", "text-cnn", "text-linear"]
    assert answer["predictors"] == ["combined", "image", "text"] and answer["searched"] == 6
    return answer


def test_the_torch_runtime_imports_none_of_the_training_stack(exported: Path) -> None:
    loaded = served_once(exported, "torch")["loaded"]
    assert isinstance(loaded, list) and "torch" in loaded  # the networks ran on torch
    assert not set(loaded) & {*TRAINING_ONLY, "scipy"}, loaded


def test_the_onnx_runtime_imports_neither_the_training_stack_nor_torch(exported: Path) -> None:
    assert served_once(exported, "onnx")["loaded"] == []
