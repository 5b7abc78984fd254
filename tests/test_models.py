"""Model factories: shapes, the frozen/trainable split, local and ImageNet weights, padding, combined heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fbml.errors import FbmlError
from fbml.models import (
    RESNET_STAGES,
    CombinedClassifier,
    ImageClassifier,
    ModelOutput,
    TextClassifier,
    combined_model,
    image_model,
    text_model,
)

CLASSES = 5
VOCABULARY = 40
WORD_DIM = 12


def word_matrix(seed: int = 0) -> np.ndarray:
    """A word2vec-like matrix: row 0 (``<pad>``) zeros, as ``embedding_matrix`` makes it."""
    matrix = np.random.default_rng(seed).normal(0.0, 0.5, (VOCABULARY, WORD_DIM)).astype(np.float32)
    matrix[0] = 0.0
    return matrix


def small_text_model(num_classes: int = CLASSES, **options) -> TextClassifier:
    torch.manual_seed(0)
    return text_model(word_matrix(), num_classes, embedding_dim=16, channels=8, **options)


def images(batch: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def token_ids(batch: int = 3, length: int = 10, seed: int = 0) -> torch.Tensor:
    """Right-padded ids: row i has ``length - 2 * i`` real tokens (ids 2.. are words)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, VOCABULARY, (batch, length), generator=generator)
    for row in range(batch):
        tokens[row, length - 2 * row :] = 0
    return tokens


@pytest.fixture(scope="module")
def resnet_state() -> dict[str, torch.Tensor]:
    """A ResNet-50 state dict with non-default values everywhere (so a load is visible)."""
    from torchvision.models import resnet50

    torch.manual_seed(123)
    network = resnet50()
    with torch.no_grad():
        for name, buffer in network.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
    return {name: value.clone() for name, value in network.state_dict().items()}


# --- shapes -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_image() -> ImageClassifier:
    """One image model (two trainable stages, 8-wide embedding) for the tests that only read it."""
    torch.manual_seed(1)
    return image_model(CLASSES, trainable_stages=2, embedding_dim=8).eval()


def test_image_model_shapes(shared_image: ImageClassifier) -> None:
    with torch.inference_mode():
        output = shared_image.eval()(images(batch=3, size=32))
    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (3, CLASSES)
    assert output.embedding.shape == (3, 8)
    assert shared_image.embedding_dim == 8


def test_image_model_features_path_equals_full_forward(shared_image: ImageClassifier) -> None:
    batch = images(batch=2, size=48)
    with torch.inference_mode():
        whole = shared_image.eval()(batch)
        features = shared_image.frozen_features(batch)
        split = shared_image.forward_features(features)
    assert features.shape[1] == 512  # after the stem and layer1, layer2 is the first trainable stage
    torch.testing.assert_close(whole.logits, split.logits, rtol=0, atol=0)
    torch.testing.assert_close(whole.embedding, split.embedding, rtol=0, atol=0)


def test_text_model_shapes() -> None:
    model = small_text_model().eval()
    with torch.inference_mode():
        output = model(token_ids(batch=4, length=10))
    assert output.logits.shape == (4, CLASSES)
    assert output.embedding.shape == (4, 16)
    assert model.embedding_dim == 16
    matrix = word_matrix()
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)  # the pad row stays zero
    torch.testing.assert_close(model.embedding.weight, torch.from_numpy(unit))
    raw = small_text_model(normalise_embeddings=False)
    torch.testing.assert_close(raw.embedding.weight, torch.from_numpy(word_matrix()))


def test_text_model_handles_all_padding_and_short_texts() -> None:
    model = small_text_model().eval()
    tokens = torch.zeros(2, 6, dtype=torch.int64)
    tokens[1, 0] = 5  # a single word: shorter than every kernel
    with torch.inference_mode():
        output = model(tokens)
    assert torch.isfinite(output.logits).all() and torch.isfinite(output.embedding).all()


def test_combined_model_shapes(shared_image: ImageClassifier) -> None:
    model = combined_model(shared_image, small_text_model(), CLASSES).eval()
    with torch.inference_mode():
        output = model(images(batch=2), token_ids(batch=2))
        cached = model.forward_features(model.image.frozen_features(images(batch=2)), token_ids(batch=2))
    assert output.logits.shape == (2, CLASSES)
    assert output.embedding.shape == (2, 8 + 16)
    assert model.embedding_dim == 24
    torch.testing.assert_close(output.logits, cached.logits, rtol=0, atol=0)


