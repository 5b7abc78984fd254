"""Devices: which one to train on, moving batches to it, its mixed precision, loader settings and a seeded fork of
torch's global generators (for building models, whose layers initialise from them).

Batches are frozen attrs classes whose tensor fields move together (``to_device``); they need no
methods of their own. Nothing here changes global state outside a ``with`` block.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import attrs
import torch
from torch import Tensor

from fbml.errors import FbmlError

SPECS = "auto, cpu, cuda, cuda:N or mps"
_SPEC = re.compile(r"(auto|cpu|cuda|mps)(?::(\d+))?")

BatchT = TypeVar("BatchT", bound=attrs.AttrsInstance)


def resolve_device(spec: str | torch.device) -> torch.device:
    """The device ``spec`` names, checked to exist: ``auto`` is CUDA, else MPS, else CPU.

    CUDA and MPS come back with their index (``cuda`` is the current CUDA device), as tensors report them.
    """
    text = str(spec).strip().lower()
    match = _SPEC.fullmatch(text)
    if match is None or (match[2] is not None and match[1] in ("auto", "cpu")):
        raise FbmlError(f"device {spec!s} is not a device: use {SPECS}")
    kind, index = match[1], None if match[2] is None else int(match[2])
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if kind == "cuda":
        return _cuda(text, index)
    if kind == "mps":
        return _mps(text, index)
    return torch.device("cpu")


def _cuda(text: str, index: int | None) -> torch.device:
    if not torch.cuda.is_available():
        raise FbmlError(
            f"device {text} is not available: torch.cuda.is_available() is False (no CUDA device or a CPU-only torch)"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        names = ", ".join(f"cuda:{number}" for number in range(count))
        raise FbmlError(
            f"device {text} is not available: this machine has {count} CUDA device{'s' * (count != 1)} ({names})"
        )
    return torch.device("cuda", torch.cuda.current_device() if index is None else index)


def _mps(text: str, index: int | None) -> torch.device:
    if not torch.backends.mps.is_available():
        raise FbmlError(
            f"device {text} is not available: torch.backends.mps.is_available() is False "
            "(no Apple-silicon GPU or a torch without MPS)"
        )
    if index not in (None, 0):
        raise FbmlError(f"device {text} is not available: this machine has 1 MPS device (mps:0)")
    return torch.device("mps", 0)


@attrs.frozen
class Precision:
    """How a device trains: ``dtype`` is autocast's (None: plain float32); float16 needs loss scaling."""

    dtype: torch.dtype | None = None

    @property
    def scales_loss(self) -> bool:
        return self.dtype == torch.float16


def precision(device: torch.device) -> Precision:
    """bfloat16 on CUDA devices that have it (compute capability 8+, or ROCm), float16 on older ones;
    float32 on CPU and MPS."""
    if device.type != "cuda":
        return Precision()
    bfloat16 = bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8
    return Precision(torch.bfloat16 if bfloat16 else torch.float16)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass on ``device`` (``precision``); a no-op where it is float32."""
    dtype = precision(device).dtype
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler, enabled only where autocast uses float16 (disabled, it passes everything through)."""
    return torch.amp.GradScaler(device.type, enabled=precision(device).scales_loss)


def map_tensors(batch: BatchT, change: Callable[[Tensor], Tensor]) -> BatchT:
    """A copy of the attrs instance ``batch`` with ``change`` applied to every tensor field."""
    changed = {
        field.alias: change(getattr(batch, field.name))
        for field in attrs.fields(type(batch))
        if field.init and isinstance(getattr(batch, field.name), Tensor)
    }
    # attrs.evolve keeps ``batch``'s class; mypy's attrs plugin cannot follow a type variable through it
    return attrs.evolve(batch, **changed)  # type: ignore[misc]


def to_device(batch: BatchT, device: torch.device) -> BatchT:
    """``batch`` with every tensor field on ``device``; pinned tensors are copied without blocking."""
    return map_tensors(batch, lambda tensor: tensor.to(device, non_blocking=_pinned(tensor)))


def _pinned(tensor: Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.is_pinned()


@attrs.frozen
class Loaded(Generic[BatchT]):
    """A batch as a ``DataLoader`` yields it: with ``pin_memory=True`` the loader calls ``pin_memory``."""

    batch: BatchT

    def pin_memory(self) -> Loaded[BatchT]:
        """Every tensor field in pinned memory."""
        return Loaded(map_tensors(self.batch, Tensor.pin_memory))


@attrs.frozen
class LoadingCollate(Generic[BatchT]):
    """A ``collate_fn`` wrapping ``collate``'s batches in ``Loaded`` (picklable, for worker processes)."""

    collate: Callable[[Sequence[Any]], BatchT]

    def __call__(self, items: Sequence[Any]) -> Loaded[BatchT]:
        return Loaded(self.collate(items))


@attrs.frozen
class LoaderSettings:
    """The ``DataLoader`` arguments that depend on the device and the worker count."""

    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False


def loader_settings(device: torch.device, num_workers: int) -> LoaderSettings:
    """Pinned memory only for CUDA; workers kept between epochs when there are any."""
    return LoaderSettings(num_workers, device.type == "cuda", num_workers > 0)


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Inside, torch's global RNGs of the CPU and ``device`` start from ``seed``; after, the caller's states are back.

    Only torch's generators for the CPU and ``device`` are forked (Python's and NumPy's are not touched). For building
    a model reproducibly: torch's layers initialise their weights from the global generator and take no other. It is
    a process-wide switch while it lasts (another thread drawing meanwhile changes what it builds): training never
    uses it (``fbml.modeling.randomness``).
    """
    accelerator = [device.index] if device.type in ("cuda", "mps") else []
    with torch.random.fork_rng(devices=accelerator, device_type=device.type if accelerator else "cpu"):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif device.type == "mps":
            torch.mps.manual_seed(seed)
        yield
