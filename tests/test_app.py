"""The HTTP API over a small bundle built here (an EfficientNet-Lite0 without weights, a text CNN, a
linear text model, a combined network; the text, image and combined predictors as ensembles of them;
a search index of a small catalogue): every endpoint, every refusal, answers equal to the
predictors' ensembles of the models' own outputs computed by hand, fuzzed bodies and schemathesis
against the app's OpenAPI schema."""

from __future__ import annotations

import asyncio
import copy
import io
import itertools
import json
import re
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import numpy as np
import polars as pl
import pytest
import schemathesis
import torch
from contracts.api import PHOTO_FORMATS
from contracts.bundle import CombinedOptions, ImageOptions, ModelKind, Role, TextCnnOptions
from fbml.bundle.bundle import Bundle, BundleModel, Predictor
from fbml.bundle.listings import ListingRecipe, ListingWeights, listing_parts
from fbml.bundle.search import SearchIndex
from fbml.bundle.store import _check_index as check_index
from fbml.errors import FbmlError, InputError
from fbml.modeling.backbones import backbone
from fbml.modeling.datasets import eval_transform
from fbml.modeling.ensembles import Ensemble
from fbml.modeling.inference import Listings
from fbml.modeling.linear_text import LinearTextModel, LinearTextOptions, fit_linear_text
from fbml.modeling.models import ImageClassifier, combined_model, image_from_options, text_cnn_from_options
from fbml.modeling.settings import ImageSettings, TextSettings
from fbml.serving.app import create_app
from fbml.serving.batching import MicroBatcher
from fbml.serving.errors import ApiError
from fbml.serving.requests import TextRules, readable_pattern
from fbml.serving.server import serving
from fbml.serving.service import Example, listing_vectors, predictions
from fbml.testing import photo_bytes as photo_files
from fbml.text.labels import LabelCodec
from fbml.text.vocabulary import Vocabulary
from fbml.text.word2vec import WordVectors, embedding_matrix
from fbml.vision.cleaning import clean_image, open_image
from fbml.vision.photos import PhotoLimits, PreparedPhoto
from httpx import Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image
from schemathesis.checks import CHECKS
from schemathesis.core.media_types import MEDIA_TYPE_STRATEGIES
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

