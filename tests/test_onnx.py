"""ONNX graphs of a bundle's networks: exported by ``fbml export-onnx``, equal to torch within 1e-4, loaded
by the ONNX runtime without importing torch, dropped when their network is trained again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fbml.bundle.store import MANIFEST, load_bundle
from fbml.cli import main
from fbml.errors import FbmlError
from fbml.modeling.onnx_export import example_inputs
from fbml.modeling.onnx_runtime import INPUTS

NETWORKS = ("image-cnn", "text-cnn", "combined-nn")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bundle of the three trainings (32 px photos), then ``fbml export-onnx``."""
    from fbml.sample.marketplace import write_sample
    from fbml.vision.cleaning import clean_images

    root = tmp_path_factory.mktemp("onnx")
    sample = write_sample(root / "raw", products=120, seed=2)
    clean_images(sample.image_dir, root / "photos", size=32, workers=1, progress=False)
    data = ["--products", str(sample.products_csv), "--images", str(sample.images_csv), "--image-dir", str(root / "photos")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind in ("text", "image", "combined"):
            assert main(["train", "--model", kind, "--epochs", "1", "--image-size", "32", "--device", "cpu", *data,
                         "--out", str(root / "bundle")]) == 0
        assert main(["export-onnx", str(root / "bundle")]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "bundle"


def test_every_network_gets_a_checksummed_graph(exported: Path) -> None:
    manifest = json.loads((exported / MANIFEST).read_text())
    for kind in NETWORKS:
        entry = manifest["models"][kind]["onnx"]
        assert entry["opset"] == 17 and entry["inputs"] == list(INPUTS[kind]) and entry["outputs"] == ["logits", "embedding"]
        assert entry["graph"]["file"].startswith(f"{kind}-graph-") and entry["graph"]["file"].endswith(".onnx")
        assert (exported / entry["graph"]["file"]).is_file()
    assert "onnx" not in manifest["models"]["text-linear"]


@pytest.mark.parametrize("batch", [1, 5])
def test_graphs_answer_as_torch_does_for_any_batch(exported: Path, batch: int) -> None:
    torch_bundle, onnx_bundle = load_bundle(exported), load_bundle(exported, runtime="onnx")
    assert torch_bundle.image is not None and torch_bundle.text is not None
    for kind in NETWORKS:
        inputs = example_inputs(kind, image_size=torch_bundle.image.size, text_length=torch_bundle.text.length,
                                vocabulary_size=len(torch_bundle.text.vocabulary), batch=batch, seed=7)
        with torch.inference_mode():
            expected = torch_bundle.model(kind)(*inputs)
        logits, embedding = onnx_bundle.model(kind).run(dict(zip(INPUTS[kind], (t.numpy() for t in inputs), strict=True)))
        assert logits.shape == (batch, torch_bundle.codec.num_classes)
        np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(embedding, expected.embedding.numpy(), atol=1e-4, rtol=0)
        assert onnx_bundle.embedding_dim(kind) == torch_bundle.embedding_dim(kind)


def test_the_onnx_runtime_never_imports_torch(exported: Path) -> None:
    script = ("import sys; from pathlib import Path; from fbml.bundle.store import load_bundle; "
              f"bundle = load_bundle(Path({str(exported)!r}), runtime='onnx'); "
              "print(sorted(bundle.models), 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['combined-nn', 'image-cnn', 'text-cnn', 'text-linear'] False"


def test_a_bundle_without_graphs_is_refused_for_onnx(exported: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    del manifest["models"]["image-cnn"]["onnx"]
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FbmlError, match=r"the image-cnn model has no ONNX graph; run `fbml export-onnx .*` first"):
        load_bundle(copy, runtime="onnx")
    load_bundle(copy)  # the torch runtime does not need the graphs


def test_a_tampered_graph_is_refused(exported: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    graph = copy / json.loads((copy / MANIFEST).read_text())["models"]["text-cnn"]["onnx"]["graph"]["file"]
    content = bytearray(graph.read_bytes())
    content[len(content) // 2] ^= 0xFF
    graph.unlink()
    graph.write_bytes(bytes(content))
    with pytest.raises(FbmlError, match="does not match its checksum"):
        load_bundle(copy, runtime="onnx")


def test_training_a_network_again_drops_its_stale_graph(exported: Path, tmp_path: Path) -> None:
    import shutil

    from fbml.bundle.store import BundleModel, save_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    bundle = load_bundle(copy)
    retrained = bundle.models["text-cnn"]
    bundle = bundle.with_model(BundleModel("text-cnn", retrained.module, retrained.options, retrained.report))
    save_bundle(bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    assert manifest["models"]["text-cnn"]["onnx"] is None and manifest["models"]["image-cnn"]["onnx"] is not None


def test_an_unknown_runtime_is_refused(exported: Path) -> None:
    with pytest.raises(FbmlError, match="unknown runtime 'tensorrt'"):
        load_bundle(exported, runtime="tensorrt")
