"""Data-parallel training: ``World`` and its helpers, collectives and rank 0's failures in two gloo processes on the
CPU, ``fit`` in two processes equal to ``fit`` in one, and ``fbml train --nproc 2`` (and under ``torchrun``) on a
small sample marketplace: rank 0 alone writes, ``--resume``, the photo and feature caches built once, one line
when rank 0 fails.

The processes rendezvous on 127.0.0.1 and gloo talks over the loopback interface; every process is bounded by
``TIMEOUT`` and its whole process group is killed when it runs past it. Launched processes import this module
to find their entry points, so what only the tests in this process need (torchvision, the bundle store) is
imported where it is used.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from fbml.cli import main
from fbml.errors import FbmlError
from fbml.modeling import training
from fbml.modeling.distributed import (
    RankZeroError,
    World,
    launch,
    main_first,
    on_main,
    per_process_batch,
    process_group,
    rank_device,
    rank_seed,
    world_from_environment,
)
from fbml.modeling.training import TrainConfig, TrainData, fit
from torch import Tensor, nn

if TYPE_CHECKING:
    from fbml.modeling.features import FeatureDataset
    from fbml.modeling.models import ModelOutput

REPOSITORY = Path(__file__).resolve().parents[1]
MANIFEST = "bundle.json"
PRODUCTS = 160
IMAGE_SIZE = 32
EPOCHS = 3
TIMEOUT = 240
"""The most seconds one multi-process run may take on a busy two-core machine."""
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                      "TORCHELASTIC_RUN_ID", "MASTER_PORT")


@pytest.fixture(scope="module", autouse=True)
def loopback() -> Iterator[None]:
    """gloo on the loopback interface, and no launcher variables of an outer run."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in LOOPBACK.items():
            patch.setenv(name, value)
        for name in LAUNCHER_VARIABLES:
            patch.delenv(name, raising=False)
        yield


# --- one process -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("place", [(1, 1, 0, 1), (2, 2, 0, 1), (0, 2, 1, 1), (0, 1, 0, 2), (-1, 1, 0, 1), (0, 0, 0, 1)])
def test_a_world_is_a_place_among_processes(place: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError):
        World(*place)


def test_rank_0_is_the_main_process() -> None:
    assert World().is_main and World(0, 2).is_main
    assert not World(1, 2, 1, 2).is_main


def test_one_process_touches_no_collective() -> None:
    world = World()
    assert world.broadcast("x") == "x" and world.gather(3) == [3]
    assert torch.equal(world.sum(torch.ones(2)), torch.ones(2))
    with process_group(world, torch.device("cpu")):
        assert not torch.distributed.is_initialized()
    assert main_first(world, lambda: 7) == 7
    with pytest.raises(FbmlError, match="broken"):
        on_main(world, _raise_broken)


def _raise_broken() -> None:
    raise FbmlError("broken")


@pytest.mark.parametrize(("environment", "expected"), [
    ({}, None),
    ({"PATH": "/bin"}, None),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, World(1, 2, 1, 2)),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, World(3, 4, 1, 2)),
])
def test_world_from_the_launchers_variables(environment: dict[str, str], expected: World | None) -> None:
    assert world_from_environment(environment) == expected


@pytest.mark.parametrize(("environment", "message"), [
    ({"RANK": "0"}, "sets RANK but not WORLD_SIZE, LOCAL_RANK"),
    ({"RANK": "0", "WORLD_SIZE": "two", "LOCAL_RANK": "0"}, "WORLD_SIZE='two'"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "not a place among processes"),
])
def test_broken_launcher_variables_are_one_line(environment: dict[str, str], message: str) -> None:
    with pytest.raises(FbmlError, match=message) as raised:
        world_from_environment(environment)
    assert "\n" not in str(raised.value)