BACKBONE = "efficientnet_lite0"
SIZE = 32
CATEGORIES = ("Appliances", "Books", "Toys")
# the words of each category (by index) and words every category uses
CATEGORY_WORDS = (("kettle", "toaster", "lamp"), ("novel", "story", "poems"), ("doll", "bike", "puzzle"))
SHARED_WORDS = ("red", "blue", "cafe", "small", "new")
WORDS = (*(word for words in CATEGORY_WORDS for word in words), *SHARED_WORDS)
EMBEDDING_DIM = {"image-cnn": 8, "text-cnn": 6}
MAX_BODY = 3 * 2**20
MAX_TEXT = 200
MAX_PIXELS = 1_000_000
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
POST_PATHS = ("/predict/image", "/predict/text", "/predict/combined", "/recommend")
ERROR_STATUSES = {400, 404, 413, 415, 422}
FLOOR = 1e-7  # log-linear pooling clips each probability to at least this (fbml.modeling.ensembles)
# each predictor's members (model kind, weight) and per-class bias: softmax(sum w log p + bias)
PREDICTORS: Mapping[str, tuple[tuple[tuple[str, float], ...], tuple[float, ...]]] = {
    "text": ((("text-cnn", 0.7), ("text-linear", 1.6)), (0.3, -0.2, 0.1)),
    "image": ((("image-cnn", 2.5),), (0.0, 0.0, 0.0)),  # temperature scaling: T = 0.4
    "combined": ((("text-cnn", 0.5), ("text-linear", 1.2), ("image-cnn", 0.8), ("combined-nn", 0.6)), (-0.1, 0.2, 0.0)),
}
INDEX_RECIPE = ListingRecipe(ListingWeights(text=1.0, image=0.5, classes=2.0), power=1.0)
CATALOGUE_SIZE = 12
PHOTOGRAPHED = 9  # products p0 .. p8 have a photo, p9 .. p11 text alone


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def photo_bytes(seed: int, size: tuple[int, int] = (48, 40), format: str = "JPEG") -> bytes:
    """A random photo (a tint of its own under noise), encoded."""
    rng = np.random.default_rng(seed)
    tint = rng.integers(0, 256, size=3)
    noise = rng.integers(0, 256, size=(size[1], size[0], 3))
    pixels = ((tint + noise) // 2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format)
    return buffer.getvalue()


def synthetic_texts(count: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Listing texts whose first category word tells their category, with shared words and a word of a random category."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(CATEGORIES)
    texts = [
        f"{rng.choice(SHARED_WORDS)} {rng.choice(CATEGORY_WORDS[label])} {rng.choice(SHARED_WORDS)} "
        f"{rng.choice(CATEGORY_WORDS[rng.integers(len(CATEGORIES))])}"  # a word of any category: not separable
        for label in labels
    ]
    return texts, labels


def product_text(product: int) -> str:
    words = CATEGORY_WORDS[product % 3]
    return f"{SHARED_WORDS[product % 5]} {words[product % 3]} for {SHARED_WORDS[(product + 2) % 5]} {words[(product + 1) % 3]}"


def catalogue() -> pl.DataFrame:
    """The indexed products: id, name, category, category path, price, photo ids (a search index's catalogue)."""
    return pl.DataFrame(
        {
            "id": [f"p{product}" for product in range(CATALOGUE_SIZE)],
            "product_name": [product_text(product) for product in range(CATALOGUE_SIZE)],
            "category": [CATEGORIES[product % 3] for product in range(CATALOGUE_SIZE)],
            "category_path": [f"{CATEGORIES[product % 3]} > kind {product % 2}" for product in range(CATALOGUE_SIZE)],
            "price": [float(product) + 0.5 for product in range(CATALOGUE_SIZE)],
            "photos": [[photo_id(product)] if product < PHOTOGRAPHED else [] for product in range(CATALOGUE_SIZE)],
        }
    )


def photo_id(product: int) -> str:
    """The id of a photographed catalogue product's photo."""
    return f"photo-{product}"


def catalogue_photo(product: int) -> bytes | None:
    return photo_bytes(100 + product) if product < PHOTOGRAPHED else None


def prepared(photo: bytes, settings: ImageSettings, limits: PhotoLimits) -> PreparedPhoto:
    """A photo as the bundle's preparation makes it (what ``/predict/image`` does on a decoding thread)."""
    return settings.preparation.prepared(photo, limits=limits)


def calibrated_image_model(options: ImageOptions) -> ImageClassifier:
    """A randomly initialised image model whose head's input batch norm has the statistics of photos'
    pooled features (as training would leave it): its embeddings and classes then vary by photo."""
    model = image_from_options(options, len(CATEGORIES)).eval()
    photos = torch.from_numpy(np.stack([prepared(photo_bytes(500 + seed), image_settings(), PhotoLimits(10**8)).pixels
                                        for seed in range(16)]))
    with torch.inference_mode():
        features = model.trainable(model.frozen(photos))
    normalise = model.head.normalise
    assert isinstance(normalise, torch.nn.BatchNorm1d)
    normalise.running_mean.copy_(features.mean(dim=0))
    normalise.running_var.copy_(features.var(dim=0) + 1e-6)
    with torch.no_grad():
        model.head.classify[-1].weight.mul_(4.0)
    return model


def image_settings() -> ImageSettings:
    preprocessing = backbone(BACKBONE).preprocessing
    return ImageSettings(BACKBONE, SIZE, preprocessing.mean, preprocessing.std)


def models_bundle() -> Bundle:
    """The four models and the three predictors of ``PREDICTORS`` (no index)."""
    torch.manual_seed(0)
    vectors = np.random.default_rng(0).normal(size=(len(WORDS), 6)).astype(np.float32)
    text = TextSettings(Vocabulary(("<pad>", "<unk>", *WORDS)), WordVectors(WORDS, vectors), 10)
    image_options = ImageOptions(BACKBONE, trainable_stages=1, embedding_dim=EMBEDDING_DIM["image-cnn"], dropout=0.0)
    text_options = TextCnnOptions(
        embedding_dim=EMBEDDING_DIM["text-cnn"], kernel_sizes=[2, 3], channels=4, dropout=0.0, freeze_embeddings=False,
        normalise_embeddings=True, positions=4, word_dropout=0.0, branch_scale=5.0,
    )
    image_cnn = calibrated_image_model(image_options)
    text_cnn = text_cnn_from_options(text_options, embedding_matrix(text.word_vectors, text.vocabulary), len(CATEGORIES))
    with torch.no_grad():
        text_cnn.head.classify[-1].weight.mul_(3.0)
    combined = combined_model(copy.deepcopy(image_cnn), copy.deepcopy(text_cnn), len(CATEGORIES))
    with torch.no_grad():
        combined.classify.weight.mul_(3.0)
    texts, labels = synthetic_texts(36, seed=1)
    linear = fit_linear_text(texts, labels, len(CATEGORIES))
    bundle = Bundle(LabelCodec(CATEGORIES), image_settings(), text)
    for model in (
        BundleModel("image-cnn", image_cnn.eval(), image_options),
        BundleModel("text-cnn", text_cnn.eval(), text_options),
        BundleModel("text-linear", linear, None),
        BundleModel("combined-nn", combined.eval(), CombinedOptions(image_options, text_options)),
    ):
        bundle = bundle.with_model(model)
    for role, (members, bias) in PREDICTORS.items():
        bundle = bundle.with_predictor(role, Predictor(Ensemble(members, bias)))
    return bundle


def indexed(bundle: Bundle) -> Bundle:
    """``bundle`` with the index of ``catalogue()`` built as ``fbml.workflows.index`` builds a catalogue's
    (``listing_parts``: the text CNN's embedding and the text predictor's classes for every product; for
    those with a photo, the image model's embedding and the combined predictor's classes)."""
    products = catalogue()
    texts = products["product_name"].to_list()
    photos = [[photo] if (photo := catalogue_photo(row)) is not None else [] for row in range(CATALOGUE_SIZE)]
    parts = listing_parts(bundle, texts, photos, limits=PhotoLimits(MAX_PIXELS), batch_size=5)
    index = SearchIndex(parts.vectors(INDEX_RECIPE), products, INDEX_RECIPE.to_json())
    return attrs.evolve(bundle, index=index)


@pytest.fixture(scope="module")
def bundle(one_torch_thread: None) -> Bundle:
    built = indexed(models_bundle())
    check_index(built)  # what loading a bundle checks of its index
    return built


MODEL_VERSION = "0123abcd" * 8


def app_over(bundle: Bundle, photo_dir: Path | None = None) -> Litestar:
    return create_app(attrs.evolve(bundle, model_version=MODEL_VERSION), max_body_bytes=MAX_BODY, max_text_chars=MAX_TEXT,
                      max_image_pixels=MAX_PIXELS, photo_dir=photo_dir)  # fmt: skip


@pytest.fixture(scope="module")
def client(bundle: Bundle) -> Iterator[TestClient]:
    with TestClient(app_over(bundle)) as client:
        yield client


# --- the models and predictors by hand -----------------------------------------------------------


def ascii_text(text: str) -> str:
    """As the cleaning writes text: NFKD, non-ASCII dropped, one space between words."""
    return " ".join(unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().split())


def direct_image(image: bytes) -> torch.Tensor:
    """A photo prepared by hand as training photos are (``fbml.vision.cache``: decoded straight to about
    ``SIZE``, letterboxed), then the deterministic eval transform with EfficientNet-Lite's statistics (0.5)."""
    with open_image(image, size=SIZE, max_pixels=10**8) as decoded:
        square = clean_image(decoded, SIZE)
    pixels = torch.from_numpy(np.asarray(square).transpose(2, 0, 1).copy())
    return eval_transform(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(pixels)[None]


def direct_tokens(bundle: Bundle, text: str) -> torch.Tensor:
    assert bundle.text is not None
    return torch.from_numpy(bundle.text.vocabulary.encode_texts([ascii_text(text)], bundle.text.length))


def direct(bundle: Bundle, kind: str, image: bytes | None = None, text: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``kind`` model's own probabilities (float64) and embedding for one listing, run by hand."""
    module = bundle.models[kind].module
    if isinstance(module, LinearTextModel):
        assert text is not None
        return module.predict_proba([ascii_text(text)])[0].astype(np.float64), None
    inputs = []
    if kind in ("image-cnn", "combined-nn"):
        assert image is not None
        inputs.append(direct_image(image))
    if kind in ("text-cnn", "combined-nn"):
        assert text is not None
        inputs.append(direct_tokens(bundle, text))
    with torch.inference_mode():
        output = module(*inputs)
    return torch.softmax(output.logits.double(), dim=1)[0].numpy(), output.embedding[0].double().numpy()


def probability_row(probabilities: Mapping[str, float]) -> np.ndarray:
    """A prediction's probabilities in the codec's order."""
    return np.array([probabilities[name] for name in CATEGORIES])


def pooled(members: tuple[tuple[str, float], ...], bias: tuple[float, ...], probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
    """Log-linear pooling in numpy: softmax(sum_m w_m log max(p_m, FLOOR) + bias)."""
    scores = np.array(bias, dtype=np.float64)
    for kind, weight in members:
        scores = scores + weight * np.log(np.clip(probabilities[kind], FLOOR, 1.0))
    exponentials = np.exp(scores - scores.max())
    return exponentials / exponentials.sum()


def member_probabilities(bundle: Bundle, role: str, image: bytes | None, text: str | None) -> dict[str, np.ndarray]:
    return {kind: direct(bundle, kind, image, text)[0] for kind, _ in PREDICTORS[role][0]}


def expected_prediction(bundle: Bundle, role: str, image: bytes | None = None, text: str | None = None) -> np.ndarray:
    """What the ``role`` predictor answers, by hand: its members run on the listing, pooled."""
    members, bias = PREDICTORS[role]
    return pooled(members, bias, member_probabilities(bundle, role, image, text))


def unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def expected_vector(bundle: Bundle, image: bytes | None, text: str | None) -> np.ndarray:
    """A listing's vector by hand: the unit text-cnn embedding, the unit image-cnn embedding (zero where absent)
    and the predictor's classes (text alone: the text predictor; a photo alone: the image predictor; both: the
    combined one), at power 1, weighted, joined, unit length."""
    text_part, image_part = np.zeros(EMBEDDING_DIM["text-cnn"]), np.zeros(EMBEDDING_DIM["image-cnn"])
    if text is not None:
        text_part = unit(direct(bundle, "text-cnn", text=text)[1])
    if image is not None:
        image_part = unit(direct(bundle, "image-cnn", image=image)[1])
    role = "combined" if image is not None and text is not None else "image" if image is not None else "text"
    classes = expected_prediction(bundle, role, image, text)
    weights = INDEX_RECIPE.weights
    return unit(np.concatenate([text_part * weights.text, image_part * weights.image, classes * weights.classes]))


def exact_search(index: SearchIndex, query: np.ndarray, k: int, exclude: int | None = None) -> list[tuple[str, float]]:
    """Every catalogue row scored by cosine against ``query`` (unit length), best first, ties by row."""
    scores = index.vectors.astype(np.float64) @ query
    rows = [row for row in np.lexsort((np.arange(len(scores)), -scores)) if row != exclude][:k]
    return [(index.catalogue["id"][int(row)], float(scores[row])) for row in rows]


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


def assert_prediction(answer: dict, expected: np.ndarray) -> None:
    """The answer's probabilities equal ``expected`` (1e-5), sum to 1, and its category is the argmax."""
    assert set(answer["probabilities"]) == set(CATEGORIES)
    got = np.array([answer["probabilities"][name] for name in CATEGORIES])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert got.sum() == pytest.approx(1.0, abs=1e-5)
    assert answer["category"] == CATEGORIES[int(np.argmax(expected))]
    assert [entry["category"] for entry in answer["top"]] == [CATEGORIES[i] for i in np.argsort(-expected, kind="stable")]
    assert answer["top"][0]["probability"] == max(answer["probabilities"].values())


def assert_pooling_matters(bundle: Bundle, role: str, image: bytes | None, text: str | None) -> None:
    """The pooled prediction differs from each member's own: serving one member would fail the test."""
    expected = expected_prediction(bundle, role, image, text)
    for kind, probabilities in member_probabilities(bundle, role, image, text).items():
        assert np.abs(expected - probabilities).max() > 1e-3, kind


# --- every endpoint ------------------------------------------------------------------------------


def test_health_reports_the_predictors_classes_format_and_index(client: TestClient, bundle: Bundle) -> None:
    assert sorted(bundle.models) == ["combined-nn", "image-cnn", "text-cnn", "text-linear"]
    assert client.get("/health").json() == {
        "ready": True, "models": ["combined", "image", "text"], "classes": 3, "bundle_format": "fbml.bundle/2",
        "indexed_products": CATALOGUE_SIZE, "photos": False,
    }


TEXT = "red kettle for a small novel"


@pytest.mark.parametrize(
    "request_kwargs",
    [{"json": {"text": TEXT}}, {"data": {"text": TEXT}}, {"files": multipart(text=TEXT)}],
    ids=["json", "form", "multipart"],
)
def test_predict_text_is_the_text_predictors_ensemble(client: TestClient, bundle: Bundle, request_kwargs: dict) -> None:
    response = client.post("/predict/text", **request_kwargs)
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), expected_prediction(bundle, "text", text=TEXT))


def test_the_text_predictor_pools_both_text_models(bundle: Bundle) -> None:
    assert_pooling_matters(bundle, "text", None, TEXT)


def test_predict_image_is_the_image_predictors_tempered_model(client: TestClient, bundle: Bundle) -> None:
    photo = photo_bytes(7, size=(80, 50))
    response = client.post("/predict/image", files=multipart(image=photo))
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), expected_prediction(bundle, "image", image=photo))
    assert_pooling_matters(bundle, "image", photo, None)


def test_predict_combined_is_the_fusion_of_every_model(client: TestClient, bundle: Bundle) -> None:
    photo, text = photo_bytes(8, format="PNG"), "blue doll and a puzzle"
    response = client.post("/predict/combined", files=multipart(image=photo, text=text))
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), expected_prediction(bundle, "combined", photo, text))
    assert_pooling_matters(bundle, "combined", photo, text)


