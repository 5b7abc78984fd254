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
def exported(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    """A small bundle of the three trainings (32 px photos), then ``fbml export-onnx``."""
    from fbml.sample.marketplace import write_sample
    from fbml.vision.cleaning import clean_images

    root = tmp_path_factory.mktemp("onnx")
    sample = write_sample(root / "raw", products=120, seed=2)
    clean_images(sample.image_dir, root / "photos", size=32, workers=1, progress=False)
    data = ["--products", str(sample.products_csv), "--images", str(sample.images_csv), "--image-dir", str(root / "photos")]
    for kind in ("text", "image", "combined"):
        assert main(["train", "--model", kind, "--epochs", "1", "--image-size", "32", "--device", "cpu", *data,
                     "--out", str(root / "bundle")]) == 0
    assert main(["export-onnx", str(root / "bundle")]) == 0
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


def test_a_torch_load_leaves_the_graphs_unread_and_a_save_keeps_or_copies_them_checked(exported: Path, tmp_path: Path) -> None:
    """The torch runtime runs no graph: its load reads none (a tampered one loads), only checks each is a plain file of
    the bundle. Saved in place, a graph is referenced as it is; saved elsewhere, it is copied, checked first."""
    import shutil

    from fbml.bundle.bundle import StoredGraph
    from fbml.bundle.store import save_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(exported, copy)
    graphs = {kind: entry["onnx"]["graph"] for kind, entry in json.loads((copy / MANIFEST).read_text())["models"].items()
              if kind in NETWORKS}  # fmt: skip
    loaded = load_bundle(copy)
    assert all(isinstance(loaded.models[kind].onnx, StoredGraph) for kind in NETWORKS)
    save_bundle(loaded, tmp_path / "elsewhere")
    moved = load_bundle(tmp_path / "elsewhere", runtime="onnx")
    assert {kind: moved.models[kind].onnx.content for kind in NETWORKS} == {  # type: ignore[union-attr]
        kind: (copy / ref["file"]).read_bytes() for kind, ref in graphs.items()}

    graph = copy / graphs["text-cnn"]["file"]
    content = bytearray(graph.read_bytes())
    content[len(content) // 2] ^= 0xFF
    graph.write_bytes(bytes(content))
    tampered = load_bundle(copy)
    save_bundle(tampered, copy)  # in place: the file is the bundle's, as it was
    assert json.loads((copy / MANIFEST).read_text())["models"]["text-cnn"]["onnx"]["graph"] == graphs["text-cnn"]
    with pytest.raises(FbmlError, match=f"bundle file {graphs['text-cnn']['file']} does not match its checksum"):
        save_bundle(tampered, tmp_path / "other")
    graph.unlink()
    with pytest.raises(FbmlError, match=f"bundle file {graphs['text-cnn']['file']} is missing"):
        load_bundle(copy)


def with_graph(exported: Path, copy: Path, kind: str, change: Any) -> None:
    """``copy``: the exported bundle with ``kind``'s graph replaced by ``change(onnx model)``, named and checksummed
    as a bundle's own file (so only its content is hostile)."""
    import hashlib
    import shutil

    import onnx

    shutil.copytree(exported, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    ref = manifest["models"][kind]["onnx"]["graph"]
    model = onnx.load_model_from_string((copy / ref["file"]).read_bytes())
    change(model)
    content = model.SerializeToString()
    digest = hashlib.sha256(content).hexdigest()
    (copy / ref["file"]).unlink()
    ref.update(file=f"{kind}-graph-{digest[:16]}.onnx", sha256=digest)
    (copy / ref["file"]).write_bytes(content)
    (copy / MANIFEST).write_text(json.dumps(manifest))


def external(tensor: Any, location: str) -> None:
    """``tensor``'s data moved to ``location`` outside the graph (as ``onnx``'s external data does)."""
    import onnx

    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(tensor.dims))))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


@pytest.mark.parametrize("location", ["secret.bin", "../secret.bin", "/etc/hostname"])
def test_a_graph_that_reads_tensor_data_from_outside_it_is_refused(exported: Path, tmp_path: Path, location: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime reads external data relative to the server's working folder: a bundle would choose a file the
    operator never gave it. Such a graph is refused before any session reads it, wherever the file is."""
    copy = tmp_path / "bundle"
    with_graph(exported, copy, "text-cnn", lambda model: external(model.graph.initializer[0], location))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 10**6)
    with pytest.raises(FbmlError, match=r"the text-cnn ONNX graph keeps tensor data in other files"):
        load_bundle(copy, runtime="onnx")


def test_a_graph_of_nan_weights_is_refused(exported: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    def poisoned(model: onnx.ModelProto) -> None:
        for tensor in model.graph.initializer:
            if tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) == 2:
                tensor.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(tensor).shape, np.nan, np.float32), tensor.name))

    copy = tmp_path / "bundle"
    with_graph(exported, copy, "image-cnn", poisoned)
    with pytest.raises(FbmlError, match=r"the image-cnn ONNX graph answers a blank input with values that are not finite"):
        load_bundle(copy, runtime="onnx")


def test_names_external_data_finds_it_wherever_onnx_does(exported: Path) -> None:
    """The wire-format reading agrees with ``onnx``'s own ``uses_external_data`` on a graph's initializers, a node's
    tensor attribute, a subgraph's initializer and a function's node."""
    import onnx
    from fbml.modeling.onnx_runtime import names_external_data
    from onnx import helper
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    graph_file = json.loads((exported / MANIFEST).read_text())["models"]["text-cnn"]["onnx"]["graph"]["file"]
    base = onnx.load_model_from_string((exported / graph_file).read_bytes())
    constant = helper.make_tensor("c", onnx.TensorProto.FLOAT, [2], [1.0, 2.0])
    branch = helper.make_graph([helper.make_node("Constant", [], ["y"], value=constant)], "branch", [],
                               [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
                               [helper.make_tensor("i", onnx.TensorProto.FLOAT, [1], [3.0])])
    holder = helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch)
    function = helper.make_function("fbml", "f", [], ["z"], [helper.make_node("Constant", [], ["z"], value=constant)],
                                    [helper.make_opsetid("", 17)])

    def variants() -> list[onnx.ModelProto]:
        found = []
        for where in ("initializer", "attribute", "subgraph", "function", "none"):
            model = onnx.ModelProto()
            model.CopyFrom(base)
            model.graph.node.append(holder)
            model.functions.append(function)
            if where == "initializer":
                external(model.graph.initializer[1], "w.bin")
            elif where == "attribute":
                external(model.graph.node[-1].attribute[0].g.node[0].attribute[0].t, "w.bin")
            elif where == "subgraph":
                external(model.graph.node[-1].attribute[1].g.initializer[0], "w.bin")
            elif where == "function":
                external(model.functions[0].node[0].attribute[0].t, "w.bin")
            found.append(model)
        return found

    for model in variants():
        expected = any(uses_external_data(tensor) for tensor in _get_all_tensors(model)) or \
            any(uses_external_data(node.attribute[0].t) for node in model.functions[0].node)
        assert names_external_data(model.SerializeToString()) == expected
    assert [names_external_data(model.SerializeToString()) for model in variants()] == [True, True, True, True, False]
    for broken in (b"\x0a\xff\xff\xff\xff\x0f", b"\x0b", bytes(range(256))):
        with pytest.raises(FbmlError, match="not a protobuf message"):
            names_external_data(broken)


def test_training_a_network_again_drops_its_stale_graph(exported: Path, tmp_path: Path) -> None:
    import shutil

    from fbml.bundle.bundle import BundleModel
    from fbml.bundle.store import save_bundle

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
