"""The bundle's prediction path as a caller's ``import fbml`` uses it (``Bundle.predict``, ``predict_many``,
``probabilities``, ``embed``, ``similar``), over the small bundle of ``test_app`` (random networks, a linear
text model, three predictors as ensembles, an index): the answers equal the models run by hand and the
HTTP API's; every kind of photo input gives the same answer; bad input is an ``InputError`` naming the field."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import attrs
import fbml
import numpy as np
import pytest
import torch
from contracts.bundle import ModelKind, Role
from fbml.bundle.bundle import Bundle, BundleModel
from fbml.errors import InputError
from fbml.modeling.linear_text import LinearTextModel
from fbml.serving.app import create_app
from fbml.vision.photos import PhotoLimits
from litestar.testing import TestClient
from PIL import Image

from test_app import (
    CATALOGUE_SIZE,
    CATEGORIES,
    INDEX_RECIPE,
    MAX_PIXELS,
    catalogue_photo,
    direct,
    exact_search,
    expected_prediction,
    expected_vector,
    indexed,
    models_bundle,
    multipart,
    photo_bytes,
    probability_row,
    product_text,
)

LIMITS = PhotoLimits(MAX_PIXELS)
MESSY = "Crème brûlée ﬁne “red” kettle\u00a0\u00a0for a café 🚲\r\n"


@pytest.fixture(scope="module")
def bundle(one_torch_thread: None) -> Bundle:
    return indexed(models_bundle())


def assert_probabilities(got: fbml.Prediction, expected: np.ndarray) -> None:
    np.testing.assert_allclose(probability_row(got.probabilities), expected, rtol=0, atol=1e-5)
    assert got.category == CATEGORIES[int(np.argmax(expected))]


def test_the_public_api_is_exported_from_fbml() -> None:
    assert fbml.load_bundle is fbml.bundle.store.load_bundle
    for name in ("Bundle", "Prediction", "Similar", "InputError", "listing_text", "Role", "ModelKind", "PhotoLimits"):
        assert name in fbml.__all__ and getattr(fbml, name) is not None
    assert "predict" not in fbml.__all__ and "Predictor" not in fbml.__all__  # training's predict and the ensemble holder


def test_predict_text_image_and_both_use_the_predictor_reading_what_is_given(bundle: Bundle) -> None:
    photo = photo_bytes(3)
    text = bundle.predict(text=MESSY)
    assert (text.role, text.model_version) == (Role.TEXT, "unversioned")
    assert_probabilities(text, expected_prediction(bundle, "text", text=MESSY))
    assert_probabilities(bundle.predict(image=photo), expected_prediction(bundle, "image", image=photo))
    both = bundle.predict(text=MESSY, image=photo)
    assert both.role is Role.COMBINED
    assert_probabilities(both, expected_prediction(bundle, "combined", photo, MESSY))


def test_a_prediction_is_frozen_and_ranks_its_top_categories(bundle: Bundle) -> None:
    prediction = bundle.predict(text="red kettle")
    ranked = prediction.top(3)
    assert [category for category, _ in ranked] == sorted(CATEGORIES, key=lambda name: -prediction.probabilities[name])
    assert ranked[0] == (prediction.category, prediction.probabilities[prediction.category])
    assert len(prediction.top()) == len(CATEGORIES) and sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        prediction.category = "Books"  # type: ignore[misc]
    with pytest.raises(TypeError):
        prediction.probabilities["Books"] = 1.0  # type: ignore[index]
    with pytest.raises(InputError, match="k: must be at least 1"):
        prediction.top(0)


def test_a_photo_as_bytes_a_file_a_pil_image_or_pixels_gets_the_same_answer(bundle: Bundle, tmp_path: Path) -> None:
    photo = photo_bytes(9, size=(64, 40))
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo)
    with Image.open(io.BytesIO(photo)) as decoded:
        decoded.draft("RGB", (32, 1))  # as the bytes are decoded: at the smallest scale keeping the side
        pixels = np.asarray(decoded.convert("RGB"))
        image = decoded.copy()
    expected = bundle.predict(image=photo).probabilities
    for given in (bytearray(photo), path, image, pixels):
        np.testing.assert_allclose(probability_row(bundle.predict(image=given).probabilities), probability_row(expected),
                                   rtol=0, atol=1e-5, err_msg=type(given).__name__)  # fmt: skip


def test_predict_many_equals_predict_one_by_one_whatever_the_batch_size(bundle: Bundle) -> None:
    texts = [MESSY, "novel story", "bike for a doll", "small red toaster", "ｋｅｔｔｌｅ ①"]
    photos = [photo_bytes(20 + seed) for seed in range(len(texts))]
    one_by_one = [bundle.predict(text=text, image=photo) for text, photo in zip(texts, photos, strict=True)]
    for batch_size in (1, 2, 32):
        many = bundle.predict_many(texts=texts, images=photos, batch_size=batch_size)
        for got, alone in zip(many, one_by_one, strict=True):
            np.testing.assert_allclose(probability_row(got.probabilities), probability_row(alone.probabilities), rtol=0, atol=1e-5)
    assert [got.role for got in bundle.predict_many(texts=texts)] == [Role.TEXT] * len(texts)


def test_probabilities_scores_predictors_and_models_each_model_once(bundle: Bundle) -> None:
    texts, photos = ["novel story", "red lamp"], [photo_bytes(30), photo_bytes(31)]
    names = [Role.COMBINED, Role.IMAGE, ModelKind.COMBINED_NN, ModelKind.TEXT_LINEAR]
    found = bundle.probabilities(names, texts=texts, images=photos)
    for row, (text, photo) in enumerate(zip(texts, photos, strict=True)):
        np.testing.assert_allclose(found[Role.COMBINED][row], expected_prediction(bundle, "combined", photo, text), rtol=0, atol=1e-5)
        np.testing.assert_allclose(found[Role.IMAGE][row], expected_prediction(bundle, "image", image=photo), rtol=0, atol=1e-5)
        np.testing.assert_allclose(found[ModelKind.COMBINED_NN][row], direct(bundle, "combined-nn", photo, text)[0], rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="reads text"):
        bundle.probabilities([Role.TEXT], images=photos)


def test_the_linear_text_model_reads_raw_text_as_the_api_does(bundle: Bundle) -> None:
    linear = bundle.model(ModelKind.TEXT_LINEAR)
    assert isinstance(linear, LinearTextModel)
    served = attrs.evolve(bundle, predictors={"text": attrs.evolve(bundle.predictor("text"),
                                                                    ensemble=fbml.Ensemble(((ModelKind.TEXT_LINEAR, 1.0),), (0.0,) * 3))})
    with TestClient(create_app(attrs.evolve(served, index=None))) as client:
        answer = client.post("/predict/text", json={"text": MESSY}).json()
    np.testing.assert_allclose(linear.predict_proba([MESSY])[0], probability_row(answer["probabilities"]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(linear.predict_proba([MESSY]), linear.predict_proba(["Creme brulee fine red kettle for a cafe"]),
                               rtol=0, atol=1e-6)  # fmt: skip


def test_the_library_and_the_http_api_give_the_same_answers(bundle: Bundle) -> None:
    texts = [MESSY, "‘Quoted’ ﬂower vase — £5", "bike\u00a0for\u2003a doll", "novel 📚 story"]
    photos = [photo_bytes(40 + seed) for seed in range(len(texts))]
    with TestClient(create_app(bundle)) as client:
        for text, photo in zip(texts, photos, strict=True):
            answers = {
                Role.TEXT: (client.post("/predict/text", json={"text": text}), bundle.predict(text=text)),
                Role.IMAGE: (client.post("/predict/image", files=multipart(image=photo)), bundle.predict(image=photo)),
                Role.COMBINED: (client.post("/predict/combined", files=multipart(image=photo, text=text)),
                                bundle.predict(text=text, image=photo)),
            }
            for role, (response, library) in answers.items():
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["category"] == library.category, role
                np.testing.assert_allclose(probability_row(body["probabilities"]), probability_row(library.probabilities),
                                           rtol=0, atol=1e-5)  # fmt: skip
            similar = bundle.similar(text=text, image=photo, k=4)
            served = client.post("/recommend", files=multipart(image=photo, text=text, k="4")).json()["results"]
            assert [item["id"] for item in served] == [item.id for item in similar]


def test_bad_input_is_an_input_error_naming_the_field(bundle: Bundle) -> None:
    cases = [
        (lambda: bundle.predict(), "text: give"),
        (lambda: bundle.predict(text=" \u200b "), "text: is empty"),
        (lambda: bundle.predict(image=b"GIF89a not really"), "image: is not an image"),
        (lambda: bundle.predict(image=Path("/no/such/photo.jpg")), "image: cannot read"),
        (lambda: bundle.predict(image=np.zeros((4, 4), np.float32)), "image: pixels must be uint8"),
        (lambda: bundle.predict(image="photo.jpg"), "image: is a str, not a photo"),  # type: ignore[arg-type]
        (lambda: bundle.predict(text="red", role="image"), "text: the image predictor reads no text"),
        (lambda: bundle.predict(text="red", role="sound"), "role: unknown predictor 'sound'"),
        (lambda: bundle.predict_many(texts="red kettle"), "texts: must be a list of texts"),
        (lambda: bundle.predict_many(texts=["red", "kettle", ""]), r"texts\[2\]: is empty"),
        (lambda: bundle.predict_many(images=[photo_bytes(1), photo_bytes(2), b"%PDF"]), r"images\[2\]: is not an image"),
        (lambda: bundle.predict_many(texts=["red"], images=[photo_bytes(1), photo_bytes(2)]), "images: 2 photos for 1 texts"),
        (lambda: bundle.predict(image=photo_bytes(1, size=(1200, 1000), format="PNG"), limits=PhotoLimits(max_pixels=1000)),
         "image: has more than 1000 pixels"),
        (lambda: bundle.similar(k=3), "query: give one of"),
        (lambda: bundle.similar(product_id="p1", text="red", k=3), "query: give one of"),
        (lambda: bundle.similar(text="red", k=0), "k: must be a whole number"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message):
            call()


def test_a_bundle_without_a_predictor_says_so(bundle: Bundle) -> None:
    text_only = attrs.evolve(bundle, predictors={"text": bundle.predictor("text")}, index=None)
    with pytest.raises(InputError, match="role: the bundle has no image predictor"):
        text_only.predict(image=photo_bytes(1))
    with pytest.raises(fbml.FbmlError, match="no search index"):
        text_only.similar(text="red", k=2)


def test_the_listing_vector_of_a_query_is_its_index_vector(bundle: Bundle) -> None:
    """Index weights all non-zero (text, photo and classes all count; the bundle predicts no subcategory): a
    catalogue listing's text and photo, embedded as a query, give the vector the index holds for it."""
    assert bundle.subcategories is None and min(INDEX_RECIPE.weights.text, INDEX_RECIPE.weights.image, INDEX_RECIPE.weights.classes) > 0
    index = bundle.search_index()
    for product in range(CATALOGUE_SIZE):
        photo = catalogue_photo(product)
        vector = bundle.embed(text=product_text(product), image=photo, limits=LIMITS)
        np.testing.assert_allclose(vector, index.vectors[index.row(f"p{product}")], rtol=0, atol=1e-5)
        np.testing.assert_allclose(vector, expected_vector(bundle, photo, product_text(product)), rtol=0, atol=1e-5)