def test_text_is_normalised_to_ascii_as_training_text_was(client: TestClient) -> None:
    plain = client.post("/predict/text", json={"text": "cafe bike"}).json()
    accented = client.post("/predict/text", json={"text": "Café\u00a0\u00a0BIKE\r\n"}).json()
    assert "probabilities" in plain
    assert accented == plain


@pytest.mark.parametrize(
    "analyzer", ["char_wb", "char"]
)
def test_ascii_text_with_messy_whitespace_is_answered_as_its_cleaned_form(bundle: Bundle, analyzer: str) -> None:
    """Training text was cleaned (one space between words, stripped): so is a request's, ASCII or not."""
    texts, labels = synthetic_texts(36, seed=1)
    linear = fit_linear_text(texts, labels, len(CATEGORIES), options=LinearTextOptions(char_analyzer=analyzer))
    served = attrs.evolve(bundle.with_model(BundleModel("text-linear", linear, None)), index=None)
    with TestClient(create_app(served)) as client:
        clean = client.post("/predict/text", json={"text": "cafe bike"}).json()
        messy = client.post("/predict/text", json={"text": "  cafe \t bike \r\n"}).json()
    assert "probabilities" in clean
    assert messy == clean


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.text(alphabet=st.characters(codec="ascii"), max_size=40))
def test_the_text_cnn_reads_text_as_training_text_was_normalised(bundle: Bundle, text: str) -> None:
    """The text CNN of the prediction path reads any text as its cleaned (ASCII) form tokenised, as by hand."""
    outputs = bundle.listing_model(ModelKind.TEXT_CNN).outputs(Listings(texts=(text, "red bike")))
    assert outputs.embeddings is not None
    probabilities, embedding = direct(bundle, "text-cnn", text=text)
    np.testing.assert_allclose(outputs.probabilities[0], probabilities, rtol=0, atol=1e-5)
    np.testing.assert_allclose(outputs.embeddings[0], embedding, rtol=0, atol=1e-5)


