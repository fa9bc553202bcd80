"""Cache folders shared by processes: concurrent evaluations (two checkpoints of one run,
runs sharing `eval.cache_dir`, the processes of `jepa eval --nproc`) use the same cache.

Every process using a folder holds a shared flock on `<folder>.lock` (`in_use`) until it has
read the features; `prune_others` removes a sibling folder only when it can take that lock
exclusively, so no evaluation deletes features another one is extracting or reading. A
process killed while writing a shard leaves a temporary named after its host and pid, which
the next extraction into that folder removes once that process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from jepa_core.evaluation.cache import CacheError


def lock_path(folder: Path) -> Path:
    """The lock file of a cache folder (beside it, so removing the folder keeps it)."""
    return folder.with_name(folder.name + ".lock")


@contextlib.contextmanager
def in_use(folder: Path) -> Iterator[None]:
    """Hold a shared lock on `folder` (created if needed) while extracting into it or
    reading it: `prune_others` of any process leaves it alone meanwhile. The lock goes with
    the process, so a killed one holds none."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        fd = _lock(lock_path(folder), fcntl.LOCK_SH)
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        where = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                     folder.parent)  # a file where a folder should be, else the parent
        raise CacheError(
            f"cannot use {where} for the feature cache: {exc.strerror or exc}. Point "
            f"eval.cache_dir at a folder this process can write.") from exc
    assert fd is not None
    try:
        yield
    finally:
        os.close(fd)


def _lock(path: Path, how: int) -> int | None:
    """An open descriptor of `path` holding flock `how`; None if LOCK_NB and it is held.
    Locks the file that is at `path` once locked (a pruner may remove the one opened)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def prune_others(folder: Path) -> None:
    """Remove the other fingerprints of the same features and split (older weights, other
    images) beside a complete `folder`, except the ones another process holds (`in_use`)."""
    split = folder.name.rsplit("-", 1)[0]
    for other in folder.parent.glob(f"{split}-*"):
        if other == folder or not other.is_dir() or other.name.rsplit("-", 1)[0] != split:
            continue
        fd = _lock(lock_path(other), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:  # another evaluation extracts into it or reads it
            continue
        try:
            shutil.rmtree(other, ignore_errors=True)
            lock_path(other).unlink(missing_ok=True)
        finally:
            os.close(fd)


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporaries of shards that processes of this host, now dead, were writing
    (a kill during a write leaves one of a shard's full size)."""
    host = socket.gethostname()
    for tmp in folder.glob(f".*.{host}.*.tmp"):
        pid = tmp.name[:-len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
