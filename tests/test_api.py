"""The HTTP API over a tiny bundle of freshly initialised models: every endpoint, every refusal,
answers equal to the models' own, fuzzed bodies and schemathesis against the app's OpenAPI schema."""

from __future__ import annotations

import asyncio
import io
import tempfile
import threading
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import numpy as np
import polars as pl
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from httpx import Response
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image
from torch import nn

from fbml import cleaning
from fbml.api import MicroBatcher, create_app, token_ids
from fbml.bundle import Bundle, BundleModel, ImageSettings, TextSettings, build_model
from fbml.datasets import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from fbml.encoding import LabelCodec
from fbml.images import clean_image, open_image
from fbml.models import ModelOutput
from fbml.search import catalogue_index
from fbml.text import Vocabulary
from fbml.word2vec import WordVectors

SIZE = 32
CATEGORIES = ("Appliances", "Books", "Toys")
WORDS = ("red", "blue", "kettle", "novel", "doll", "cafe", "bike", "toaster")
MAX_BODY = 3 * 2**20
MAX_TEXT = 200
MAX_PIXELS = 1_000_000
URLENCODED = "application/x-www-form-urlencoded"
POST_PATHS = ("/predict/image", "/predict/text", "/predict/combined", "/recommend")
ERROR_STATUSES = {400, 404, 413, 415, 422}


def tiny_bundle() -> Bundle:
    """Image, text and combined models over three classes, freshly initialised (word embeddings random)."""
    torch.manual_seed(0)
    vectors = np.random.default_rng(0).normal(size=(len(WORDS), 6)).astype(np.float32)
    text = TextSettings(Vocabulary(("<pad>", "<unk>", *WORDS)), WordVectors(WORDS, vectors), 10)
    image_options = {"trainable_stages": 1, "embedding_dim": 8}
    text_options = {"embedding_dim": 8, "channels": 4, "kernel_sizes": [2, 3]}
    options = {"image": image_options, "text": text_options, "combined": {"image": image_options, "text": text_options}}
    models = {}
    for kind, kind_options in options.items():
        module = build_model(kind, kind_options, len(CATEGORIES), text)
        for embedding in (part for part in module.modules() if isinstance(part, nn.Embedding)):
            nn.init.normal_(embedding.weight)
        models[kind] = BundleModel(kind, module.eval(), kind_options)
    return Bundle(LabelCodec(CATEGORIES), ImageSettings(SIZE, IMAGENET_MEAN, IMAGENET_STD), text, models)


def photo_bytes(seed: int, size: tuple[int, int] = (48, 40), format: str = "JPEG") -> bytes:
    """A random photo, encoded."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format)
    return buffer.getvalue()


def catalogue(photo_dir: Path) -> pl.DataFrame:
    """Twelve products, one or two photos each (product p11's only photo is not an image): a manifest."""
    rows = []
    for product in range(12):
        for photo in range(1 + product % 2):
            image_id = f"img{product}-{photo}"
            data = b"not an image" if product == 11 else photo_bytes(100 * product + photo)
            (photo_dir / f"{image_id}.jpg").write_bytes(data)
            rows.append(
                {
                    "id": f"p{product}", "image_id": image_id, "product_name": f"{WORDS[product % 8]} thing",
                    "product_description": f"a {WORDS[(product + 3) % 8]}", "category": CATEGORIES[product % 3],
                    "price": float(product),
                }
            )
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, pl.DataFrame, Path]:
    """The tiny bundle with its search index, the manifest it indexes and the photo folder."""
    photo_dir = tmp_path_factory.mktemp("photos")
    manifest = catalogue(photo_dir)
    bundle = tiny_bundle()
    index = catalogue_index(bundle, manifest, photo_dir, work_dir=tmp_path_factory.mktemp("work"), progress=False)
    return attrs.evolve(bundle, index=index), manifest, photo_dir


@pytest.fixture(scope="module")
def bundle(built: tuple[Bundle, pl.DataFrame, Path]) -> Bundle:
    return built[0]