def test_rank_seeds_differ_and_rank_0_keeps_the_seed() -> None:
    seeds = [rank_seed(5, World(rank, 4, rank, 4)) for rank in range(4)]
    assert seeds[0] == 5 and len(set(seeds)) == 4
    assert rank_seed(5, World()) == 5


@pytest.mark.parametrize(("batch", "size", "share"), [(64, 1, 64), (64, 2, 32), (65, 2, 33), (64, 3, 22), (1, 4, 1)])
def test_each_process_takes_its_share_of_a_batch(batch: int, size: int, share: int) -> None:
    assert per_process_batch(batch, World(0, size, 0, size)) == share
    assert share * size >= batch > (share - 1) * size


def test_rank_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, two = torch.device("cpu"), World(1, 2, 1, 2)
    assert rank_device(cpu, two) == cpu
    assert rank_device(torch.device("mps", 0), World()) == torch.device("mps", 0)
    with pytest.raises(FbmlError, match="trains in one process only"):
        rank_device(torch.device("mps", 0), two)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device(torch.device("cuda", 0), two) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(FbmlError, match="2 training processes on this machine need 2 CUDA devices, it has 1"):
        rank_device(torch.device("cuda", 0), two)


def test_launch_needs_a_process() -> None:
    with pytest.raises(FbmlError, match="at least 1"):
        launch(0, _here)


def _here() -> World:
    world = world_from_environment(os.environ)
    assert world is not None
    return world


# --- two processes -----------------------------------------------------------------------------------------


def _collectives(results: Path) -> None:
    """Every collective of ``World`` in two processes, each rank's results written to ``results``; then rank 0
    fails inside ``on_main``, which ends rank 1 with ``RankZeroError`` (its message kept) and both processes."""
    world = _here()
    with process_group(world, torch.device("cpu")):
        found: dict[str, Any] = {
            "world": [world.rank, world.size, world.local_rank, world.local_size],
            "broadcast": world.broadcast({"rank": world.rank}),
            "gather": world.gather(world.rank * 10),
            "sum": world.sum(torch.tensor([world.rank + 1.0])).tolist(),
            "main_first": main_first(world, lambda: (results / "built").exists() or (results / "built").touch()),
        }
        buffers = nn.BatchNorm1d(2)
        buffers.running_mean.fill_(world.rank + 1.0)
        world.share_buffers(buffers)
        found["buffers"] = buffers.running_mean.tolist()
        try:
            on_main(world, lambda: _raise_broken() if world.is_main else None)
        except RankZeroError as error:
            found["relayed"] = str(error)
        finally:
            (results / f"rank-{world.rank}.json").write_text(json.dumps(found))


def test_collectives_and_a_failure_of_rank_0(tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(FbmlError, match="^broken$"):
        launch(2, _collectives, tmp_path)
    assert time.perf_counter() - started < TIMEOUT
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(2)]
    assert [found["world"] for found in ranks] == [[0, 2, 0, 2], [1, 2, 1, 2]]
    assert all(found["broadcast"] == {"rank": 0} and found["gather"] == [0, 10] and found["sum"] == [3.0]
               for found in ranks)
    assert [found["main_first"] for found in ranks] == [None, True]  # rank 0 built, rank 1 found it built
    assert all(found["buffers"] == [1.0, 1.0] for found in ranks)  # rank 0's batch-norm statistics
    assert "relayed" not in ranks[0] and ranks[1]["relayed"] == "broken"


def _fail_on_rank_1() -> None:
    if _here().rank == 1:
        raise ValueError("rank 1 cannot go on\nsecond line")


def test_a_failure_that_is_not_an_fbml_error_is_one_line_naming_its_rank() -> None:
    with pytest.raises(FbmlError) as raised:
        launch(2, _fail_on_rank_1)
    assert str(raised.value) == "rank 1 failed: ValueError: rank 1 cannot go on second line"


def _rank_1_dies() -> None:
    world = _here()
    with process_group(world, torch.device("cpu")):
        if world.rank == 1:
            os._exit(3)
        world.broadcast(None)  # rank 0 waits for a rank that is gone


