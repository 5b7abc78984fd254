"""What serving a bundle imports: in a fresh interpreter, loading a bundle and running every model, predictor
and the search once imports none of the training stack (timm, scikit-learn, pandera, pandas, scipy's
optimiser); on the ONNX runtime, not torch either."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fbml.bundle.store import save_bundle
from fbml.workflows.export import export_onnx

from test_api import indexed, models_bundle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notices about its ONNX exporter

TRAINING_ONLY = ("timm", "sklearn", "pandera", "pandas", "scipy.optimize")
WATCHED = (*TRAINING_ONLY, "torch", "scipy")
SERVE_ONCE = """
import json, sys
from pathlib import Path

import numpy as np

from fbml.bundle.store import load_bundle
from fbml.serving.inference import Batch, listing_queries, model_outputs, predictor_probabilities

bundle = load_bundle(Path(sys.argv[1]), runtime=sys.argv[2])
size = bundle.image.size
images = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
texts = ["red kettle, small", "Café  crème\\tnovel 2"]
batch = Batch(images, texts)
ran = sorted(kind for kind in bundle.models if model_outputs(bundle, kind, batch).probabilities.shape[0] == 2)
roles = sorted(role for role in bundle.predictors
               if predictor_probabilities(bundle, role, Batch(images if role != "text" else None,
                                                              texts if role != "image" else None)).shape[0] == 2)
queries = listing_queries(bundle, [images[0], None], [None, texts[1]])
found = len(bundle.index.search(queries, 3)[0])
watched = json.loads(sys.argv[3])
loaded = sorted(name for name in watched if name in sys.modules)
print(json.dumps({"models": ran, "predictors": roles, "searched": found, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The API tests' bundle (four models, three predictors, an index; 32 px photos), saved and exported to ONNX."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("imports") / "bundle"
        save_bundle(indexed(models_bundle()), path)
        export_onnx(path)
        yield path
    finally:
        torch.set_num_threads(threads)


def served_once(bundle: Path, runtime: str) -> dict[str, object]:
    """What a fresh interpreter ran and which of ``WATCHED`` it had imported by then."""
    command = [sys.executable, "-c", SERVE_ONCE, str(bundle), runtime, json.dumps(WATCHED)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    assert answer["models"] == ["combined-nn", "image-cnn", "text-cnn", "text-linear"]
    assert answer["predictors"] == ["combined", "image", "text"] and answer["searched"] == 2
    return answer


def test_the_torch_runtime_imports_none_of_the_training_stack(exported: Path) -> None:
    loaded = served_once(exported, "torch")["loaded"]
    assert isinstance(loaded, list) and "torch" in loaded  # the networks ran on torch
    assert not set(loaded) & {*TRAINING_ONLY, "scipy"}, loaded


def test_the_onnx_runtime_imports_neither_the_training_stack_nor_torch(exported: Path) -> None:
    assert served_once(exported, "onnx")["loaded"] == []