def test_concurrent_requests_are_batched_without_changing_answers(client: TestClient, bundle: Bundle) -> None:
    photos = [photo_bytes(seed) for seed in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda photo: client.post("/predict/image", files=multipart(image=photo)).json(), photos))
    for photo, answer in zip(photos, answers, strict=True):
        assert_prediction(answer, expected_prediction(bundle, "image", image=photo))


def test_a_batch_of_listings_gets_each_listings_own_probabilities(bundle: Bundle) -> None:
    """What the micro-batcher runs: several listings in one batch, each answered as if alone."""
    photos = [photo_bytes(seed) for seed in (31, 32, 33)]
    texts = ["novel story", "small red toaster", "bike for a doll"]
    examples = [Example(prepared(photo, bundle.image, PhotoLimits(MAX_PIXELS)), text) for photo, text in zip(photos, texts, strict=True)]
    for got, photo, text in zip(predictions(bundle, Role.COMBINED, examples), photos, texts, strict=True):
        assert got.role is Role.COMBINED
        np.testing.assert_allclose(probability_row(got.probabilities), expected_prediction(bundle, "combined", photo, text),
                                   rtol=0, atol=1e-5)
    text_only = predictions(bundle, Role.TEXT, [Example(text=text) for text in texts])
    for got, text in zip(text_only, texts, strict=True):
        np.testing.assert_allclose(probability_row(got.probabilities), expected_prediction(bundle, "text", text=text), rtol=0, atol=1e-5)


def test_a_batch_of_mixed_queries_gets_each_querys_own_vector(bundle: Bundle) -> None:
    """Queries by text, by photo and by both in one batch: each its own vector, in order."""
    queries = [(photo_bytes(41), None), (None, "blue kettle"), (photo_bytes(42), "story of a doll"), (None, "new poems"),
               (photo_bytes(43), None)]
    examples = [Example(None if photo is None else prepared(photo, bundle.image, PhotoLimits(MAX_PIXELS)), text) for photo, text in queries]
    vectors = listing_vectors(bundle, examples)
    assert len(vectors) == len(queries)
    for got, (photo, text) in zip(vectors, queries, strict=True):
        np.testing.assert_allclose(got, expected_vector(bundle, photo, text), rtol=0, atol=1e-5)


def listings(response: Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [listing["id"] for listing in response.json()["results"]]


def assert_results(response: Response, expected: list[tuple[str, float]]) -> None:
    assert listings(response) == [product for product, _ in expected]
    scores = [result["score"] for result in response.json()["results"]]
    np.testing.assert_allclose(scores, [score for _, score in expected], rtol=0, atol=1e-5)


def test_the_index_holds_each_products_vector_built_from_its_parts(bundle: Bundle) -> None:
    index = bundle.index
    assert index is not None and len(index) == CATALOGUE_SIZE
    assert index.dim == EMBEDDING_DIM["text-cnn"] + EMBEDDING_DIM["image-cnn"] + len(CATEGORIES)
    for product in (0, 5, 10):  # photographed (0, 5), text alone (10)
        expected = expected_vector(bundle, catalogue_photo(product), product_text(product))
        np.testing.assert_allclose(index.vectors[index.row(f"p{product}")], expected, rtol=0, atol=1e-5)
    assert index.listing(index.row("p5")) == {"id": "p5", "product_name": product_text(5), "category": "Toys",
                                              "category_path": "Toys > kind 1", "price": 5.5, "photos": [photo_id(5)]}


def test_recommend_by_product_id_leaves_the_product_out(client: TestClient, bundle: Bundle) -> None:
    index = bundle.index
    assert index is not None
    response = client.post("/recommend", json={"product_id": "p3", "k": 4})
    expected = exact_search(index, index.vectors[index.row("p3")].astype(np.float64), 4, exclude=index.row("p3"))
    assert_results(response, expected)
    assert "p3" not in listings(response) and len(expected) == 4
    results = response.json()["results"]
    row = index.listing(index.row(expected[0][0]))
    first = {"id": row["id"], "name": row["product_name"], "category": row["category"], "price": row["price"],
             "category_path": row["category_path"], "photos": row["photos"]}
    assert results[0] == first | {"score": results[0]["score"]}


def test_recommend_k_defaults_to_10_and_is_capped_by_the_catalogue(client: TestClient, bundle: Bundle) -> None:
    assert len(listings(client.post("/recommend", json={"product_id": "p0"}))) == 10
    assert len(listings(client.post("/recommend", json={"product_id": "p0", "k": 100}))) == CATALOGUE_SIZE - 1
    assert len(listings(client.post("/recommend", json={"product_id": "p0", "k": 3.0}))) == 3
    assert len(listings(client.post("/recommend", json={"text": "red lamp"}))) == 10
    assert len(listings(client.post("/recommend", json={"text": "red lamp", "k": 100}))) == CATALOGUE_SIZE
    assert len(listings(client.post("/recommend", files=multipart(text="red lamp")))) == 10


@pytest.mark.parametrize(("image", "text"), [(True, False), (False, True), (True, True)], ids=["image", "text", "both"])
def test_recommend_by_image_and_or_text_searches_the_listing_vector(
    client: TestClient, bundle: Bundle, image: bool, text: bool
) -> None:
    assert bundle.index is not None
    photo = photo_bytes(21) if image else None
    words = "novel about a red bike" if text else None
    fields = {**({"image": photo} if photo is not None else {}), **({"text": words} if words is not None else {}), "k": "5"}
    expected = exact_search(bundle.index, expected_vector(bundle, photo, words), 5)
    assert_results(client.post("/recommend", files=multipart(**fields)), expected)


def test_recommend_by_text_reads_json_too(client: TestClient, bundle: Bundle) -> None:
    assert bundle.index is not None
    words = "blue toaster"
    expected = exact_search(bundle.index, expected_vector(bundle, None, words), 3)
    assert_results(client.post("/recommend", json={"text": words, "k": 3}), expected)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict/image", {"files": multipart(image=photo_bytes(1))}),
        ("/predict/text", {"json": {"text": "red kettle"}}),
        ("/predict/combined", {"files": multipart(image=photo_bytes(1), text="red kettle")}),
        ("/recommend", {"json": {"product_id": "p1", "k": 2}}),
        ("/recommend", {"files": multipart(image=photo_bytes(1), text="red kettle")}),
    ],
)
def test_every_prediction_and_recommendation_names_the_model_version(client: TestClient, path: str, body: dict) -> None:
    response = client.post(path, **body)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == MODEL_VERSION == response.headers["x-model-version"]