def test_a_process_that_dies_stops_the_others_with_one_line() -> None:
    with pytest.raises(FbmlError, match="^training process 1 exited with status 3$"):
        launch(2, _rank_1_dies)


class Linear(nn.Module):
    """A linear classifier: no dropout or batch norm, so two processes compute exactly one process's steps."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 4)

    def forward(self, features: Tensor) -> ModelOutput:
        from fbml.modeling.models import ModelOutput

        return ModelOutput(self.layer(features), features)


BLOBS_CONFIG = TrainConfig(epochs=3, batch_size=16, learning_rate=5e-2, seed=3)


def _blobs(count: int, seed: int) -> FeatureDataset:
    from fbml.modeling.features import FeatureDataset

    centres = np.random.default_rng(1234).normal(0.0, 2.0, (4, 8)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    return FeatureDataset((centres[labels] + rng.normal(0.0, 1.0, (count, 8))).astype(np.float32), labels, np.arange(count))


def _fitted(world: World, checkpoints: Path | None = None, logdir: Path | None = None) -> Linear:
    torch.manual_seed(0)
    model = Linear()
    fit(model, TrainData(_blobs(97, 1), _blobs(40, 2)), BLOBS_CONFIG, checkpoint_dir=checkpoints, logdir=logdir,
        progress=False, world=world)
    return model


def _fit_in_two(folder: Path) -> dict[str, Any]:
    """``fit`` in this process of two, recording what it writes: the weights and the calls by kind."""
    world = _here()
    calls: list[str] = []
    save, writer = training._save_checkpoint, training._writer
    training._save_checkpoint = lambda *args: (calls.append("checkpoint"), save(*args))[1]
    training._writer = lambda logdir: (calls.append(f"writer {logdir is not None}"), writer(logdir))[1]
    with process_group(world, torch.device("cpu")):
        model = _fitted(world, folder / "checkpoints", folder / "runs")
    return {"weights": {name: value.numpy() for name, value in model.state_dict().items()}, "calls": calls}


def test_fit_in_two_processes_takes_one_process_steps(tmp_path: Path) -> None:
    """Each process takes half of every batch of the one-process order and the gradients are averaged, so the
    weights are one process's (to rounding); rank 0 alone checkpoints and logs, and rank 1 ends with its weights."""
    ranks = launch(2, _fit_in_two, tmp_path)
    alone = _fitted(World()).state_dict()
    for name, value in alone.items():
        np.testing.assert_allclose(ranks[0]["weights"][name], value.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ranks[1]["weights"][name], ranks[0]["weights"][name])
    assert ranks[0]["calls"] == ["writer True", *["checkpoint"] * BLOBS_CONFIG.epochs]
    assert ranks[1]["calls"] == ["writer False"]
    checkpoint = torch.load(tmp_path / "checkpoints" / training.CHECKPOINT, weights_only=True)
    assert len(checkpoint["rng_ranks"]) == 2  # every rank's random state, for --resume
    assert len(list((tmp_path / "runs").glob("events.out.tfevents.*"))) >= 1


# --- the command line --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 160-product sample with its photos cleaned to 32 px."""
    from fbml.sample.marketplace import write_sample
    from fbml.vision.cleaning import clean_images

    root = tmp_path_factory.mktemp("market")
    sample = write_sample(root / "raw", products=PRODUCTS, seed=0)
    clean_images(sample.image_dir, root / "photos", size=IMAGE_SIZE, workers=1, progress=False)
    return {"products": sample.products_csv, "images": sample.images_csv, "image_dir": root / "photos"}


def load_bundle(path: Path) -> Any:
    from fbml.bundle.store import load_bundle

    return load_bundle(path)


def train_args(market: dict[str, Path], out: Path, kind: str = "text", *extra: str) -> list[str]:
    return ["train", "--model", kind, "--epochs", str(EPOCHS), "--image-size", str(IMAGE_SIZE), "--device", "cpu",
            "--products", str(market["products"]), "--images", str(market["images"]), "--image-dir",
            str(market["image_dir"]), "--out", str(out), *extra]


