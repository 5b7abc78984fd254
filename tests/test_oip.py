"""The Open Inference Protocol (``fbml.serving.oip``) as a client no one here wrote speaks it: tritonclient's
HTTP client against the app under a real uvicorn on 127.0.0.1, answering as ``/predict/*`` does."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fbml.bundle.bundle import Bundle
from fbml.serving.server import serving

from test_app import CATEGORIES, MODEL_VERSION, app_over, indexed, models_bundle, photo_bytes

TEXTS = ["red kettle for blue toaster", "small novel and poems", "Café doll — ﬁne bike", "new lamp"]
PHOTOS = [photo_bytes(seed) for seed in range(4)]
WAIT = 60.0


@pytest.fixture(scope="module")
def bundle(one_torch_thread: None) -> Bundle:
    return indexed(models_bundle())


@pytest.fixture(scope="module")
def base_url(bundle: Bundle) -> Iterator[str]:
    with serving(app_over(bundle)) as url:
        deadline = time.monotonic() + WAIT
        while httpx.get(f"{url}/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the models did not warm up"
            time.sleep(0.05)
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(base_url.removeprefix("http://"), network_timeout=WAIT)
    yield client
    client.close()


def bytes_input(name: str, values: list[bytes], *, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def rest_predictions(base_url: str, role: str, texts: list[str] | None, photos: list[bytes] | None) -> list[dict]:
    """What ``/predict/{role}`` answers for each listing."""
    answers = []
    for row in range(len(texts or photos or [])):
        if role == "text":
            response = httpx.post(f"{base_url}/predict/text", json={"text": texts[row]}, timeout=WAIT)  # type: ignore[index]
        else:
            files = {"image": ("p.jpg", photos[row], "image/jpeg")}  # type: ignore[index]
            data = {"text": texts[row]} if texts is not None and role == "combined" else None
            response = httpx.post(f"{base_url}/predict/{role}", files=files, data=data, timeout=WAIT)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


def assert_same_answers(result: triton.InferResult, expected: list[dict]) -> None:
    categories = [value.decode() if isinstance(value, bytes) else value for value in result.as_numpy("category")]
    assert categories == [answer["category"] for answer in expected]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(expected), len(CATEGORIES)) and probabilities.dtype == np.float32
    want = np.array([[answer["probabilities"][name] for name in CATEGORIES] for answer in expected], dtype=np.float32)
    np.testing.assert_allclose(probabilities, want, rtol=0, atol=1e-5)  # a batch's own rounding, as /predict/* batches


@pytest.mark.parametrize("binary_output", [True, False])
def test_text_through_tritonclient_is_answered_as_predict_text(client: triton.InferenceServerClient, base_url: str,
                                                                 binary_output: bool) -> None:  # fmt: skip
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_output) for name in ("category", "probabilities")]
    result = client.infer("text", [bytes_input("text", [text.encode() for text in TEXTS])], outputs=outputs)
    assert result.get_response()["model_version"] == MODEL_VERSION
    assert_same_answers(result, rest_predictions(base_url, "text", TEXTS, None))


def test_photos_as_binary_data_are_answered_as_predict_image(client: triton.InferenceServerClient, base_url: str) -> None:
    result = client.infer("image", [bytes_input("image", PHOTOS)])
    assert_same_answers(result, rest_predictions(base_url, "image", None, PHOTOS))


def test_photos_and_texts_are_answered_as_predict_combined(client: triton.InferenceServerClient, base_url: str) -> None:
    inputs = [bytes_input("image", PHOTOS), bytes_input("text", [text.encode() for text in TEXTS], binary=False)]
    result = client.infer("combined", inputs)
    assert_same_answers(result, rest_predictions(base_url, "combined", TEXTS, PHOTOS))


def test_a_photo_in_json_goes_as_base64(base_url: str) -> None:
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(PHOTOS[0]).decode()]}]}
    response = httpx.post(f"{base_url}/v2/models/image/infer", json=body, timeout=WAIT)
    assert response.status_code == 200, response.text
    expected = rest_predictions(base_url, "image", None, PHOTOS[:1])[0]
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert outputs["category"]["data"] == [expected["category"]]
    assert outputs["probabilities"]["shape"] == [1, len(CATEGORIES)]


def test_server_and_model_metadata_health_and_readiness(client: triton.InferenceServerClient, bundle: Bundle) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    for role, inputs in {"text": ["text"], "image": ["image"], "combined": ["text", "image"]}.items():
        assert client.is_model_ready(role)
        metadata = client.get_model_metadata(role)
        assert [tensor["name"] for tensor in metadata["inputs"]] == inputs
        assert all(tensor["datatype"] == "BYTES" for tensor in metadata["inputs"])
        assert {tensor["name"]: (tensor["datatype"], tensor["shape"]) for tensor in metadata["outputs"]} == {
            "category": ("BYTES", [-1]), "probabilities": ("FP32", [-1, len(CATEGORIES)])}  # fmt: skip
        assert json.loads(metadata["parameters"]["classes"]) == list(bundle.codec.classes)
        assert metadata["versions"] == [MODEL_VERSION]


def oip_error(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers or {"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=WAIT)
    return raised.value.code, json.loads(raised.value.read())


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v2/models/price", None, 404, "no model 'price'"),
        ("/v2/models/price/infer", b"{}", 404, "no model 'price'"),
        ("/v2/models/text/infer", b"{not json", 400, "not an inference request"),
        ("/v2/models/text/infer", json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}).encode(),
         400, "takes the inputs text"),
        ("/v2/models/text/infer", json.dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}).encode(),
         400, "1 elements for the shape [2]"),
        ("/v2/models/text/infer", json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(),
         400, "must be BYTES"),
        ("/v2/models/text/infer", json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["!!"]}]}).encode(),
         422, "text[0] is empty"),
    ],
)
def test_refusals_are_in_the_protocols_shape(base_url: str, path: str, body: bytes | None, status: int, words: str) -> None:
    code, answer = oip_error(base_url + path, body)
    assert code == status
    assert set(answer) == {"error"} and words in answer["error"]


def test_a_photo_that_is_not_one_is_refused_naming_its_row(client: triton.InferenceServerClient) -> None:
    with pytest.raises(triton.InferenceServerException) as raised:
        client.infer("image", [bytes_input("image", [PHOTOS[0], b"not a photo"])])
    assert raised.value.status() == "422" and "image[1]" in raised.value.message()


def test_binary_data_that_belongs_to_no_input_is_refused(base_url: str) -> None:
    head = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["red kettle"]}]}).encode()
    code, answer = oip_error(f"{base_url}/v2/models/text/infer", head + b"\x00\x00", {"Inference-Header-Content-Length": str(len(head))})
    assert code == 400 and "belong to no input" in answer["error"]