def test_an_answer_with_its_own_content_security_policy_keeps_it_and_the_other_headers() -> None:
    from fbml.serving.app import SECURITY_HEADERS, with_security_headers

    own = (b"Content-Security-Policy", b"default-src 'self'")
    message: dict[str, Any] = {"type": "http.response.start", "status": 200, "headers": [own]}
    asyncio.run(with_security_headers(message, {}))  # type: ignore[arg-type]
    assert [value for name, value in message["headers"] if name.lower() == b"content-security-policy"] == [own[1]]
    assert {name for name, _ in SECURITY_HEADERS} - {b"content-security-policy"} <= {name for name, _ in message["headers"]}
    plain: dict[str, Any] = {"type": "http.response.start", "status": 200, "headers": []}
    asyncio.run(with_security_headers(plain, {}))  # type: ignore[arg-type]
    assert plain["headers"] == list(SECURITY_HEADERS)


@pytest.mark.parametrize("product", [2, 7, 10], ids=["photographed", "photographed-again", "text-alone"])
def test_a_products_own_photo_and_text_find_it_first(client: TestClient, product: int) -> None:
    """The query vector of a listing is the one the index stores for it (its own parts)."""
    photo = catalogue_photo(product)
    fields = {**({"image": photo} if photo is not None else {}), "text": product_text(product), "k": "2"}
    results = client.post("/recommend", files=multipart(**fields)).json()["results"]
    assert results[0]["id"] == f"p{product}"
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert results[1]["score"] < 1.0 - 1e-4


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
        (b"", "Expected `bytes` of length >= 1"),
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
        ("/predict/text", {"content": b'{"text": "\xff kettle"}', "headers": {"content-type": "application/json"}}, 400, None, "not JSON (in UTF-8)"),
        ("/recommend", {"content": b'{"text": "kettle \xc3"}', "headers": {"content-type": "application/json"}}, 400, None, "not JSON (in UTF-8)"),
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
        ("/recommend", {"json": {"product_id": "p1", "k": 0}}, 422, "k", "Expected `float` >= 1"),
        ("/recommend", {"json": {"product_id": "p1", "k": 101}}, 422, "k", "Expected `float` <= 100"),
        ("/recommend", {"json": {"product_id": "p1", "k": True}}, 422, "k", "Expected `float`, got `bool`"),
        ("/recommend", {"json": {"product_id": "p1", "k": 2.5}}, 422, "k", "multiple of 1"),
        ("/recommend", {"json": {"product_id": "p1", "k": "5"}}, 422, "k", "Expected `float`, got `str`"),
        ("/recommend", {"files": multipart(product_id="p1", k="ten")}, 422, "k", "Expected `float`, got `str`"),
        ("/recommend", {"files": multipart(product_id="p1", k="2.5")}, 422, "k", "multiple of 1"),
        ("/recommend", {"json": {"product_id": "p1", "text": "kettle"}}, 422, "product_id", "give only one of"),
        ("/recommend", {"files": multipart(product_id="p1", image=photo_bytes(4))}, 422, "product_id", "give only one of"),
        ("/recommend", {"json": {}}, 422, None, "give one of: product_id; image and/or text"),
        ("/recommend", {"json": {"product_id": None}}, 422, "product_id", "Expected `str`, got `null`"),
        ("/recommend", {"json": {"product_id": ""}}, 422, "product_id", "length >= 1"),
        ("/recommend", {"json": {"image": "aGk="}}, 422, "image", "unknown field `image`"),
        ("/recommend", {"json": {"text": ""}}, 422, "text", "empty"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(
    client: TestClient, path: str, request_kwargs: dict, status: int, field: str | None, detail: str
) -> None:
    assert_error(client.post(path, **request_kwargs), status, field, detail)


def test_an_error_never_repeats_a_clients_megabytes(client: TestClient) -> None:
    """A 2 MB product id, field name or text: the answer names them, bounded (it echoed a 9 MB id whole)."""
    huge = "x" * 2_000_000
    for response in (client.post("/recommend", json={"product_id": huge}),
                     client.post("/predict/image", files=multipart(**{huge[:200_000]: "kettle"})),
                     client.post("/predict/text", json={"text": huge})):
        assert response.status_code in (400, 404, 422) and len(response.content) < 2_000, response.content[:200]
        assert response.json()["detail"]


UNREADABLE = ["\x00", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", " ", "\t", "\n", "\u00a0", "\u3000", "!", "-", "\u2019"]
UNREADABLE_TEXTS = st.text(alphabet=st.sampled_from(UNREADABLE) | st.characters(categories=["Mn", "Me"]), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=UNREADABLE_TEXTS, where=st.sampled_from(["json", "form", "multipart", "recommend"]))
def test_text_with_nothing_a_model_can_read_is_422(client: TestClient, text: str, where: str) -> None:
    """NULs, zero-width and combining characters, spaces, punctuation: no letter or digit once normalised."""
    path, request_kwargs = {
        "json": ("/predict/text", {"json": {"text": text}}),
        "form": ("/predict/text", {"data": {"text": text}}),
        "multipart": ("/predict/text", {"files": multipart(text=text)}),
        "recommend": ("/recommend", {"json": {"text": text}}),
    }[where]
    assert_error(client.post(path, **request_kwargs), 422, "text", "empty: no letter or digit once normalised")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noise=UNREADABLE_TEXTS, readable=st.sampled_from(["a", "7", "é", "ｋ", "①"]))
def test_one_readable_character_among_the_noise_is_answered(client: TestClient, noise: str, readable: str) -> None:
    response = client.post("/predict/text", json={"text": noise + readable + noise})
    assert response.status_code == 200, response.text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), format=st.sampled_from(sorted(PHOTO_FORMATS)))