def app_over(bundle: Bundle) -> Litestar:
    return create_app(bundle, max_body_bytes=MAX_BODY, max_text_chars=MAX_TEXT, max_image_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def client(bundle: Bundle) -> Iterator[TestClient]:
    with TestClient(app_over(bundle)) as client:
        yield client


def ascii_text(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def direct_image(image: bytes) -> torch.Tensor:
    """A photo prepared by hand as training photos are (``fbml.photos``: decoded straight to about
    ``SIZE``, letterboxed), then the deterministic eval transform."""
    with open_image(io.BytesIO(image), size=SIZE, max_pixels=10**8) as decoded:
        square = clean_image(decoded, SIZE)
    pixels = torch.from_numpy(np.asarray(square).transpose(2, 0, 1).copy())
    return eval_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD)(pixels)[None]


def direct_tokens(bundle: Bundle, text: str) -> torch.Tensor:
    return torch.from_numpy(bundle.text.vocabulary.encode_texts([ascii_text(text)], bundle.text.length))


def direct(bundle: Bundle, kind: str, image: bytes | None = None, text: str | None = None) -> ModelOutput:
    """The model's own output for one example."""
    inputs = [*([direct_image(image)] if image is not None else []), *([direct_tokens(bundle, text)] if text is not None else [])]
    with torch.inference_mode():
        return bundle.models[kind].module(*inputs)


def direct_probabilities(bundle: Bundle, kind: str, image: bytes | None = None, text: str | None = None) -> np.ndarray:
    return torch.softmax(direct(bundle, kind, image, text).logits, dim=1)[0].numpy()


def multipart(**fields: bytes | str) -> dict[str, tuple[str | None, bytes | str]]:
    """``files=`` for the test client: ``image`` as a file upload, every other field as a plain field."""
    return {name: ("photo.jpg" if name == "image" else None, value) for name, value in fields.items()}


def assert_error(response: Response, status: int, field: str | None = None, detail: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status
    assert detail in body["detail"]
    if field is not None:
        assert body["field"] == field


# --- every endpoint ------------------------------------------------------------------------------


def test_health_reports_models_classes_format_and_index(client: TestClient, bundle: Bundle) -> None:
    assert client.get("/health").json() == {
        "ready": True, "models": ["combined", "image", "text"], "classes": 3, "bundle_format": "fbml.bundle/1",
        "indexed_products": len(bundle.index),
    }


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"json": {"text": "red kettle for the kitchen"}},
        {"data": {"text": "red kettle for the kitchen"}},
        {"files": multipart(text="red kettle for the kitchen")},
    ],
    ids=["json", "form", "multipart"],
)
def test_predict_text_equals_the_model(client: TestClient, bundle: Bundle, request_kwargs: dict) -> None:
    response = client.post("/predict/text", **request_kwargs)
    assert response.status_code == 200, response.text
    expected = direct_probabilities(bundle, "text", text="red kettle for the kitchen")
    assert_prediction(response.json(), expected)


def assert_prediction(answer: dict, expected: np.ndarray) -> None:
    got = np.array([answer["probabilities"][name] for name in CATEGORIES])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert answer["category"] == CATEGORIES[int(np.argmax(expected))]
    assert [entry["category"] for entry in answer["top"]] == [CATEGORIES[i] for i in np.argsort(-expected, kind="stable")]
    assert answer["top"][0]["probability"] == max(answer["probabilities"].values())


def test_predict_image_equals_the_model(client: TestClient, bundle: Bundle) -> None:
    photo = photo_bytes(7, size=(80, 50))
    response = client.post("/predict/image", files=multipart(image=photo))
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), direct_probabilities(bundle, "image", image=photo))


def test_predict_combined_equals_the_model(client: TestClient, bundle: Bundle) -> None:
    photo = photo_bytes(8, format="PNG")
    response = client.post("/predict/combined", files=multipart(image=photo, text="blue doll"))
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), direct_probabilities(bundle, "combined", image=photo, text="blue doll"))


