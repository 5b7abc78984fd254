"""Data-parallel training over several processes with ``torch.distributed`` (gloo on CPU, NCCL for CUDA tensors).

``World`` says where a process stands among the training processes: its rank, their count and its place on its
machine; ``World()`` is one process, for which every collective here returns at once and ``torch.distributed`` is
never touched. ``world_from_environment`` reads the variables torch's elastic launcher sets in each process it
starts (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), from a mapping its caller passes.
``process_group`` creates the default process group for a block and destroys it after (its rendezvous is
torch's ``env://``: ``MASTER_ADDR``/``MASTER_PORT`` or the launcher's store). ``launch`` runs a function in
several processes on this machine through that launcher, what ``torchrun`` runs.

Rank 0 alone writes; ``on_main``, ``main_first`` and ``held_by_main`` make the others wait for it, and when it
fails they stop with ``RankZeroError``, carrying rank 0's line, instead of waiting on a collective forever.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import torch
import torch.distributed as dist
from torch import Tensor, nn

from fbml.errors import FbmlError, one_line

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

T = TypeVar("T")

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
RANK_SEED_STRIDE = 1_000_003
"""Rank ``r`` seeds its dropout and augmentation with ``seed + r * RANK_SEED_STRIDE`` (rank 0: ``seed``)."""
WAIT = datetime.timedelta(hours=2)
"""The longest one process waits for the others at a collective (rank 0 building the photo and feature caches)."""
ERROR_FILE = "rank-{rank}.txt"
FOLLOWER_FILE = "rank-{rank}.followed"
_LAUNCHER_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing")
_LAUNCHER_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


@attrs.frozen
class World:
    """This process among the training processes: ``rank`` of ``size``, ``local_rank`` of ``local_size`` on its machine."""

    rank: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    size: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    local_rank: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    local_size: int = attrs.field(default=1, validator=attrs.validators.ge(1))

    def __attrs_post_init__(self) -> None:
        if self.rank >= self.size or self.local_rank >= self.local_size or self.local_size > self.size:
            raise ValueError(f"not a place among processes: {self}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs, caches and the bundle."""
        return self.rank == 0

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object), on every rank."""
        if self.size == 1:
            return value
        box: list[Any] = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return cast(T, box[0])

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return cast("list[T]", values)

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the ranks, in place (on its device); returned for chaining."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def share_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) copied into ``module`` on every rank."""
        if self.size > 1:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


class RankZeroError(FbmlError):
    """Raised on ranks other than 0 when rank 0 stopped (the message is rank 0's) or they lost it: rank 0
    reports the failure, these ranks exit without a word."""


class PeersLostError(FbmlError):
    """Raised on rank 0 when a collective failed because another process stopped (or the network to it did)."""


