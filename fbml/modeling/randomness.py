"""Randomness in training: modules and transforms that draw from a generator they are lent, never torch's global one.

A ``Drawing`` module draws from its ``generator`` while it is lent one (``lent``) and from torch's global generator
otherwise, as torch's own modules do. ``fit`` makes ``TrainingGenerators`` (seeded from its seed) and lends the
training device's to the model's ``Drawing`` modules and the CPU's to those of the training data's transform, for its
duration; a loader worker's copy of the transform draws from a generator of the worker's own seed (``seed_worker``).
``Dropout`` is ``nn.Dropout`` so drawn (no parameters: a state dict the same as ``nn.Dropout``'s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import attrs
import torch
from torch import Tensor, nn
from torch.utils.data import get_worker_info

from fbml.errors import FbmlError

GLOBAL_DRAWERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
"""torch's modules that draw from its global generator in training (``fit`` refuses a model with one)."""


class Drawing:
    """A part of a model or a transform that draws random numbers: from ``generator`` while it is lent one, else
    from torch's global generator."""

    generator: torch.Generator | None = None


class Dropout(nn.Dropout, Drawing):
    """``nn.Dropout`` (never in place) whose masks come from the generator it is lent, if any."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, features: Tensor) -> Tensor:
        if self.generator is None or not self.training:
            return super().forward(features)
        kept = torch.rand(features.shape, generator=self.generator, device=features.device) >= self.p
        return features * kept * (1.0 / (1.0 - self.p) if self.p < 1 else 0.0)


def model_parts(model: nn.Module) -> list[Drawing]:
    """``model``'s ``Drawing`` modules; ``FbmlError`` naming a module of torch that would draw from its global
    generator (use ``fbml.modeling.randomness.Dropout``)."""
    for name, module in model.named_modules():
        if isinstance(module, GLOBAL_DRAWERS) and not isinstance(module, Drawing):
            raise FbmlError(f"the model's {name or 'top'} module is torch's {type(module).__name__}, which draws from "
                            "torch's global generator: use fbml.modeling.randomness.Dropout")
    return _drawing_modules(model)


def data_parts(dataset: object) -> list[Drawing]:
    """The ``Drawing`` modules of ``dataset``'s ``transform`` (none where it has no transform, or one that is not a
    module)."""
    return _drawing_modules(getattr(dataset, "transform", None))


def _drawing_modules(part: object) -> list[Drawing]:
    return [module for module in part.modules() if isinstance(module, Drawing)] if isinstance(part, nn.Module) else []


@contextlib.contextmanager
def lent(generator: torch.Generator, parts: Iterable[Drawing]) -> Iterator[None]:
    """The block with ``generator`` lent to every one of ``parts``; their own generators (usually none) back after."""
    drawers = list(parts)
    own = [part.generator for part in drawers]
    for part in drawers:
        part.generator = generator
    try:
        yield
    finally:
        for part, generator_before in zip(drawers, own, strict=True):
            part.generator = generator_before


@attrs.frozen(eq=False)
class TrainingGenerators:
    """One training's generators: the CPU's (the training data's transform in this process) and the training
    device's (the model's draws: dropout; the same generator as the CPU's when training on the CPU)."""

    cpu: torch.Generator
    device: torch.Generator

    def state(self) -> dict[str, Tensor]:
        """Each generator's state by device type, on the CPU (for checkpoints)."""
        return {"cpu": self.cpu.get_state(), self.device.device.type: self.device.get_state()}

    def restore(self, state: dict[str, Tensor]) -> None:
        """Restore ``state``'s states; a state of another device type than the training device's is ignored."""
        self.cpu.set_state(state["cpu"])
        if self.device.device.type in state:
            self.device.set_state(state[self.device.device.type])

    @contextlib.contextmanager
    def lent_to(self, model: nn.Module, dataset: object) -> Iterator[None]:
        """The block with the device's generator lent to ``model``'s ``Drawing`` modules (``model_parts``) and the
        CPU's to those of ``dataset``'s transform (``data_parts``)."""
        with lent(self.device, model_parts(model)), lent(self.cpu, data_parts(dataset)):
            yield


def training_generators(device: torch.device, seed: int) -> TrainingGenerators:
    """Generators for training on ``device``, each seeded with ``seed``."""
    cpu = torch.Generator().manual_seed(seed)
    return TrainingGenerators(cpu, cpu if device.type == "cpu" else torch.Generator(device).manual_seed(seed))


def seed_worker(_worker_id: int) -> None:
    """A loader worker's ``worker_init_fn``: its copy of the dataset's transform draws from a generator of the
    worker's seed (the loader's generator's draw plus the worker's number: its own, and reproducible)."""
    info = get_worker_info()
    if info is None:
        raise FbmlError("seed_worker runs in a loader worker only")
    generator = torch.Generator().manual_seed(info.seed)
    for part in data_parts(info.dataset):
        part.generator = generator