def test_text_is_normalised_to_ascii_as_training_text_was(client: TestClient) -> None:
    plain = client.post("/predict/text", json={"text": "cafe bike"}).json()
    accented = client.post("/predict/text", json={"text": "Café\u00a0\u00a0BIKE\r\n"}).json()
    assert accented == plain


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.text(alphabet=st.characters(codec="ascii"), max_size=40))
def test_token_ids_equal_the_training_normalisation(bundle: Bundle, text: str) -> None:
    normalised = pl.DataFrame({"text": [text]}).select(cleaning.ascii_text(pl.col("text"))).to_series()
    expected = bundle.text.vocabulary.encode_texts(normalised, bundle.text.length)
    np.testing.assert_array_equal(token_ids([text, "red bike"], bundle.text).numpy()[:1], expected)


def test_concurrent_requests_are_batched_without_changing_answers(client: TestClient, bundle: Bundle) -> None:
    photos = [photo_bytes(seed) for seed in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda photo: client.post("/predict/image", files=multipart(image=photo)).json(), photos))
    for photo, answer in zip(photos, answers, strict=True):
        assert_prediction(answer, direct_probabilities(bundle, "image", image=photo))


def listings(response: Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [listing["id"] for listing in response.json()["results"]]


def test_recommend_by_product_id_leaves_the_product_out(client: TestClient, bundle: Bundle) -> None:
    response = client.post("/recommend", json={"product_id": "p3", "k": 4})
    expected = [bundle.index.catalogue["id"][n.row] for n in bundle.index.neighbours("p3", 4)]
    assert listings(response) == expected
    results = response.json()["results"]
    assert "p3" not in expected and len(results) == 4
    assert [result["score"] for result in results] == sorted((result["score"] for result in results), reverse=True)
    row = bundle.index.listing(bundle.index.row(expected[0]))
    first = {"id": row["id"], "name": row["product_name"], "category": row["category"], "price": row["price"]}
    assert results[0] == first | {"score": results[0]["score"]}


def test_recommend_k_defaults_to_10_and_is_capped_by_the_catalogue(client: TestClient, bundle: Bundle) -> None:
    assert len(listings(client.post("/recommend", json={"product_id": "p0"}))) == 10
    assert len(listings(client.post("/recommend", json={"product_id": "p0", "k": 100}))) == len(bundle.index) - 1
    assert len(listings(client.post("/recommend", json={"product_id": "p0", "k": 3.0}))) == 3


def expected_neighbours(bundle: Bundle, image: bytes | None, text: str | None, k: int) -> list[str]:
    """The combined model's embedding halves (the absent one zero), searched in the index."""
    model = bundle.models["combined"].module
    halves = [torch.zeros(model.image.embedding_dim), torch.zeros(model.text.embedding_dim)]
    with torch.inference_mode():
        if image is not None:
            halves[0] = model.image(direct_image(image)).embedding[0]
        if text is not None:
            halves[1] = model.text(direct_tokens(bundle, text)).embedding[0]
    neighbours = bundle.index.nearest(torch.cat(halves).numpy(), k)
    return [bundle.index.catalogue["id"][neighbour.row] for neighbour in neighbours]


@pytest.mark.parametrize(("image", "text"), [(True, False), (False, True), (True, True)], ids=["image", "text", "both"])
def test_recommend_by_image_and_or_text_searches_the_combined_embedding(
    client: TestClient, bundle: Bundle, image: bool, text: bool
) -> None:
    photo = photo_bytes(21) if image else None
    words = "novel about a red bike" if text else None
    fields = {**({"image": photo} if image else {}), **({"text": words} if text else {}), "k": "5"}
    assert listings(client.post("/recommend", files=multipart(**fields))) == expected_neighbours(bundle, photo, words, 5)


def test_recommend_by_text_reads_json_too(client: TestClient, bundle: Bundle) -> None:
    words = "blue toaster"
    assert listings(client.post("/recommend", json={"text": words, "k": 3})) == expected_neighbours(bundle, None, words, 3)


def test_the_index_holds_each_products_mean_photo_embedding(built: tuple[Bundle, pl.DataFrame, Path]) -> None:
    bundle, manifest, photo_dir = built
    index = bundle.index
    assert "p11" not in index and len(index) == 11  # its only photo is not an image
    product = manifest.filter(pl.col("id") == "p5")
    name, description = product["product_name"][0], product["product_description"][0]
    embeddings = [
        direct(bundle, "combined", (photo_dir / f"{image_id}.jpg").read_bytes(), f"{name} {description}").embedding[0].numpy()
        for image_id in product["image_id"]
    ]
    assert len(embeddings) == 2
    mean = np.mean(embeddings, axis=0)
    np.testing.assert_allclose(index.vectors[index.row("p5")], mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-6)
    assert index.listing(index.row("p5")) == {"id": "p5", "product_name": name, "category": "Toys", "price": 5.0}


# --- refusals ------------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_413(client: TestClient) -> None:
    assert_error(client.post("/predict/text", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"}), 413)
    assert_error(client.post("/predict/image", files=multipart(image=b"\xff" * (MAX_BODY + 1))), 413)


def chunks(data: bytes) -> Iterator[bytes]:
    yield from (data[start : start + 65536] for start in range(0, len(data), 65536))


def test_a_streamed_body_without_a_length_is_cut_at_the_limit(client: TestClient) -> None:
    response = client.post("/predict/text", content=chunks(b"x" * (MAX_BODY + 1)), headers={"content-type": "application/json"})
    assert_error(response, 413)


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"", "not an image"),
        (b"GIF89a not really", "not an image"),
        (b"%PDF-1.4 a document", "not an image"),
        (photo_bytes(1)[:300], "truncated or corrupt"),
        (photo_bytes(2, format="PNG")[:-40], "truncated or corrupt"),
    ],
    ids=["empty", "fake-gif", "pdf", "truncated-jpeg", "truncated-png"],
)
@pytest.mark.parametrize("path", ["/predict/image", "/predict/combined", "/recommend"])
def test_unusable_images_are_422_naming_the_field(client: TestClient, path: str, data: bytes, detail: str) -> None:
    fields = {"image": data, **({} if path == "/predict/image" else {"text": "red kettle"})}
    assert_error(client.post(path, files=multipart(**fields)), 422, "image", detail)