def world_from_environment(environment: Mapping[str, str]) -> World | None:
    """The ``World`` that a launcher's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``LOCAL_WORLD_SIZE``,
    default: all on one machine) describe; None when none of the three is set."""
    present = [name for name in RANK_VARIABLES if name in environment]
    if not present:
        return None
    missing = [name for name in RANK_VARIABLES if name not in environment]
    if missing:
        raise FbmlError(f"the environment sets {', '.join(present)} but not {', '.join(missing)}: "
                        "start the processes with torchrun (or fbml train --nproc)")
    try:
        rank, size, local_rank = (int(environment[name]) for name in RANK_VARIABLES)
        return World(rank, size, local_rank, int(environment.get("LOCAL_WORLD_SIZE", size)))
    except ValueError:
        shown = ", ".join(f"{name}={environment.get(name)!r}" for name in (*RANK_VARIABLES, "LOCAL_WORLD_SIZE"))
        raise FbmlError(f"the environment's process ranks are not a place among processes: {one_line(shown)}") from None


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device ``world``'s process trains on: with several processes, each CUDA one takes ``cuda:LOCAL_RANK``;
    CPU ones share the CPU; MPS trains in one process only."""
    if world.size == 1 or device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if world.local_size > count:
            raise FbmlError(f"{world.local_size} training processes on this machine need {world.local_size} CUDA devices, "
                            f"it has {count}: start at most {count} per machine, or train on the CPU")
        return torch.device("cuda", world.local_rank)
    raise FbmlError(f"device {device} trains in one process only: use cpu or cuda with several processes")


def rank_seed(seed: int, world: World) -> int:
    """The seed of ``world``'s process for what each process draws for itself (dropout, augmentation): rank 0's is ``seed``."""
    return seed + RANK_SEED_STRIDE * world.rank


def per_process_batch(batch_size: int, world: World) -> int:
    """Each process's share of a ``batch_size`` batch (rounded up): the processes' steps together take one batch."""
    return -(-batch_size // world.size)


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """``torch.distributed``'s default process group for the block (gloo; NCCL too for CUDA tensors), destroyed
    after; with one process nothing is initialised. A collective that fails because another process stopped ends
    the block with one line on rank 0 (``PeersLostError``) and ``RankZeroError`` on the others."""
    if world.size == 1:
        yield
        return
    if dist.is_initialized():
        raise FbmlError("a torch.distributed process group already exists in this process: train outside it")
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method="env://", rank=world.rank, world_size=world.size, timeout=WAIT)
    try:
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            yield
    except Exception as error:
        if _peer_lost(error):
            raise _lost(world, error) from None
        raise
    finally:
        dist.destroy_process_group()


def _peer_lost(error: Exception) -> bool:
    """Whether ``error`` is a collective's that lost another process: torch's ``DistError``, or the plain
    ``RuntimeError`` gloo's transport raises when a peer's connection closes."""
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "gloo/transport" in str(error))


def _lost(world: World, error: Exception) -> FbmlError:
    """A collective that failed because another process stopped (or the network between them did): one line
    from rank 0 (``PeersLostError``); the others, whose line would only repeat it, ``RankZeroError``."""
    line = one_line(f"rank {world.rank} lost the other training processes ({type(error).__name__}: {error})")
    return PeersLostError(line) if world.is_main else RankZeroError(line)


def data_parallel(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """What training calls: ``model`` in ``DistributedDataParallel`` with several processes (gradients averaged
    over them, rank 0's buffers at each forward), else ``model`` itself.

    ``static_graph``: every step uses the same parameters, and some trainable ones never get a gradient (the
    image branch's class layer inside the combined network), which plain DDP refuses at the second step;
    a static graph finds them once, without ``find_unused_parameters``' walk of the graph every step.
    """
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)


def on_main(world: World, work: Callable[[], object]) -> None:
    """``work()`` (a write) on rank 0 alone while the others wait for it; if it fails, rank 0 raises its error
    and the others ``RankZeroError``."""
    if world.is_main:
        _relaying(world, work)
    else:
        _wait_for_main(world)


def main_first(world: World, build: Callable[[], T]) -> T:
    """``build()`` on rank 0, then on the others once rank 0 has finished: for what rank 0 builds on disk and the
    others then find there (the photo and feature caches, memory-mapped)."""
    if world.is_main:
        return _relaying(world, build)
    _wait_for_main(world)
    return build()


@contextlib.contextmanager
def held_by_main(world: World, hold: Callable[[], contextlib.AbstractContextManager[object]]) -> Iterator[None]:
    """The block with ``hold()`` (a lock) held by rank 0 alone; the others start it once rank 0 holds it, and
    raise ``RankZeroError`` when rank 0 cannot have it."""
    with contextlib.ExitStack() as stack:
        if world.is_main:
            _relaying(world, lambda: stack.enter_context(hold()))
        else:
            _wait_for_main(world)
        yield


def _relaying(world: World, work: Callable[[], T]) -> T:
    """Rank 0's side of ``on_main``: ``work()``, then tell the others whether it failed."""
    try:
        value = work()
    except Exception as error:
        world.broadcast(str(error) if isinstance(error, FbmlError) else one_line(f"rank 0 failed: {type(error).__name__}: {error}"))
        raise
    world.broadcast(None)
    return value


def _wait_for_main(world: World) -> None:
    failure: str | None = world.broadcast(None)
    if failure is not None:
        raise RankZeroError(failure)


def launch(nproc: int, entrypoint: Callable[..., T], *args: Any) -> list[T]:
    """``entrypoint(*args)`` in ``nproc`` processes on this machine, through torch's elastic launcher (what
    ``torchrun --standalone`` runs: a fresh rendezvous on a free local port, no restarts), which sets ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` in each; their return values by rank.

    When a process fails the launcher stops the others, and the failure is raised here as one ``FbmlError`` line:
    the error of the lowest rank that raised one (rank 0's when it has one), else how the first failed process
    ended. A signal to this process (Ctrl-C, SIGTERM) stops them all and raises ``KeyboardInterrupt``. The
    launcher's own logging, signal handlers and files are confined to the call.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise FbmlError(f"cannot start {nproc} processes: at least 1")
    with tempfile.TemporaryDirectory(prefix="fbml-launch-") as scratch, _launcher_confined():
        errors = Path(scratch) / "errors"
        errors.mkdir()
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"fbml-{uuid.uuid4().hex}", rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0", max_restarts=0, start_method="spawn",
            logs_specs=DefaultLogsSpecs(log_dir=str(Path(scratch) / "logs")),
        )
        try:
            returned = elastic_launch(config, _recorded)(entrypoint, errors, *args)
        except ChildFailedError as failed:
            raise FbmlError(_first_error(errors, nproc) or _ending(failed, errors)) from None
        except SignalException:
            raise KeyboardInterrupt from None
    return [cast(T, returned[rank]) for rank in range(nproc)]


def _recorded(entrypoint: Callable[..., T], errors: Path, *args: Any) -> T:
    """``entrypoint(*args)`` in a launched process; the line of an error it raises is kept in ``errors`` for
    ``launch``, or, when it only follows another process's failure (``RankZeroError``, ``PeersLostError``), a
    mark that this process followed."""
    rank = os.environ.get("RANK", "unknown")
    signal.signal(signal.SIGINT, _interrupted_quietly)
    try:
        return entrypoint(*args)
    except (RankZeroError, PeersLostError):
        (errors / FOLLOWER_FILE.format(rank=rank)).touch()
        raise
    except Exception as error:
        line = str(error) if isinstance(error, FbmlError) else one_line(f"rank {rank} failed: {type(error).__name__}: {error}")
        (errors / ERROR_FILE.format(rank=rank)).write_text(line, encoding="utf-8")
        raise


def _interrupted_quietly(signum: int, frame: object) -> None:
    """A launched process's answer to SIGINT: exit 130 without a traceback. Ctrl-C reaches every process of the
    group, and the launcher's stop (SIGTERM, then SIGINT when it ends) can follow while the process is already
    unwinding from the first; a second ``KeyboardInterrupt`` there would print multiprocessing's traceback."""
    raise SystemExit(130)


def _first_error(errors: Path, nproc: int) -> str | None:
    """The error line of the lowest rank that kept one."""
    for rank in range(nproc):
        path = errors / ERROR_FILE.format(rank=rank)
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def _ending(failed: ChildFailedError, errors: Path) -> str:
    """How the failed process of lowest rank that did not follow another's failure ended (killed, or an exit
    status)."""
    causes = [rank for rank in sorted(failed.failures) if not (errors / FOLLOWER_FILE.format(rank=rank)).exists()]
    rank = causes[0] if causes else min(failed.failures)
    failure = failed.failures[rank]
    how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with status {failure.exitcode}"
    return f"training process {rank} {how}"


@contextlib.contextmanager
def _launcher_confined() -> Iterator[None]:
    """The loggers of the elastic launcher and of its process pool quiet (``launch`` reports a failed process; the
    others are stopped on purpose), and the signal handlers and environment variable it sets in this process put
    back after."""
    names = dict.fromkeys([*_LAUNCHER_LOGGERS, *logging.root.manager.loggerDict])
    loggers = [logging.getLogger(name) for name in names
               if any(name == prefix or name.startswith(prefix + ".") for prefix in _LAUNCHER_LOGGERS)]
    levels = [logger.level for logger in loggers]
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in _LAUNCHER_SIGNALS if hasattr(signal, name)}
    variable = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)
        if variable is None:
            os.environ.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
        else:
            os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = variable
