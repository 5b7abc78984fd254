"""The same cleaning on a Ray cluster: Ray Data ``map_batches`` over Arrow batches, polars inside each.

The driver reads the raw CSV with polars' streaming engine (the parser of the default engine: records end
at ``\\n`` only, where Arrow's CSV reader would also end them at a bare ``\\r``), puts each batch in the
cluster's object store and lets the workers clean them (``cleaned_batch``). The cleaned batches come back
in row order, and the steps that look across batches (duplicate ids, the photo join, the contracts'
checks) run as for the default engine (``write_cleaned``), so both write the same tables.

Ray is imported only here, only when this engine runs: it is the optional extra ``fbml[ray]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import polars as pl

from fbml.errors import FbmlError, one_line
from fbml.tables.clean import CleanCounts
from fbml.tables.cleaning import cleaned_batch
from fbml.tables.streaming import RawTables, write_cleaned

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]  # no stubs; ray[data] brings it


def ray_clean_tables(raw: RawTables, out: Path, *, address: str | None = None) -> CleanCounts:
    """Clean the raw tables into ``out`` on Ray: the cluster at ``address`` (``ray://host:10001``, ``auto``),
    the one already connected, or else a local one started (and stopped) for the run."""
    with ray_cluster(address):
        return write_cleaned(raw, ray_cleaned_batches(raw), out)


@contextlib.contextmanager
def ray_cluster(address: str | None, *, num_cpus: int | None = None) -> Iterator[Any]:
    """The ``ray`` module, connected: to the cluster at ``address`` (``ray://host:10001``, ``auto``), the one
    already connected, or else a local one of ``num_cpus`` CPUs (default: all) started, and stopped after."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        _connect(ray, address, None if address else num_cpus)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def ray_cleaned_batches(raw: RawTables) -> Iterator[pl.DataFrame]:
    """The raw products cleaned batch by batch on the connected Ray cluster, in row order."""
    ray = _ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    blocks = [ray.put(batch.to_arrow()) for batch in raw.product_batches()]
    if not blocks:
        return
    cleaned = ray.data.from_arrow_refs(blocks).map_batches(clean_arrow_batch, batch_format="pyarrow", batch_size=None)
    for batch in cleaned.iter_batches(batch_format="pyarrow", batch_size=None):
        yield cast(pl.DataFrame, pl.from_arrow(batch))


def clean_arrow_batch(batch: pa.Table) -> pa.Table:
    """One Arrow batch of numbered raw rows, cleaned by polars (``cleaned_batch``)."""
    return cleaned_batch(cast(pl.DataFrame, pl.from_arrow(batch))).to_arrow()


def _connect(ray: Any, address: str | None, num_cpus: int | None) -> None:
    try:
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as error:
        where = f"connect to the Ray cluster at {address}" if address else "start a local Ray cluster"
        raise FbmlError(f"cannot {where}: {one_line(str(error))}") from None


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise FbmlError("--engine ray needs Ray: install fbml[ray]") from None
    return ray