def test_a_photo_of_any_mode_size_and_orientation_is_answered_as_the_bundle_predicts(
    client: TestClient, bundle: Bundle, data: st.DataObject, format: str
) -> None:
    """fbml.testing's photos of every mode the format holds: the answer is the bundle's own prediction, to
    float32 noise (1e-4: a micro-batch and numpy's normalisation against one photo through torch's)."""
    photo = data.draw(photo_files(format, max_side=300, max_pixels=40_000), label="photo")
    response = client.post("/predict/image", files=multipart(image=photo))
    assert response.status_code == 200, response.text
    answer = response.json()
    got = np.array([answer["probabilities"][name] for name in CATEGORIES])
    np.testing.assert_allclose(got, expected_prediction(bundle, "image", image=photo), rtol=0, atol=1e-4)
    assert answer["category"] == CATEGORIES[int(np.argmax(got))]


def test_a_field_given_twice_is_422(client: TestClient) -> None:
    part = b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\n%s\r\n'
    body = part % b"red" + part % b"blue" + b"--b--\r\n"
    response = client.post("/predict/text", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 422, "text", "more than once")
    form = {"content": b"text=a&text=b", "headers": {"content-type": "application/x-www-form-urlencoded"}}
    assert_error(client.post("/predict/text", **form), 422, "text", "more than once")


def test_a_bundle_on_onnx_runtime_answers_as_on_torch(bundle: Bundle) -> None:
    """The networks as ONNX Runtime sessions (as ``fbml serve --runtime onnx`` loads them): every
    endpoint answers what the torch networks do."""
    from fbml.modeling.onnx_export import checked_graph
    from fbml.modeling.onnx_runtime import onnx_model

    assert bundle.text is not None
    sizes = {"image_size": SIZE, "text_length": bundle.text.length, "vocabulary_size": len(bundle.text.vocabulary)}
    sessions = {
        kind: attrs.evolve(model, module=onnx_model(kind, checked_graph(kind, model.module, **sizes)[0], threads=1))
        for kind, model in bundle.models.items()
        if kind != "text-linear"
    }
    photo, text = photo_bytes(12), "blue kettle for a small doll"
    with TestClient(create_app(attrs.evolve(bundle, models={**bundle.models, **sessions}))) as client:
        assert_prediction(client.post("/predict/image", files=multipart(image=photo)).json(), expected_prediction(bundle, "image", image=photo))
        assert_prediction(client.post("/predict/text", json={"text": text}).json(), expected_prediction(bundle, "text", text=text))
        combined = client.post("/predict/combined", files=multipart(image=photo, text=text)).json()
        assert_prediction(combined, expected_prediction(bundle, "combined", photo, text))
        found = client.post("/recommend", files=multipart(image=photo, text=text, k="4"))
    assert bundle.index is not None
    assert_results(found, exact_search(bundle.index, expected_vector(bundle, photo, text), 4))


def test_endpoints_whose_predictor_the_bundle_lacks_are_404(bundle: Bundle) -> None:
    """Only the text predictor (all four models still there): the other endpoints are 404."""
    text_only = attrs.evolve(bundle, predictors={"text": bundle.predictors["text"]}, index=None)
    with TestClient(create_app(text_only)) as client:
        response = client.post("/predict/text", json={"text": TEXT})
        assert response.status_code == 200, response.text
        assert_prediction(response.json(), expected_prediction(bundle, "text", text=TEXT))
        image = client.post("/predict/image", files=multipart(image=photo_bytes(1)))
        assert_error(image, 404, None, "the bundle has no image model (it has: text)")
        combined = client.post("/predict/combined", files=multipart(image=photo_bytes(1), text="a kettle"))
        assert_error(combined, 404, None, "the bundle has no combined model (it has: text)")
        assert_error(client.post("/recommend", json={"product_id": "p1"}), 404, None, "no search index")
        assert_error(client.post("/recommend", json={"text": "kettle"}), 404, None, "no search index")
        assert client.get("/health").json() == {
            "ready": True, "models": ["text"], "classes": 3, "bundle_format": "fbml.bundle/2", "indexed_products": None, "photos": False,
        }


def test_a_bundle_without_an_index_serves_predictions_but_not_recommendations(bundle: Bundle) -> None:
    with TestClient(create_app(attrs.evolve(bundle, index=None))) as client:
        assert client.post("/predict/image", files=multipart(image=photo_bytes(2))).status_code == 200
        assert_error(client.post("/recommend", files=multipart(text="kettle")), 404, None, "no search index")
        assert client.get("/health").json()["models"] == ["combined", "image", "text"]


def test_uploads_are_never_written_to_disk(client: TestClient, bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("an upload went to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr("litestar.datastructures.upload_file.SpooledTemporaryFile", refuse)
    photo = photo_bytes(5, size=(820, 820), format="PNG")
    assert len(photo) > 2**20  # past the 1 MiB where Litestar's own uploads spill to a file
    response = client.post("/predict/image", files=multipart(image=photo))
    assert_prediction(response.json(), expected_prediction(bundle, "image", image=photo))


# --- bounded photo decoding ----------------------------------------------------------------------


def flat_photo(size: tuple[int, int], format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 60)).save(buffer, format)
    return buffer.getvalue()


def test_a_large_jpeg_decodes_at_a_reduced_scale_as_training_photos_did(client: TestClient, bundle: Bundle) -> None:
    """3000 x 2400 pixels is over the app's 1,000,000, but a JPEG decodes at 1/8 (375 x 300): accepted,
    and prepared exactly as ``fbml.vision`` prepares training photos."""
    photo = photo_bytes(11, size=(3000, 2400))
    response = client.post("/predict/image", files=multipart(image=photo))
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), expected_prediction(bundle, "image", image=photo))
    png = flat_photo((3000, 2400), "PNG")
    assert_error(client.post("/predict/image", files=multipart(image=png)), 422, "image", "more than 1000000 pixels to decode (3000 x 2400)")