def test_decompression_bombs_are_422(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("L", (1100, 1000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 10_000
    response = client.post("/predict/image", files=multipart(image=buffer.getvalue()))
    assert_error(response, 422, "image", "more than 1000000 pixels")


EMPTY_MULTIPART = {"content": b"--x--\r\n", "headers": {"content-type": "multipart/form-data; boundary=x"}}
MULTIPART_NONSENSE = {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data; boundary=x"}}


@pytest.mark.parametrize(
    ("path", "request_kwargs", "status", "field", "detail"),
    [
        ("/predict/text", {"json": {"text": ""}}, 422, "text", "empty"),
        ("/predict/text", {"json": {"text": " \t\r\n "}}, 422, "text", "empty"),
        ("/predict/text", {"json": {"text": "a" * (MAX_TEXT + 1)}}, 422, "text", f"longer than {MAX_TEXT}"),
        ("/predict/text", {"data": {"text": ""}}, 422, "text", "empty"),
        ("/predict/text", {"data": {"txt": "kettle"}}, 422, "txt", "unknown field 'txt'"),
        ("/predict/text", {"content": b"", "headers": {"content-type": URLENCODED}}, 422, "text", "missing"),
        ("/predict/text", {"json": {"txt": "kettle"}}, 422, "txt", "unknown field"),
        ("/predict/text", {"json": {}}, 422, "text", "missing required field"),
        ("/predict/text", {"json": {"text": 3}}, 422, "text", "Expected `str`"),
        ("/predict/text", {"json": ["text"]}, 422, None, "Expected `object`"),
        ("/predict/text", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, None, "not JSON"),
        ("/predict/text", {"content": b"text=kettle"}, 415, None, "expected a body of type"),
        ("/predict/text", {"files": multipart(text=b"\xff\xfe")}, 422, "text", "not UTF-8"),
        ("/predict/image", {"files": multipart(text="kettle")}, 422, "text", "unknown field 'text'"),
        ("/predict/image", EMPTY_MULTIPART, 422, "image", "missing"),
        ("/predict/image", {"json": {"image": "abc"}}, 415, None, "multipart/form-data"),
        ("/predict/image", MULTIPART_NONSENSE, 400, None, "multipart"),
        ("/predict/image", {"content": b"", "headers": {"content-type": "multipart/form-data"}}, 400, None, "multipart"),
        ("/predict/combined", {"files": multipart(image=photo_bytes(3))}, 422, "text", "missing"),
        ("/predict/combined", {"files": multipart(image=photo_bytes(3), text=" ")}, 422, "text", "empty"),
        ("/recommend", {"json": {"product_id": "nope"}}, 404, "product_id", "no product 'nope'"),
        ("/recommend", {"json": {"product_id": "p1", "k": 0}}, 422, "k", "between 1 and 100"),
        ("/recommend", {"json": {"product_id": "p1", "k": 101}}, 422, "k", "between 1 and 100"),
        ("/recommend", {"json": {"product_id": "p1", "k": True}}, 422, "k", "Expected `float`"),
        ("/recommend", {"json": {"product_id": "p1", "k": 2.5}}, 422, "k", "must be an integer"),
        ("/recommend", {"files": multipart(product_id="p1", k="ten")}, 422, "k", "integer"),
        ("/recommend", {"json": {"product_id": "p1", "text": "kettle"}}, 422, "product_id", "not both"),
        ("/recommend", {"json": {}}, 422, None, "give a product_id"),
        ("/recommend", {"json": {"text": ""}}, 422, "text", "empty"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(
    client: TestClient, path: str, request_kwargs: dict, status: int, field: str | None, detail: str
) -> None:
    assert_error(client.post(path, **request_kwargs), status, field, detail)


def test_a_field_given_twice_is_422(client: TestClient) -> None:
    part = b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\n%s\r\n'
    body = part % b"red" + part % b"blue" + b"--b--\r\n"
    response = client.post("/predict/text", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 422, "text", "more than once")
    form = {"content": b"text=a&text=b", "headers": {"content-type": "application/x-www-form-urlencoded"}}
    assert_error(client.post("/predict/text", **form), 422, "text", "more than once")


def test_endpoints_whose_model_the_bundle_lacks_are_404(bundle: Bundle) -> None:
    text_only = Bundle(bundle.codec, None, bundle.text, {"text": bundle.models["text"]})
    with TestClient(create_app(text_only)) as client:
        assert client.post("/predict/text", json={"text": "kettle"}).status_code == 200
        assert_error(client.post("/predict/image", files=multipart(image=photo_bytes(1))), 404, None, "no image model")
        combined = client.post("/predict/combined", files=multipart(image=photo_bytes(1), text="a"))
        assert_error(combined, 404, None, "no combined model")
        assert_error(client.post("/recommend", json={"product_id": "p1"}), 404, None, "no search index")
        assert client.get("/health").json()["models"] == ["text"]


def test_uploads_are_never_written_to_disk(client: TestClient, bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("an upload went to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr("litestar.datastructures.upload_file.SpooledTemporaryFile", refuse)
    photo = photo_bytes(5, size=(820, 820), format="PNG")
    assert len(photo) > 2**20  # past the 1 MiB where Litestar's own uploads spill to a file
    response = client.post("/predict/image", files=multipart(image=photo))
    assert_prediction(response.json(), direct_probabilities(bundle, "image", image=photo))


# --- the micro-batcher ---------------------------------------------------------------------------


def test_requests_arriving_while_a_batch_runs_form_the_next_batches() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def infer(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:
            release.wait(5)
        return [item * 10 for item in items]

    async def scenario() -> list[int]:
        batcher = MicroBatcher(infer, ThreadPoolExecutor(max_workers=1), max_batch=4)
        first = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher(item)) for item in range(1, 7)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(scenario()) == [0, 10, 20, 30, 40, 50, 60]
    assert sizes == [1, 4, 2]


def test_an_inference_failure_reaches_every_request_of_its_batch() -> None:
    def infer(_items: list[int]) -> list[int]:
        raise RuntimeError("boom")

    async def scenario() -> list[object]:
        batcher = MicroBatcher(infer, ThreadPoolExecutor(max_workers=1))
        return await asyncio.gather(*(batcher(item) for item in range(3)), return_exceptions=True)

    assert [str(result) for result in asyncio.run(scenario())] == ["boom"] * 3


# --- fuzzing -------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
FIELD_NAMES = st.sampled_from(["image", "text", "k", "product_id", "other"])
CONTENT_TYPES = st.sampled_from(
    ["application/json", "multipart/form-data; boundary=b", "multipart/form-data", URLENCODED, "text/plain", ""]
)
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(path=st.sampled_from(POST_PATHS), content_type=CONTENT_TYPES, body=st.binary(max_size=400))
def test_arbitrary_bodies_never_fail_the_server(client: TestClient, path: str, content_type: str, body: bytes) -> None:
    assert_handled(client.post(path, content=body, headers={"content-type": content_type}))


@FUZZ
@given(path=st.sampled_from(POST_PATHS), body=st.dictionaries(FIELD_NAMES | st.text(max_size=6), JSON_VALUES, max_size=4))
def test_arbitrary_json_never_fails_the_server(client: TestClient, path: str, body: dict) -> None:
    assert_handled(client.post(path, json=body))


@FUZZ
@given(
    path=st.sampled_from(POST_PATHS),
    fields=st.dictionaries(
        FIELD_NAMES, st.binary(max_size=200) | st.sampled_from([photo_bytes(9), b"5", b"p2"]), min_size=1, max_size=4
    ),
)
def test_arbitrary_forms_never_fail_the_server(client: TestClient, path: str, fields: dict[str, bytes]) -> None:
    assert_handled(client.post(path, files=multipart(**fields)))


def assert_handled(response: Response) -> None:
    assert response.status_code == 200 or response.status_code in ERROR_STATUSES, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.status_code == 200 or response.json()["detail"]


# --- the OpenAPI schema --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_schema(bundle: Bundle) -> schemathesis.BaseSchema:
    """The schema the app serves, bound to an app of its own (called in-process, no network)."""
    return schemathesis.openapi.from_asgi("/schema/openapi.json", app_over(bundle))


def holds_an_image(case: schemathesis.Case) -> bool:
    """Whether the body has a photo, which a schema cannot require to be decodable: schema-valid
    random bytes are rightly refused there. (And form fields are all text on the wire, so a form
    cannot show a wrongly typed value: negative cases are checked for JSON bodies only.)"""
    return isinstance(case.body, dict) and "image" in case.body


SCHEMA_CASES = [
    ("GET", "/health", GenerationMode.POSITIVE),  # takes no input: nothing negative to make
    *(("POST", path, mode) for path in POST_PATHS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
]


@pytest.mark.parametrize(("method", "path", "mode"), SCHEMA_CASES, ids=lambda value: getattr(value, "value", value))
def test_the_api_honours_its_openapi_schema(
    api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    def honoured(case: schemathesis.Case) -> None:
        excluded = [positive_data_acceptance] if holds_an_image(case) else []
        excluded += [] if case.media_type in (None, "application/json") else [negative_data_rejection]
        case.call_and_validate(excluded_checks=excluded)

    honoured()


def test_the_schema_documents_every_endpoint_and_body(client: TestClient) -> None:
    paths = client.get("/schema/openapi.json").json()["paths"]
    assert set(paths) == {"/health", *POST_PATHS}
    assert set(paths["/predict/text"]["post"]["requestBody"]["content"]) == {
        "application/json", "application/x-www-form-urlencoded", "multipart/form-data",
    }
    image = paths["/predict/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert image["properties"]["image"]["format"] == "binary"
    assert image["required"] == ["image"]
    assert {"200", "404", "413", "415", "422"} <= set(paths["/recommend"]["post"]["responses"])