def environment() -> dict[str, str]:
    outer = {name: value for name, value in os.environ.items() if name not in LAUNCHER_VARIABLES}
    return {**outer, **LOOPBACK, "PYTHONPATH": str(REPOSITORY)}


def started(command: list[str]) -> subprocess.Popen[str]:
    """``command`` in a new session (its process group killed with it)."""
    return subprocess.Popen(command, cwd=REPOSITORY, env=environment(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """The exit status, stdout and stderr of ``process``, which is killed (its whole group) past ``TIMEOUT``."""
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{process.args} ran past {TIMEOUT} s:\n{out[-2000:]}\n{err[-2000:]}")
    return process.returncode, out, err


def fbml(*args: str) -> tuple[int, str, str]:
    return finished(started([sys.executable, "-m", "fbml.cli", *args]))


def errors_of(err: str) -> list[str]:
    """The lines of stderr, without tqdm's progress bars."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s" not in line
            and "s/it" not in line and "?it" not in line and not line.startswith("epoch ")]


@pytest.fixture(scope="module")
def two_processes(market: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``fbml train --model text --nproc 2``, uninterrupted."""
    bundle = tmp_path_factory.mktemp("two") / "bundle"
    status, out, err = fbml(*train_args(market, bundle, "text", "--nproc", "2"))
    assert status == 0, err[-3000:]
    return {"bundle": bundle, "work": bundle.with_name("bundle.work"), "out": out, "err": err}


def test_nproc_2_trains_a_bundle_that_rank_0_alone_writes(two_processes: dict[str, Any]) -> None:
    assert two_processes["out"].count("text: trained text-cnn, text-cnn-refit") == 1  # rank 0 alone prints
    assert "Traceback" not in two_processes["err"]
    bundle = load_bundle(two_processes["bundle"])
    assert {"text-cnn", "text-linear"} <= set(bundle.models) and "text" in bundle.predictors
    history = bundle.models["text-cnn"].report["history"]["epochs"]
    assert [epoch["epoch"] for epoch in history] == list(range(1, EPOCHS + 1))
    work = two_processes["work"]
    for name in ("text-cnn", "text-cnn-refit"):
        assert len(torch.load(work / "checkpoints" / name / training.CHECKPOINT, weights_only=True)["rng_ranks"]) == 2
        writers = {path.name.split(".")[-2] for path in (work / "runs" / name).glob("events.out.tfevents.*")}
        assert len(writers) == 1, writers  # one process (its pid in the name) logs


@pytest.mark.slow  # two trainings: about 110 s on two busy cores
def test_resume_under_nproc_2(market: dict[str, Path], two_processes: dict[str, Any], tmp_path: Path) -> None:
    """Ctrl-C once the first checkpoint is written stops every process (one line, exit 130); ``--resume`` then
    completes with each epoch once and the uninterrupted run's weights (every rank's random state restored)."""
    bundle, work = tmp_path / "bundle", tmp_path / "work"
    args = train_args(market, bundle, "text", "--nproc", "2", "--work-dir", str(work))
    process = started([sys.executable, "-m", "fbml.cli", *args])
    checkpoint = work / "checkpoints" / "text-cnn" / training.CHECKPOINT
    deadline = time.monotonic() + TIMEOUT
    while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_file()
    os.killpg(process.pid, signal.SIGINT)
    status, _, err = finished(process)
    assert (status, errors_of(err)) == (130, ["fbml: interrupted"])
    assert not (bundle / MANIFEST).exists()

    status, _, err = fbml(*args, "--resume")
    assert status == 0, err[-3000:]
    resumed = json.loads((bundle / MANIFEST).read_text())["models"]["text-cnn"]
    assert [epoch["epoch"] for epoch in resumed["report"]["history"]["epochs"]] == list(range(1, EPOCHS + 1))
    uninterrupted = json.loads((two_processes["bundle"] / MANIFEST).read_text())["models"]["text-cnn"]
    assert resumed["weights"]["sha256"] == uninterrupted["weights"]["sha256"]


def _logdir_is_a_file(root: Path) -> list[str]:
    (root / "runs").write_text("not a folder")
    return ["--logdir", str(root / "runs")]


def _checkpoints_are_a_file(root: Path) -> list[str]:
    (root / "work" / "checkpoints").mkdir(parents=True)
    (root / "work" / "checkpoints" / "text-cnn").write_text("not a folder")
    return ["--work-dir", str(root / "work")]


@pytest.mark.parametrize(("breaking", "message"), [
    (_logdir_is_a_file, "runs"),  # found by rank 0 while the other waits for it
    (_checkpoints_are_a_file, "rank 0 failed: FileExistsError"),  # rank 0 fails in training, the other is stopped
])
def test_a_failing_rank_0_ends_every_process_with_one_line(
    market: dict[str, Path], tmp_path: Path, breaking: Callable[[Path], list[str]], message: str
) -> None:
    status, out, err = fbml(*train_args(market, tmp_path / "bundle", "text", "--nproc", "2", *breaking(tmp_path)))
    lines = errors_of(err)
    assert status == 2 and len(lines) == 1 and lines[0].startswith("fbml: error: ") and message in lines[0], err[-3000:]
    assert "text: trained" not in out and not (tmp_path / "bundle" / MANIFEST).exists()


def _counting_train(argv: list[str], counts: Path) -> int:
    """``fbml train`` as one of the processes a launcher started, counting the photo and feature caches it builds."""
    from fbml.modeling import features
    from fbml.vision import cache

    rank = os.environ["RANK"]

    def counted(module: Any, name: str) -> None:
        real = getattr(module, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with (counts / f"{name}-{rank}").open("a") as file:
                file.write("built\n")
            return real(*args, **kwargs)

        setattr(module, name, call)

    counted(cache, "_write_cache")
    counted(features, "frozen_features")
    return main(argv)


def test_under_a_launcher_the_caches_are_built_once(market: dict[str, Path], tmp_path: Path) -> None:
    """The image model in two processes a launcher started (``fbml train`` reads its place from RANK, WORLD_SIZE
    and LOCAL_RANK): rank 0 decodes the photos and computes the frozen features once; the other opens them."""
    bundle = tmp_path / "bundle"
    assert launch(2, _counting_train, train_args(market, bundle, "image", "--no-refit"), tmp_path) == [0, 0]
    built = sorted(path.name for path in tmp_path.iterdir() if path.is_file())
    assert built == ["_write_cache-0", "frozen_features-0"]
    assert [(tmp_path / name).read_text() for name in built] == ["built\n", "built\n"]
    assert "image" in load_bundle(bundle).predictors


def test_torchrun_starts_the_processes(market: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    status, out, err = finished(started([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "fbml.cli", *train_args(market, bundle, "text", "--no-refit"),
    ]))
    assert status == 0, err[-3000:]
    assert out.count("text: trained text-cnn in") == 1 and "Traceback" not in err
    assert "text" in load_bundle(bundle).predictors


def test_nproc_under_a_launcher_is_one_line(market: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert main(train_args(market, tmp_path / "bundle", "text", "--nproc", "2")) == 2
    err = capsys.readouterr().err
    assert err.startswith("fbml: error: --nproc 2: this is already one of 2 processes") and err.count("\n") == 1
    assert not (tmp_path / "bundle").exists()


def test_partial_launcher_variables_are_one_line(market: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RANK", "0")
    assert main(train_args(market, tmp_path / "bundle", "text")) == 2
    err = capsys.readouterr().err
    assert "sets RANK but not WORLD_SIZE, LOCAL_RANK" in err and err.count("\n") == 1
