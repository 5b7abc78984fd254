"""ONNX graphs of a bundle's networks: exported by ``fbml export-onnx``, equal to torch within 1e-4, loaded
by the ONNX runtime without importing torch, dropped when their network is trained again; served by
``fbml serve --runtime onnx`` with the answers of the torch runtime, never importing torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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
              "print(sorted(map(str, bundle.models)), 'torch' in sys.modules)")
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


# --- serving on ONNX Runtime ---------------------------------------------------------------------

SERVED_TEXTS = ("Oak dining table and four chairs", "mountain bike, 21 gears", "kids toy kitchen set", "leather sofa")


def app_clients(exported: Path) -> tuple[Any, Any]:
    """The bundle served on torch and on ONNX Runtime, as ``fbml serve`` loads it (one thread each)."""
    from fbml.serving.server import AppOptions, app_over, served_bundle

    return tuple(app_over(served_bundle(exported, runtime, 1), AppOptions(runtime=runtime)) for runtime in ("torch", "onnx"))


def photos_of(exported: Path, count: int) -> list[bytes]:
    return [path.read_bytes() for path in sorted((exported.parent / "photos").glob("*.jpg"))[:count]]


def test_the_onnx_runtime_answers_every_endpoint_as_torch_does(exported: Path) -> None:
    from litestar.testing import TestClient

    torch_app, onnx_app = app_clients(exported)
    with TestClient(torch_app) as on_torch, TestClient(onnx_app) as on_onnx:
        clients = (on_torch, on_onnx)
        for photo, text in zip(photos_of(exported, len(SERVED_TEXTS)), SERVED_TEXTS, strict=True):
            requests = [("/predict/image", {"files": {"image": ("p.jpg", photo)}}), ("/predict/text", {"json": {"text": text}}),
                        ("/predict/combined", {"files": {"image": ("p.jpg", photo)}, "data": {"text": text}})]  # fmt: skip
            for path, body in requests:
                expected, got = (client.post(path, **body).json() for client in clients)
                assert got["category"] == expected["category"], path
                for category, probability in expected["probabilities"].items():
                    assert abs(got["probabilities"][category] - probability) <= 1e-4, (path, category)
                assert got["model_version"] == expected["model_version"]
            answers = [client.post("/recommend", files={"image": ("p.jpg", photo)}, data={"text": text, "k": "5"}).json() for client in clients]
            assert [r["id"] for r in answers[1]["results"]] == [r["id"] for r in answers[0]["results"]]
            product = answers[0]["results"][0]["id"]
            by_id = [client.post("/recommend", json={"product_id": product, "k": 5}).json()["results"] for client in clients]
            assert [r["id"] for r in by_id[1]] == [r["id"] for r in by_id[0]]
        assert on_onnx.get("/metrics").text.count('runtime="onnx"') == 1


def test_serving_on_onnx_answers_every_endpoint_without_importing_torch(exported: Path) -> None:
    photo = photos_of(exported, 1)[0]
    script = f"""
import sys
import time
from pathlib import Path
import fbml.cli
from fbml.serving.server import AppOptions, app_over, served_bundle
from litestar.testing import TestClient
app = app_over(served_bundle(Path({str(exported)!r}), "onnx", 1), AppOptions(runtime="onnx"))
photo = {photo!r}
statuses = []
with TestClient(app) as client:
    for _ in range(1200):  # the warm-up: at most a minute
        if client.get("/health/ready").status_code == 200:
            break
        time.sleep(0.05)
    for path in ("/health", "/health/live", "/health/ready", "/metrics", "/schema/openapi.json", "/", "/nowhere"):
        statuses.append(client.get(path).status_code)
    statuses.append(client.post("/predict/text", json={{"text": "red bike"}}).status_code)
    statuses.append(client.post("/predict/image", files={{"image": ("p.jpg", photo)}}).status_code)
    statuses.append(client.post("/predict/combined", files={{"image": ("p.jpg", photo)}}, data={{"text": "red bike"}}).status_code)
    statuses.append(client.post("/recommend", files={{"image": ("p.jpg", photo)}}, data={{"text": "red bike"}}).status_code)
    statuses.append(client.post("/recommend", json={{"text": "red bike"}}).status_code)
    statuses.append(client.post("/predict/image", files={{"image": ("p.jpg", b"not a photo")}}).status_code)
print(statuses, "torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[200, 200, 200, 200, 200, 200, 404, 200, 200, 200, 200, 200, 422] False"


def test_serve_on_onnx_without_graphs_is_one_line_and_exit_2(exported: Path, tmp_path: Path, capsys) -> None:
    import shutil

    from fbml.serving.server import free_port

    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    for kind in NETWORKS:
        manifest["models"][kind]["onnx"] = None
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert main(["serve", str(copy), "--runtime", "onnx", "--port", str(free_port())]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and re.fullmatch(r"fbml: error: .*has no ONNX graph; run `fbml export-onnx .*` first\n", error)