# --- frozen and trainable stages ---------------------------------------------------------------------


@pytest.mark.parametrize("trainable_stages", [0, 4])
def test_frozen_stages_do_not_require_grad(trainable_stages: int) -> None:
    model = image_model(CLASSES, trainable_stages=trainable_stages)
    frozen_stages = RESNET_STAGES[: len(RESNET_STAGES) - trainable_stages]
    assert all(not parameter.requires_grad for parameter in model.frozen.parameters())
    assert all(parameter.requires_grad for parameter in model.trainable.parameters())
    assert all(parameter.requires_grad for parameter in model.head.parameters())
    # the frozen part is the stem and exactly the first 4 - trainable_stages stages
    assert len(model.frozen) == 4 + len(frozen_stages)
    assert sum(1 for module in model.trainable if isinstance(module, nn.Sequential)) == trainable_stages


@pytest.mark.parametrize("trainable_stages", [-1, 5])
def test_trainable_stages_out_of_bounds(trainable_stages: int) -> None:
    with pytest.raises(FbmlError, match="trainable_stages must be between 0 and 4"):
        image_model(CLASSES, trainable_stages=trainable_stages)


def test_frozen_stages_stay_in_eval_mode_and_unchanged_by_a_training_step() -> None:
    torch.manual_seed(0)
    model = image_model(CLASSES, trainable_stages=1, embedding_dim=8)
    model.train()
    assert model.training and model.trainable.training and model.head.training
    assert not model.frozen.training
    assert all(not module.training for module in model.frozen.modules())
    before = {name: value.clone() for name, value in model.state_dict().items()}

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(images(batch=4)).logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()

    after = model.state_dict()
    frozen_names = [name for name in before if name.startswith("frozen.")]
    trainable_names = [name for name in before if not name.startswith("frozen.")]
    assert any(name.endswith("running_mean") for name in frozen_names)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # nothing frozen moved: weights nor batch-norm statistics
    assert not changed & set(frozen_names)
    assert all(parameter.grad is None for parameter in model.frozen.parameters())
    # the trainable stage's weights and batch-norm statistics and the head did move
    assert "trainable.0.0.conv1.weight" in changed
    assert "trainable.0.0.bn1.running_mean" in changed
    assert "head.classify.1.weight" in changed
    assert len(changed) > len(trainable_names) // 2
    # eval() and train() again keep the frozen part in eval mode
    model.eval()
    model.train(True)
    assert not model.frozen.training


def test_frozen_stages_stay_in_eval_mode_inside_a_combined_model(shared_image: ImageClassifier) -> None:
    model = combined_model(shared_image, small_text_model(), CLASSES)
    try:
        model.train()
        assert model.image.training and model.text.training
        assert not model.image.frozen.training
        assert all(not module.training for module in model.image.frozen.modules())
    finally:
        shared_image.eval()


# --- weights -----------------------------------------------------------------------------------------


def assert_loaded(model: ImageClassifier, state: dict[str, torch.Tensor], trainable_stages: int) -> None:
    """Every backbone tensor of ``model`` equals ``state``'s (ResNet names mapped to frozen/trainable)."""
    network_names = ["conv1", "bn1", "relu", "maxpool", *RESNET_STAGES]
    cut = len(RESNET_STAGES) - trainable_stages
    owner = {name: ("frozen", index) for index, name in enumerate(network_names[: 4 + cut])}
    owner |= {name: ("trainable", index) for index, name in enumerate(network_names[4 + cut :])}
    mine = model.state_dict()
    compared = 0
    for name, value in state.items():
        top, _, rest = name.partition(".")
        if top == "fc":
            continue  # the new head replaces the ImageNet classifier
        part, index = owner[top]
        torch.testing.assert_close(mine[f"{part}.{index}.{rest}"], value, rtol=0, atol=0)
        compared += 1
    assert compared == len(state) - 2


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_round_trip(resnet_state, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"resnet50{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({name: value.contiguous() for name, value in resnet_state.items()}, path)
    else:
        torch.save(resnet_state, path)
    stages = 1 if suffix == ".pth" else 3
    model = image_model(CLASSES, weights=path if suffix == ".pth" else str(path), trainable_stages=stages)
    assert_loaded(model, resnet_state, trainable_stages=stages)
    assert all(not parameter.requires_grad for parameter in model.frozen.parameters())


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FbmlError, match="no such weights file"):
        image_model(CLASSES, weights=tmp_path / "absent.pt")


