"""Listing vectors' recipe (fbml.bundle.listings): the probability power, the image prototypes that stand in for
a listing without photos, and the recipe as an index's report records it (untrusted on load)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fbml.bundle.listings import ListingParts, ListingRecipe, ListingWeights
from fbml.errors import FbmlError
from hypothesis import given, settings
from hypothesis import strategies as st

CLASSES, TEXT_DIM, IMAGE_DIM = 3, 4, 5


def parts(text: np.ndarray, image: np.ndarray, classes: np.ndarray) -> ListingParts:
    return ListingParts(np.asarray(text, np.float32), np.asarray(image, np.float32), np.asarray(classes, np.float32),
                        np.zeros((len(text), 0), np.float32))  # fmt: skip


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_a_listing_without_photos_is_no_nearer_to_a_text_query_than_its_photographed_twin() -> None:
    """Two listings of the same text and classes, one with a photo typical of its class and one without: a query by
    that text alone scores them alike once the missing photo is stood in for by the class's prototype; with an
    empty image part (no prototypes) the one without photos came out nearer."""
    rng = np.random.default_rng(0)
    text, typical = rng.normal(size=TEXT_DIM), unit(rng.normal(size=IMAGE_DIM))
    classes = np.array([1.0, 0.0, 0.0])
    catalogue = parts(np.stack([text, text]), np.stack([typical, np.zeros(IMAGE_DIM)]), np.stack([classes, classes]))
    query = parts(text[None], np.zeros((1, IMAGE_DIM)), classes[None])
    recipe = ListingRecipe(ListingWeights(1.0, 1.0, 1.0), power=1.0)
    prototyped = recipe.with_prototypes(catalogue)
    np.testing.assert_allclose(prototyped.image_prototypes[0], typical, atol=1e-6)
    with_photo, without = catalogue.vectors(prototyped) @ query.vectors(prototyped)[0]
    assert with_photo == pytest.approx(without, abs=1e-6)
    with_photo, without = catalogue.vectors(recipe) @ query.vectors(recipe)[0]
    assert without > with_photo + 0.1


def test_image_prototypes_are_probability_weighted_unit_means() -> None:
    image = np.array([[3.0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0], [0, 0, 0, 0, 0]])
    classes = np.array([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0, 1.0]])  # the third has no photo: it counts for none
    prototypes = parts(np.ones((3, TEXT_DIM)), image, classes).image_prototypes()
    np.testing.assert_allclose(prototypes, [[2 / np.sqrt(5), 1 / np.sqrt(5), 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=CLASSES, max_size=CLASSES), st.lists(st.floats(0.01, 1.0), min_size=CLASSES, max_size=CLASSES))
def test_at_power_one_the_class_parts_dot_product_is_the_chance_of_one_class(first: list[float], second: list[float]) -> None:
    """With the class part alone, two listings' score is the chance that their predictions draw the same class,
    divided by their parts' lengths; at 0.5, the Bhattacharyya coefficient."""
    p, q = np.array(first) / sum(first), np.array(second) / sum(second)
    listings = parts(np.zeros((2, TEXT_DIM)), np.zeros((2, IMAGE_DIM)), np.stack([p, q]))
    for power, expected in ((1.0, p @ q / np.linalg.norm(p) / np.linalg.norm(q)), (0.5, np.sqrt(p) @ np.sqrt(q))):
        vectors = listings.vectors(ListingRecipe(ListingWeights(0.0, 0.0, 1.0), power=power))
        assert float(vectors[0] @ vectors[1]) == pytest.approx(expected, abs=1e-5)


def test_the_recipe_round_trips_through_a_reports_json() -> None:
    listings = parts(np.eye(2, TEXT_DIM), np.eye(2, IMAGE_DIM), np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    recipe = ListingRecipe(ListingWeights(2.0, 1.0, 0.5, 0.0), power=1.0).with_prototypes(listings)
    loaded = ListingRecipe.from_report(json.loads(json.dumps(recipe.to_json())), classes=CLASSES, image_dim=IMAGE_DIM)
    assert loaded == recipe
    assert loaded.image_prototypes is not None and recipe.image_prototypes is not None
    np.testing.assert_array_equal(loaded.image_prototypes, recipe.image_prototypes)
    np.testing.assert_array_equal(listings.vectors(loaded), listings.vectors(recipe))


def test_an_index_built_before_powers_and_prototypes_keeps_its_square_roots() -> None:
    legacy = ListingRecipe.from_report({"weights": {"text": 1.0, "image": 1.0, "classes": 2.0}}, classes=CLASSES, image_dim=IMAGE_DIM)
    assert (legacy.power, legacy.image_prototypes) == (0.5, None)


@pytest.mark.parametrize(("extra", "message"), [
    ({"probability_power": 2.0}, "probability power"),
    ({"probability_power": "1.0"}, "probability power"),
    ({"probability_power": True}, "probability power"),
    ({"image_prototypes": [[1.0] + [0.0] * (IMAGE_DIM - 1)] * (CLASSES - 1)}, f"{CLASSES} rows of {IMAGE_DIM} numbers"),
    ({"image_prototypes": [[1.0] + [0.0] * IMAGE_DIM] * CLASSES}, f"{CLASSES} rows of {IMAGE_DIM} numbers"),
    ({"image_prototypes": [[float("nan")] + [0.0] * (IMAGE_DIM - 1)] * CLASSES}, f"{CLASSES} rows of {IMAGE_DIM} numbers"),
    ({"image_prototypes": [["1"] + [0.0] * (IMAGE_DIM - 1)] * CLASSES}, f"{CLASSES} rows of {IMAGE_DIM} numbers"),
    ({"image_prototypes": "[[1.0]]"}, f"{CLASSES} rows of {IMAGE_DIM} numbers"),
    ({"image_prototypes": [[2.0] + [0.0] * (IMAGE_DIM - 1)] * CLASSES}, "unit length"),
])  # fmt: skip
def test_a_reports_unusable_recipe_is_refused(extra: dict[str, object], message: str) -> None:
    report = {"weights": {"text": 1.0, "image": 1.0, "classes": 2.0}, "probability_power": 1.0, **extra}
    with pytest.raises(FbmlError, match=message):
        ListingRecipe.from_report(report, classes=CLASSES, image_dim=IMAGE_DIM)