def test_a_decode_past_its_time_budget_is_stopped_and_refused(bundle: Bundle) -> None:
    """A PNG that decodes whole (7000 x 7000, flat: 160 KB) is stopped at its next read past the budget."""
    photo = flat_photo((7000, 7000), "PNG")
    generous = PhotoLimits(max_pixels=10**8, decode_seconds=60.0)
    started = time.perf_counter()
    prepared(photo, bundle.image, generous)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    with pytest.raises(InputError, match="image: took more than 0.01 s to decode") as refused:
        prepared(photo, bundle.image, PhotoLimits(max_pixels=10**8, decode_seconds=0.01))
    assert time.perf_counter() - started < whole / 3
    assert refused.value.source == "image"


def test_photos_decode_on_decode_workers_threads_that_end_with_the_app(bundle: Bundle) -> None:
    """``decode_workers`` threads decode at once; the app's lifespan shuts them (and inference) down."""
    before = set(threading.enumerate())
    photos = [photo_bytes(60 + seed, size=(900, 700), format="PNG") for seed in range(6)]
    with TestClient(create_app(bundle, decode_workers=3)) as client, ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda photo: client.post("/predict/image", files=multipart(image=photo)), photos))
        started = [thread for thread in set(threading.enumerate()) - before if thread.name.startswith("fbml-")]
    assert [answer.status_code for answer in answers] == [200] * 6
    assert len([thread for thread in started if thread.name.startswith("fbml-decode")]) == 3
    assert len([thread for thread in started if thread.name.startswith("fbml-inference")]) == 1
    assert not any(thread.is_alive() for thread in started)


def test_refusals_are_fbml_errors() -> None:
    assert issubclass(ApiError, FbmlError)


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

PHOTO_MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF"}
SCHEMA_EXAMPLES = 40  # generated cases per operation, beside its coverage cases (about 300 in all)


@pytest.fixture(scope="module")
def api_schema(bundle: Bundle) -> Iterator[schemathesis.BaseSchema]:
    """The schema the app serves, bound to an app of its own (called in-process, no network). A photo
    part must be one of the media types its encoding names, so schemathesis draws real photos of
    those types for it (registered for this module only)."""
    with pytest.MonkeyPatch.context() as patch:
        for media_type, format in PHOTO_MEDIA_TYPES.items():
            patch.setitem(MEDIA_TYPE_STRATEGIES, media_type, photo_files(format, max_side=90, max_pixels=90 * 90))
        yield schemathesis.openapi.from_asgi("/schema/openapi.json", app_over(bundle))


@pytest.fixture(scope="module")
def api_document(client: TestClient) -> dict:
    return client.get("/schema/openapi.json").json()


@pytest.fixture
def node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's pytest loader reads ``Node._nodeid``, which pytest 9 no longer has."""
    request.node._nodeid = request.node.nodeid


served_schema = schemathesis.pytest.from_fixture("api_schema")