def test_weights_of_another_network(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pt"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(FbmlError, match=r"resnet18\.pt: does not fit ResNet-50"):
        image_model(CLASSES, weights=path)


def test_weights_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file at all")
    with pytest.raises(FbmlError, match="garbage.pt: not a ResNet-50 state dict"):
        image_model(CLASSES, weights=garbage)


def test_weights_file_holding_something_else(tmp_path: Path) -> None:
    """A loadable torch file that is not a mapping (a bare tensor) is refused as clearly."""
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(FbmlError, match="tensor.pt"):
        image_model(CLASSES, weights=tensor)


def test_safetensors_file_that_is_not_safetensors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(FbmlError, match="broken.safetensors"):
        image_model(CLASSES, weights=broken)


def test_imagenet_weights_use_torchvisions_weights_api(resnet_state, monkeypatch: pytest.MonkeyPatch) -> None:
    """No download: torchvision's loader is replaced, but the enum, meta and load path are real."""
    import torchvision.models._api as api
    from torchvision.models import ResNet50_Weights

    requested = []

    def fake_load_state_dict_from_url(url: str, *args, **kwargs):
        requested.append(url)
        return {name: value.clone() for name, value in resnet_state.items()}

    monkeypatch.setattr(api, "load_state_dict_from_url", fake_load_state_dict_from_url)
    model = image_model(CLASSES, weights="imagenet", trainable_stages=2)
    assert requested == [ResNet50_Weights.IMAGENET1K_V2.url]
    assert_loaded(model, resnet_state, trainable_stages=2)
    assert model.head.classify[-1].out_features == CLASSES


# --- text: padding -----------------------------------------------------------------------------------


def test_text_model_ignores_padding() -> None:
    model = small_text_model().eval()
    tokens = token_ids(batch=3, length=10)
    longer = torch.cat([tokens, torch.zeros(3, 7, dtype=torch.int64)], dim=1)
    with torch.inference_mode():
        short, padded = model(tokens), model(longer)
    torch.testing.assert_close(padded.logits, short.logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(padded.embedding, short.embedding, rtol=1e-6, atol=1e-6)
    # a batch-mate's length does not matter either: each row alone gives the same output
    with torch.inference_mode():
        for row in range(3):
            length = int((tokens[row] != 0).sum())
            alone = model(tokens[row : row + 1, :length])
            torch.testing.assert_close(alone.logits, short.logits[row : row + 1], rtol=1e-5, atol=1e-6)


def test_text_model_ignores_padding_whatever_the_pad_vector() -> None:
    matrix = word_matrix()
    matrix[0] = 1.0
    torch.manual_seed(0)
    model = text_model(matrix, CLASSES, embedding_dim=16, channels=8).eval()
    full = torch.randint(2, VOCABULARY, (2, 10), generator=torch.Generator().manual_seed(3))  # no padding at all
    padded = torch.cat([full, torch.zeros(2, 4, dtype=torch.int64)], dim=1)
    with torch.inference_mode():
        torch.testing.assert_close(model(padded).logits, model(full).logits, rtol=1e-6, atol=1e-6)


def test_text_model_does_read_the_words() -> None:
    """The padding test is not vacuous: changing a real token changes the output."""
    model = small_text_model().eval()
    tokens = token_ids(batch=1, length=10)
    changed = tokens.clone()
    changed[0, 0] = 2 if int(tokens[0, 0]) != 2 else 3
    with torch.inference_mode():
        assert not torch.allclose(model(tokens).logits, model(changed).logits)


def test_padding_row_stays_zero_under_training() -> None:
    model = small_text_model()
    start = model.embedding.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(token_ids()).logits, torch.tensor([0, 1, 2])).backward()
        optimizer.step()
    assert torch.count_nonzero(model.embedding.weight[0]) == 0
    assert not torch.equal(model.embedding.weight[2:], start[2:])


def test_frozen_embeddings() -> None:
    model = small_text_model(freeze_embeddings=True)
    assert not model.embedding.weight.requires_grad
    assert all(parameter.requires_grad for parameter in model.convolutions.parameters())


# --- combined ----------------------------------------------------------------------------------------


def test_combined_from_branch_heads_sums_the_branch_logits(shared_image: ImageClassifier) -> None:
    image, text = shared_image, small_text_model()
    model = combined_model(image, text, CLASSES, from_branch_heads=True).eval()
    batch, tokens = images(batch=3), token_ids(batch=3)
    with torch.inference_mode():
        combined = model(batch, tokens).logits
        expected = image.eval()(batch).logits + text.eval()(tokens).logits
    torch.testing.assert_close(combined, expected, rtol=1e-5, atol=1e-5)


def test_combined_from_branch_heads_without_the_image_starts_as_the_text_model(shared_image: ImageClassifier) -> None:
    image, text = shared_image, small_text_model()
    model = combined_model(image, text, CLASSES, from_branch_heads=True, image_weight=0.0).eval()
    with torch.inference_mode():
        combined = model(images(batch=3), token_ids(batch=3)).logits
        expected = text.eval()(token_ids(batch=3)).logits
    torch.testing.assert_close(combined, expected, rtol=1e-5, atol=1e-5)


def test_combined_without_branch_heads_is_a_fresh_layer(shared_image: ImageClassifier) -> None:
    image, text = shared_image, small_text_model()
    model = combined_model(image, text, CLASSES).eval()
    batch, tokens = images(batch=3), token_ids(batch=3)
    with torch.inference_mode():
        assert not torch.allclose(model(batch, tokens).logits, image.eval()(batch).logits + text.eval()(tokens).logits)


def test_combined_from_branch_heads_needs_matching_class_counts() -> None:
    image = image_model(CLASSES + 1, embedding_dim=8)
    with pytest.raises(FbmlError, match="class counts differ"):
        combined_model(image, small_text_model(), CLASSES, from_branch_heads=True)


def test_factories_return_their_classes(shared_image: ImageClassifier) -> None:
    image, text = shared_image, small_text_model()
    assert isinstance(image, ImageClassifier)
    assert isinstance(text, TextClassifier)
    assert isinstance(combined_model(image, text, CLASSES), CombinedClassifier)


# --- text: word dropout and position weights ------------------------------------------------------------


def test_word_dropout_acts_in_training_only() -> None:
    model = small_text_model(dropout=0.0, word_dropout=0.5)
    tokens = token_ids(batch=3, length=10)
    torch.manual_seed(0)
    first, second = model(tokens).logits, model(tokens).logits
    assert not torch.allclose(first, second)
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens).logits, model(tokens).logits)
    steady = small_text_model(dropout=0.0, word_dropout=0.0)
    torch.testing.assert_close(steady(tokens).logits, steady(tokens).logits)


