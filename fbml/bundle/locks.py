"""Advisory locks on a bundle directory (``fcntl.flock``), so that concurrent processes never lose a model.

* The writer lock is held by a read-modify-write of the bundle (a training, a re-indexing) from
  before it reads the bundle until after it saves: a second writer is refused at once with one line
  naming the holder, before any long work.
* The files lock is held exclusively while a save replaces the manifest and removes the files no
  manifest names any more, and shared while a load reads them, so a reader never meets a file
  that a concurrent save has just removed. A read-only bundle (a container's ``/bundle:ro``) has no
  writers, and is read without it.

The locks are released by the kernel when their process dies, so a killed writer leaves no lock
behind, only the holder's line in the lock file, which the next holder overwrites.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from fbml.errors import FbmlError

WRITER_LOCK = ".fbml-writer.lock"
FILES_LOCK = ".fbml-files.lock"
FILES_WAIT_SECONDS = 120.0
POLL_SECONDS = 0.05


@contextlib.contextmanager
def bundle_writer(path: Path, command: str) -> Iterator[None]:
    """The right to read, change and save the bundle at ``path`` for the block (the folder is created).

    ``FbmlError`` naming the holder when another process has it; ``command`` says who holds it now.
    """
    _check_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path / WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise FbmlError(f"{path}: the bundle is being written by {holder}; wait for it to finish "
                            "or write to another bundle") from None
        since = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} ({command}) since {since}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def bundle_files(path: Path, *, shared: bool, wait_seconds: float = FILES_WAIT_SECONDS) -> Iterator[None]:
    """The bundle's files lock for the block: shared to read, exclusive to replace; waits at most ``wait_seconds``."""
    descriptor = _open_files_lock(path, create=not shared)
    if descriptor is None:
        yield
        return
    try:
        _acquire(descriptor, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, path, wait_seconds)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _open_files_lock(path: Path, *, create: bool) -> int | None:
    """The lock file's descriptor; None for a bundle nobody can write (read-only, or without the file)."""
    lock = path / FILES_LOCK
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if create:
            raise FbmlError(f"{path}: cannot write the bundle (cannot create {FILES_LOCK})") from None
    try:
        return os.open(lock, os.O_RDONLY)
    except OSError:
        return None


def _acquire(descriptor: int, mode: int, path: Path, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise FbmlError(f"{path}: the bundle's files stayed locked for {wait_seconds:.0f} s") from None
            time.sleep(POLL_SECONDS)


def _check_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise FbmlError(f"{path}: exists and is not a bundle folder")