def test_embed_many_averages_a_listings_photos(bundle: Bundle) -> None:
    photos = [photo_bytes(50), photo_bytes(51)]
    both = bundle.embed_many(texts=["red doll"], images=[photos])[0]
    single = [bundle.embed(text="red doll", image=photo) for photo in photos]
    assert not np.allclose(both, single[0], atol=1e-4) and not np.allclose(both, single[1], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(both), 1.0, rtol=0, atol=1e-5)
    mixed = bundle.embed_many(texts=["red doll", None, "novel"], images=[photos[:1], photos[1:], []])
    np.testing.assert_allclose(mixed[0], single[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed[1], bundle.embed(image=photos[1]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed[2], bundle.embed(text="novel"), rtol=0, atol=1e-5)
    with pytest.raises(InputError, match=r"texts\[0\]: a listing needs its text, a photo or both"):
        bundle.embed_many(texts=[None], images=[[]])


def test_similar_by_product_text_photo_or_vector(bundle: Bundle) -> None:
    index = bundle.search_index()
    by_id = bundle.similar(product_id="p3", k=4)
    expected = exact_search(index, index.vectors[index.row("p3")].astype(np.float64), 4, exclude=index.row("p3"))
    assert [(item.id, round(item.score, 5)) for item in by_id] == [(name, round(score, 5)) for name, score in expected]
    row = index.listing(index.row(by_id[0].id))
    assert (by_id[0].name, by_id[0].category, by_id[0].price) == (row["product_name"], row["category"], row["price"])
    assert (by_id[0].category_path, by_id[0].photos) == (row["category_path"], tuple(row["photos"]))
    query = bundle.embed(text="novel about a red bike", image=photo_bytes(21))
    by_listing = bundle.similar(text="novel about a red bike", image=photo_bytes(21), k=5)
    assert [item.id for item in by_listing] == [item.id for item in bundle.similar(vector=query, k=5)]
    assert [item.id for item in by_listing] == [name for name, _ in exact_search(index, query.astype(np.float64), 5)]


def test_a_freshly_trained_bundle_serves_eval_mode_networks(bundle: Bundle) -> None:
    """Networks handed over in training mode (dropout on, as ``fit`` leaves a model it trains) are served in
    eval mode: the same text answers the same, as the networks run by hand in eval mode do."""
    fresh = Bundle(bundle.codec, bundle.image, bundle.text)
    for kind, entry in bundle.models.items():
        module = copy.deepcopy(entry.module)
        if isinstance(module, torch.nn.Module):
            for layer in module.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = 0.5
            module.train()
        fresh = fresh.with_model(BundleModel(kind, module, entry.options))
    for role, predictor in bundle.predictors.items():
        fresh = fresh.with_predictor(role, predictor)
    assert all(not entry.module.training for entry in fresh.models.values() if isinstance(entry.module, torch.nn.Module))
    with TestClient(create_app(fresh)) as client:
        answers = [client.post("/predict/text", json={"text": "red kettle novel"}).json() for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]
    assert_probabilities(fresh.predict(text="red kettle novel"), expected_prediction(bundle, "text", text="red kettle novel"))