def test_text_model_reads_sequences_longer_than_its_position_weights() -> None:
    model = small_text_model(positions=4).eval()
    with torch.inference_mode():
        output = model(token_ids(batch=2, length=12))
    assert output.logits.shape == (2, CLASSES)
    assert torch.isfinite(output.logits).all()


def test_position_weights_change_what_the_text_model_reads() -> None:
    model = small_text_model(positions=8).eval()
    tokens = token_ids(batch=2, length=8)
    with torch.inference_mode():
        before = model(tokens).logits
        model.position_weights[0] = 5.0  # the first word counts e^5 times more in the mean
        after = model(tokens).logits
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("options", [{"word_dropout": 1.0}, {"word_dropout": -0.1}, {"positions": -1}])
def test_text_model_options_out_of_bounds(options: dict) -> None:
    with pytest.raises(FbmlError):
        small_text_model(**options)


# --- image: the head copes with any feature scale ----------------------------------------------------------


def test_image_head_learns_from_features_of_any_scale(shared_image: ImageClassifier) -> None:
    """A random ResNet's pooled features run to the hundreds: the head still learns from them."""
    from fbml.models import RESNET_FEATURES

    torch.manual_seed(0)
    head = image_model(CLASSES, trainable_stages=0, embedding_dim=8).head
    labels = torch.arange(64) % CLASSES
    directions = torch.randn(CLASSES, RESNET_FEATURES)
    features = 300.0 + 100.0 * (directions[labels] + 0.5 * torch.randn(64, RESNET_FEATURES)).abs()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(features).logits, labels).backward()
        optimizer.step()
    with torch.inference_mode():
        accuracy = (head.eval()(features).logits.argmax(dim=1) == labels).float().mean()
    assert accuracy > 0.9
