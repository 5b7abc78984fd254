"""Devices: resolving a spec (and refusing what the machine lacks), moving every batch kind, mixed
precision, forked RNGs and loader settings; on CUDA (when there is one) a batch moves and two steps train."""

from __future__ import annotations

import types
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from fbml.errors import FbmlError
from fbml.modeling import devices
from fbml.modeling.datasets import ImageBatch, ProductBatch, TextBatch
from fbml.modeling.devices import (
    LoaderSettings,
    Precision,
    autocast,
    grad_scaler,
    loader_settings,
    precision,
    resolve_device,
    seeded_rng,
    to_device,
)
from fbml.modeling.features import FeatureBatch, FeatureDataset, FeatureProductBatch
from fbml.modeling.models import ModelOutput
from fbml.modeling.randomness import Dropout
from fbml.modeling.training import CHECKPOINT, TrainConfig, TrainData, fit, predict
from torch import Tensor, nn

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available())")


# --- resolve_device ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["cpu", " CPU ", CPU])
def test_cpu(spec: str | torch.device) -> None:
    assert resolve_device(spec) == CPU


def test_auto_is_the_best_device_this_machine_has() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """This machine as one with ``count`` CUDA devices (resolving touches no device)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize(("cuda", "mps", "expected"), [(2, True, "cuda:0"), (0, True, "mps:0"), (0, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, cuda: int, mps: bool, expected: str) -> None:
    fake_cuda(monkeypatch, cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == torch.device(expected)


def test_cuda_with_an_index(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, 2)
    assert resolve_device("cuda") == torch.device("cuda", 0)  # the current device, with its index
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(FbmlError, match=r"^device cuda:2 is not available: this machine has 2 CUDA devices \(cuda:0, cuda:1\)$"):
        resolve_device("cuda:2")
    fake_cuda(monkeypatch, 1)
    with pytest.raises(FbmlError, match=r"^device cuda:1 is not available: this machine has 1 CUDA device \(cuda:0\)$"):
        resolve_device("cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_on_a_machine_without_it(spec: str) -> None:
    with pytest.raises(FbmlError, match=rf"^device {spec} is not available: torch.cuda.is_available\(\) is False"):
        resolve_device(spec)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_on_a_machine_without_it() -> None:
    with pytest.raises(FbmlError, match=r"^device mps is not available: torch.backends.mps.is_available\(\) is False"):
        resolve_device("mps")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "cuda:", "", "cpu:0", "auto:1", "cuda0", "meta"])
def test_malformed_specs(spec: str) -> None:
    with pytest.raises(FbmlError, match=r"is not a device: use auto, cpu, cuda, cuda:N or mps$"):
        resolve_device(spec)


# --- mixed precision ---------------------------------------------------------------------------------


def test_no_mixed_precision_on_cpu_and_mps() -> None:
    for device in (CPU, torch.device("mps", 0)):
        assert precision(device) == Precision(None)
        assert not precision(device).scales_loss
    left, right = torch.ones(4, 4), torch.ones(4, 4)
    with autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")
        assert (left @ right).dtype == torch.float32
    assert not grad_scaler(CPU).is_enabled()


@pytest.mark.parametrize(("major", "dtype", "scales"), [(9, torch.bfloat16, False), (8, torch.bfloat16, False),
                                                         (7, torch.float16, True)])
def test_cuda_precision_follows_the_compute_capability(
    monkeypatch: pytest.MonkeyPatch, major: int, dtype: torch.dtype, scales: bool
) -> None:
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(major=major))
    chosen = precision(torch.device("cuda", 0))
    assert chosen.dtype == dtype and chosen.scales_loss is scales


# --- moving batches ----------------------------------------------------------------------------------


def every_batch_kind() -> list[object]:
    images, tokens, features = torch.zeros(2, 3, 4, 4), torch.ones(2, 5, dtype=torch.int64), torch.zeros(2, 6)
    labels, rows = torch.tensor([0, 1]), torch.tensor([3, 4])
    return [
        ImageBatch(images, labels, rows), TextBatch(tokens, labels, rows), ProductBatch(images, tokens, labels, rows),
        FeatureBatch(features, labels, rows), FeatureProductBatch(features, tokens, labels, rows),
    ]


@pytest.mark.parametrize("batch", every_batch_kind(), ids=lambda batch: type(batch).__name__)
def test_to_device_moves_every_tensor_field(batch: object) -> None:
    meta = torch.device("meta")
    moved = to_device(batch, meta)
    assert type(moved) is type(batch)
    for name, value in attrs.asdict(moved, recurse=False).items():
        original = getattr(batch, name)
        assert value.device == meta, name
        assert (value.dtype, value.shape) == (original.dtype, original.shape), name
        assert original.device == CPU, name  # the batch itself is unchanged
    assert all(tensor.device == meta for tensor in moved.inputs)


def test_to_device_leaves_other_fields_alone() -> None:
    @attrs.frozen
    class Tagged:
        values: Tensor
        tag: str
        _private: Tensor

    moved = to_device(Tagged(torch.zeros(2), "kept", torch.ones(1)), torch.device("meta"))
    assert moved.tag == "kept"
    assert moved.values.device.type == moved._private.device.type == "meta"


# --- loaders and RNGs --------------------------------------------------------------------------------


def test_loader_settings() -> None:
    assert loader_settings(CPU, 0) == LoaderSettings(num_workers=0, pin_memory=False, persistent_workers=False)
    assert loader_settings(CPU, 3) == LoaderSettings(num_workers=3, pin_memory=False, persistent_workers=True)
    assert loader_settings(torch.device("cuda", 0), 2) == LoaderSettings(2, pin_memory=True, persistent_workers=True)
    assert not loader_settings(torch.device("mps", 0), 0).pin_memory


def test_seeded_rng_is_deterministic_and_gives_the_callers_state_back() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded_rng(CPU, 5):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    with seeded_rng(CPU, 5):
        again = torch.rand(4)
    with seeded_rng(CPU, 6):
        other = torch.rand(4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    after_forks = torch.rand(4)
    torch.manual_seed(123)
    assert torch.equal(after_forks, torch.rand(4))  # the caller's sequence goes on as if nothing ran


# --- on CUDA -----------------------------------------------------------------------------------------


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 3)
        self.dropout = Dropout(0.1)

    def forward(self, features: Tensor) -> ModelOutput:
        embedding = self.dropout(features)
        return ModelOutput(self.layer(embedding), embedding)


def feature_data(count: int = 32) -> TrainData:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, count)
    features = (np.eye(3, 6)[labels] * 3 + rng.normal(0, 1, (count, 6))).astype(np.float32)
    dataset = FeatureDataset(features, labels, np.arange(count))
    return TrainData(dataset, dataset)


@needs_cuda
def test_a_pinned_batch_moves_to_cuda() -> None:
    from fbml.modeling.devices import Loaded

    cuda = resolve_device("cuda")
    for batch in every_batch_kind():
        pinned = Loaded(batch).pin_memory().batch
        assert all(value.is_pinned() for value in attrs.asdict(pinned, recurse=False).values())
        moved = to_device(pinned, cuda)
        assert all(value.device == cuda for value in attrs.asdict(moved, recurse=False).values())


@needs_cuda
@pytest.mark.parametrize("half", [False, True], ids=["autocast", "float16-scaled"])
def test_two_training_steps_on_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, half: bool) -> None:
    if half:
        float16 = lambda device: Precision(torch.float16 if device.type == "cuda" else None)  # noqa: E731
        monkeypatch.setattr(devices, "precision", float16)
    torch.manual_seed(0)
    model = Linear()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    data = feature_data(32)
    config = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-2)  # 32 examples: two steps
    history = fit(model, data, config, device="cuda", checkpoint_dir=tmp_path, progress=False)
    assert len(history.epochs) == 1 and np.isfinite(history.epochs[0].train_loss)
    assert all(value.device == CPU for value in model.state_dict().values())  # back on the CPU
    assert any(not torch.equal(before[name], value) for name, value in model.state_dict().items())
    checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    cpu_only = [value.device == CPU for value in _tensors(checkpoint)]
    assert cpu_only and all(cpu_only)
    assert bool(checkpoint["loss_scaling"]) is half
    # the CUDA checkpoint resumes on the CPU
    resumed = fit(Linear(), data, TrainConfig(epochs=2, batch_size=16, learning_rate=1e-2), checkpoint_dir=tmp_path,
                  resume=True, progress=False)
    assert [metrics.epoch for metrics in resumed.epochs] == [1, 2]
    on_cuda = predict(model, data.validation, device="cuda")
    on_cpu = predict(model, data.validation)
    assert on_cuda.probabilities.dtype == np.float32
    np.testing.assert_allclose(on_cuda.probabilities, on_cpu.probabilities, atol=2e-2)


@needs_cuda
def test_training_on_cuda_draws_from_its_own_generators(tmp_path: Path) -> None:
    """Dropout on CUDA draws from fit's CUDA generator: torch's global CPU and CUDA generators stay where they were,
    the same seed gives the same weights, a checkpoint keeps both generators' states, and a run resumed on CUDA
    ends with the uninterrupted run's weights."""
    data = feature_data(64)
    config = TrainConfig(epochs=3, batch_size=16, learning_rate=1e-2, seed=4)
    torch.manual_seed(0)
    start = Linear().state_dict()

    def trained(config: TrainConfig, **options: object) -> dict[str, Tensor]:
        model = Linear()
        model.load_state_dict(start)
        fit(model, data, config, device="cuda", progress=False, **options)
        return model.state_dict()

    states = torch.get_rng_state(), torch.cuda.get_rng_state()
    whole = trained(config)
    assert torch.equal(torch.get_rng_state(), states[0]) and torch.equal(torch.cuda.get_rng_state(), states[1])
    assert all(torch.equal(value, trained(config)[name]) for name, value in whole.items())
    other = trained(attrs.evolve(config, seed=5))
    assert any(not torch.equal(value, other[name]) for name, value in whole.items())
    trained(attrs.evolve(config, epochs=1), checkpoint_dir=tmp_path)
    assert set(torch.load(tmp_path / CHECKPOINT, weights_only=True)["rng"]) == {"cpu", "cuda"}
    resumed = trained(config, checkpoint_dir=tmp_path, resume=True)
    assert all(torch.equal(value, resumed[name]) for name, value in whole.items())


def _tensors(value: object) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in _tensors(item)]
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors(item)]
    return []
