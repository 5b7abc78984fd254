"""Shared fixtures: the built-in sample marketplace and the optional real data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Wall-clock deadlines make property tests flaky on a busy 2-core machine; behaviour is what they check.
settings.register_profile("fbml", deadline=None)
settings.load_profile("fbml")

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "marketplace"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/marketplace``; the test is skipped when it is absent."""
    if not (REAL_DATA / "Products.csv").is_file():
        pytest.skip(f"real marketplace data not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory):
    """The default sample marketplace, written once per test session."""
    from fbml.sample.marketplace import write_sample

    return write_sample(tmp_path_factory.mktemp("sample"), products=650, seed=0)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch computes on one intra-op thread for the module, restored after: small tensors on a busy two-core
    machine run several times faster on one (the model kinds' fits ran about ten times slower on two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
