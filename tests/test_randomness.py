"""Training's randomness: ``Dropout`` draws from the generator it is lent (else it is torch's), lending gives the
parts' own generators back, torch's dropout modules are refused, generator states round-trip, and loader workers
augment each from its own reproducible generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fbml.errors import FbmlError
from fbml.modeling import training
from fbml.modeling.datasets import ImageDataset, train_transform
from fbml.modeling.devices import loader_settings
from fbml.modeling.models import EmbeddingHead, text_model
from fbml.modeling.randomness import (
    Drawing,
    Dropout,
    data_parts,
    lent,
    model_parts,
    training_generators,
)
from torch import nn

CPU = torch.device("cpu")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_dropout_without_a_generator_is_torchs() -> None:
    features = torch.ones(4, 50)
    ours, torchs = Dropout(0.3), nn.Dropout(0.3)
    torch.manual_seed(3)
    dropped = ours(features)
    torch.manual_seed(3)
    assert torch.equal(dropped, torchs(features))


def test_dropout_draws_from_the_generator_it_is_lent() -> None:
    features = torch.ones(200, 50)
    dropout = Dropout(0.3)
    state = torch.get_rng_state()
    with lent(generator(1), [dropout]):
        first = dropout(features)
    with lent(generator(1), [dropout]):
        again = dropout(features)
    with lent(generator(2), [dropout]):
        other = dropout(features)
    assert torch.equal(torch.get_rng_state(), state), "torch's global generator was drawn from"
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]  # the kept ones scaled as torch's are
    assert float((first == 0).float().mean()) == pytest.approx(0.3, abs=0.02)
    assert dropout.generator is None  # given back


def test_dropout_is_the_identity_in_eval_and_zero_at_p_1() -> None:
    features = torch.randn(8, 5, requires_grad=True)
    evaluating = Dropout(0.5).eval()
    with lent(generator(0), [evaluating]):
        assert torch.equal(evaluating(features), features)
    everything = Dropout(1.0)
    with lent(generator(0), [everything]):
        output = everything(features)
        output.sum().backward()
    assert torch.equal(output, torch.zeros_like(output))
    assert features.grad is not None and torch.equal(features.grad, torch.zeros_like(features))


def test_lending_gives_each_parts_own_generator_back() -> None:
    owned, free = Dropout(0.1), Dropout(0.1)
    own = generator(9)
    owned.generator = own
    with lent(generator(0), [owned, free]):
        assert owned.generator is free.generator is not own
    assert owned.generator is own and free.generator is None


def test_the_models_dropout_keeps_nn_dropouts_state_dict() -> None:
    """A bundle saved when the heads used ``nn.Dropout`` loads into the heads as they are now."""
    head = EmbeddingHead(6, 4, 3, 0.2)
    old = EmbeddingHead(6, 4, 3, 0.2)
    old.embed[0], old.classify[0] = nn.Dropout(0.2), nn.Dropout(0.2)
    assert list(head.state_dict()) == list(old.state_dict())
    head.load_state_dict(old.state_dict())
    assert [type(module) for module in head.modules() if isinstance(module, nn.Dropout)] == [Dropout, Dropout]


def test_model_parts_are_its_drawing_modules_and_torchs_dropout_is_refused() -> None:
    model = text_model(np.ones((5, 3), np.float32), 2, embedding_dim=4, channels=2)
    parts = model_parts(model)
    assert parts[0] is model and len(parts) == 3  # the word dropout and the head's two dropouts
    assert all(isinstance(part, Drawing) for part in parts)
    model.head.embed[0] = nn.Dropout(0.2)
    with pytest.raises(FbmlError, match=r"the model's head\.embed\.0 module is torch's Dropout.*fbml\.modeling\.randomness\.Dropout"):
        model_parts(model)


def test_data_parts_are_those_of_the_datasets_transform() -> None:
    pixels = np.zeros((2, 3, 8, 8), np.uint8)
    augmented = ImageDataset(pixels, [0, 1], [0, 1], train_transform(4))
    assert [type(part).__name__ for part in data_parts(augmented)] == ["Augmentation"]
    assert data_parts(ImageDataset(pixels, [0, 1], [0, 1], lambda image: image.float())) == []
    assert data_parts(object()) == []


def test_generator_states_round_trip_and_ignore_another_devices() -> None:
    generators = training_generators(CPU, 4)
    assert generators.device is generators.cpu  # one generator on the CPU
    state = generators.state()
    assert set(state) == {"cpu"}
    drawn = torch.rand(3, generator=generators.cpu)
    generators.restore({**state, "cuda": torch.zeros(16, dtype=torch.uint8)})
    assert torch.equal(torch.rand(3, generator=generators.cpu), drawn)
    assert torch.equal(torch.rand(3, generator=training_generators(CPU, 4).cpu), drawn)  # seeded by the seed


def augmented_images(seed: int, workers: int) -> list[torch.Tensor]:
    """Eight augmented copies of one photo, one per batch, through training's loader with ``workers`` workers
    (seeded by ``seed``) while the training generator is lent to the transform, as ``fit`` lends it."""
    photo = np.random.default_rng(0).integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    dataset = ImageDataset(np.repeat(photo, 8, axis=0), np.zeros(8), np.arange(8), train_transform(12))
    loader = training._loader(dataset, 1, loader_settings(CPU, workers), seed=seed)
    with lent(generator(seed), data_parts(dataset)):
        return [loaded.batch.images[0] for loaded in loader]


def test_loader_workers_augment_differently_and_reproducibly() -> None:
    """Two workers take alternate items: each augments from its own generator (never copies of one), seeded from
    the loader's seed."""
    images = augmented_images(seed=5, workers=2)
    assert all(not torch.equal(images[index], images[index + 1]) for index in range(0, 8, 2))  # worker 0 vs worker 1
    assert len({image.sum().item() for image in images}) == 8
    again = augmented_images(seed=5, workers=2)
    assert all(torch.equal(left, right) for left, right in zip(images, again, strict=True))
    other = augmented_images(seed=6, workers=2)
    assert any(not torch.equal(left, right) for left, right in zip(images, other, strict=True))


def test_the_training_process_augments_from_the_lent_generator() -> None:
    state = torch.get_rng_state()
    images = augmented_images(seed=5, workers=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(left, right) for left, right in zip(images, augmented_images(seed=5, workers=0), strict=True))
    assert len({image.sum().item() for image in images}) == 8