@served_schema.parametrize()
@settings(max_examples=SCHEMA_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_honours_its_openapi_schema(case: schemathesis.Case, api_document: dict, node_id: None) -> None:
    """Every check schemathesis has, on its example, coverage and fuzzing cases, positive and negative."""
    response = case.call()
    case.validate_response(response, checks=CHECKS.get_all(), excluded_checks=wrong_label_checks(case, response, api_document))


def wrong_label_checks(case: schemathesis.Case, response: Any, document: dict) -> list[Any]:
    """The check that a multipart case's label would misapply, when schemathesis labels it wrongly.

    Schemathesis judges whether a form body fits its schema as the server receives it (every field as
    text), but cannot once a part holds a photo's bytes: it then calls negative a body that fits
    (``True`` sent as the text "True" beside a photo), and its coverage phase calls positive a body
    whose required text it left empty. Such a case is judged here instead (``fits_as_sent``)."""
    operation = document["paths"].get(case.path, {}).get(case.method.lower())
    if case.media_type != MULTIPART or operation is None:
        return []
    fits = fits_as_sent(operation["requestBody"]["content"][MULTIPART]["schema"], sent_parts(response.request))
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    if negative == fits:
        return [negative_data_rejection if fits else positive_data_acceptance]
    return []


def fits_as_sent(schema: dict, parts: dict[str, bytes] | None) -> bool:
    """Whether multipart ``parts`` fit ``schema``, each read as its text or that text read as JSON; a
    photo part stands as one character when it has a byte (all its schema asks)."""
    if parts is None:
        return False
    readings = [
        [(name, "x"[: len(value)])] if schema["properties"].get(name, {}).get("format") == "binary"
        else [(name, reading) for reading in form_readings(value.decode("utf-8", "replace"))]
        for name, value in parts.items()
    ]  # fmt: skip
    validator = jsonschema.Draft202012Validator(schema)
    return any(validator.is_valid(dict(choice)) for choice in itertools.product(*readings))


def sent_parts(request: Any) -> dict[str, bytes] | None:
    """The parts of the multipart body ``request`` sent, by name (None when it is not multipart)."""
    from multipart import MultipartError, MultipartSegment, PushMultipartParser

    _, _, boundary = request.headers.get("content-type", "").partition("boundary=")
    parts: dict[str, bytes] = {}
    try:
        with PushMultipartParser(boundary) as parser:
            for event in [*parser.parse(request.body or b""), *parser.parse(b"")]:
                if isinstance(event, MultipartSegment):
                    name = event.name
                    parts[name] = b""
                elif event is not None:
                    parts[name] += event
    except MultipartError:
        return None
    return parts


def form_readings(text: str) -> list[object]:
    try:
        return [text, json.loads(text)]
    except ValueError:
        return [text]


def test_the_pattern_of_listing_texts_is_what_the_api_reads(bundle: Bundle) -> None:
    """The schema's pattern for a listing text holds exactly where normalisation leaves a letter or digit."""
    rules = TextRules(MAX_TEXT)

    @settings(max_examples=300, deadline=None)
    @given(text=st.text(max_size=12) | st.sampled_from(["é", "ｋ", "①", "ﬁ", "\u0301", "\u200b", "\x00", "Ⅻ", "²", "中文"]))
    def agrees(text: str) -> None:
        readable = re.search(readable_pattern(), text) is not None
        try:
            rules.check(text, "text")
        except ApiError as error:
            assert not readable and error.status_code == 422, (text, error.detail)
        else:
            assert readable, text

    agrees()


def test_the_schema_documents_every_endpoint_and_body(client: TestClient) -> None:
    paths = client.get("/schema/openapi.json").json()["paths"]
    assert set(paths) == {"/health", "/health/live", "/health/ready", "/metrics", *POST_PATHS}
    assert {"200", "503"} <= set(paths["/health/ready"]["get"]["responses"])
    for path in POST_PATHS:
        assert "X-Model-Version" in paths[path]["post"]["responses"]["200"]["headers"]
    assert set(paths["/predict/text"]["post"]["requestBody"]["content"]) == {
        "application/json", "application/x-www-form-urlencoded", "multipart/form-data",
    }
    image = paths["/predict/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert image["properties"]["image"]["format"] == "binary"
    assert image["required"] == ["image"]
    assert {"200", "404", "413", "415", "422"} <= set(paths["/recommend"]["post"]["responses"])


# --- the catalogue's photos (GET /photos/{id}) --------------------------------------------------------


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cleaned photo folder: ``photo-N.jpg`` of the photographed products, but photo-3 a link leading out of
    the folder, photo-4 a link to photo-0 inside it, photo-5 missing; ``stray.jpg``, no catalogue photo."""
    root = tmp_path_factory.mktemp("photos")
    folder = root / "cleaned"
    folder.mkdir()
    (root / "secret.jpg").write_bytes(photo_bytes(999))
    for product in range(PHOTOGRAPHED):
        if product not in (3, 4, 5):
            (folder / f"{photo_id(product)}.jpg").write_bytes(photo_bytes(300 + product))
    (folder / f"{photo_id(3)}.jpg").symlink_to(root / "secret.jpg")
    (folder / f"{photo_id(4)}.jpg").symlink_to(folder / f"{photo_id(0)}.jpg")
    (folder / "stray.jpg").write_bytes(photo_bytes(998))
    return folder


@pytest.fixture(scope="module")
def photo_client(bundle: Bundle, photo_dir: Path) -> Iterator[TestClient]:
    app = create_app(attrs.evolve(bundle, model_version=MODEL_VERSION), photo_dir=photo_dir)
    with TestClient(app) as client:
        yield client


def test_a_catalogue_photo_is_served_with_cache_headers(photo_client: TestClient, photo_dir: Path) -> None:
    response = photo_client.get(f"/photos/{photo_id(0)}")
    assert response.status_code == 200
    assert response.content == (photo_dir / f"{photo_id(0)}.jpg").read_bytes()
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["cache-control"] == "public, max-age=86400"
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    for named in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        unchanged = photo_client.get(f"/photos/{photo_id(0)}", headers={"if-none-match": named})
        assert (unchanged.status_code, unchanged.content, unchanged.headers["etag"]) == (304, b"", etag), named
    assert photo_client.get(f"/photos/{photo_id(0)}", headers={"if-none-match": '"other"'}).status_code == 200
    assert photo_client.get(f"/photos/{photo_id(1)}").headers["etag"] != etag
    linked = photo_client.get(f"/photos/{photo_id(4)}")  # a link to a photo inside the folder
    assert linked.status_code == 200 and linked.content == response.content
    assert photo_client.get("/health").json()["photos"] is True


@pytest.mark.parametrize("path", [
    "/photos/stray",  # in the folder, not in the catalogue
    f"/photos/{photo_id(3)}",  # a link out of the folder
    f"/photos/{photo_id(5)}",  # in the catalogue, not in the folder
    f"/photos/{photo_id(0)}.jpg",
    "/photos/..%2Fsecret", "/photos/%2E%2E%2Fsecret", "/photos/..", "/photos/%2Fetc%2Fpasswd", "/photos/photo%2D0%00",
    "/photos/cleaned%2F..%2Fsecret", "/photos/" + "a" * 129, "/photos/photo 0", "/photos/", "/photos/../secret.jpg",
])
def test_unknown_or_traversing_photo_ids_are_404_in_the_apis_shape(bundle: Bundle, photo_dir: Path, path: str) -> None:
    """Sent as written (http.client neither decodes nor normalises the path)."""
    import http.client

    app = create_app(attrs.evolve(bundle, model_version=MODEL_VERSION), photo_dir=photo_dir)
    with serving(app) as base:
        host, port = base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", path.replace(" ", "%20"))
        answer = connection.getresponse()
        body = json.loads(answer.read())
        connection.close()
    assert answer.status == 404 and answer.getheader("content-type") == "application/json"
    assert body["status_code"] == 404 and set(body) <= {"status_code", "detail", "field"}


def test_without_a_photo_folder_there_is_no_photo_route(client: TestClient) -> None:
    assert_error(client.get(f"/photos/{photo_id(0)}"), 404)
    assert not any(path.startswith("/photos") for path in client.get("/schema/openapi.json").json()["paths"])


def test_the_photo_route_is_documented_when_served(photo_client: TestClient) -> None:
    operation = photo_client.get("/schema/openapi.json").json()["paths"]["/photos/{photo_id}"]["get"]
    assert set(operation["responses"]) >= {"200", "304", "404"}


def test_photos_are_read_off_the_event_loop(photo_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from fbml.serving import photos

    loops: list[bool] = []

    def reading(folder: Path, photo: str) -> photos.Photo | None:
        try:
            asyncio.get_running_loop()
            loops.append(True)
        except RuntimeError:
            loops.append(False)
        return read_photo(folder, photo)

    read_photo = photos.read_photo
    monkeypatch.setattr(photos, "read_photo", reading)
    assert photo_client.get(f"/photos/{photo_id(1)}").status_code == 200
    assert loops == [False]


def test_a_missing_photo_folder_is_refused_when_the_app_is_built(bundle: Bundle, tmp_path: Path) -> None:
    with pytest.raises(FbmlError, match=r"^--photos .*none: no such folder$"):
        create_app(bundle, photo_dir=tmp_path / "none")


def test_recommendations_carry_the_listings_category_paths_and_photo_ids(client: TestClient) -> None:
    results = client.post("/recommend", json={"product_id": "p0", "k": CATALOGUE_SIZE - 1}).json()["results"]
    by_id = {item["id"]: item for item in results}
    assert by_id["p1"]["photos"] == [photo_id(1)] and by_id["p10"]["photos"] == []
    assert by_id["p4"]["category_path"] == "Books > kind 0"
