"""Listing vectors' recipe (fbml.bundle.listings): the part weights and the probability power, and the recipe as an
index's report records it (untrusted on load)."""

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
    recipe = ListingRecipe(ListingWeights(2.0, 1.0, 0.5, 0.0), power=1.0)
    assert ListingRecipe.from_report(json.loads(json.dumps(recipe.to_json()))) == recipe


def test_an_index_built_before_powers_keeps_its_square_roots() -> None:
    legacy = ListingRecipe.from_report({"weights": {"text": 1.0, "image": 1.0, "classes": 2.0}})
    assert legacy == ListingRecipe(ListingWeights(1.0, 1.0, 2.0), power=0.5)


@pytest.mark.parametrize("power", [2.0, "1.0", True, None, 1])
def test_a_reports_unusable_power_is_refused(power: object) -> None:
    report = {"weights": {"text": 1.0, "image": 1.0, "classes": 2.0}, "probability_power": power}
    with pytest.raises(FbmlError, match="probability power"):
        ListingRecipe.from_report(report)
