"""The run directory (`out_dir/name`): one run at a time, and never two runs mixed in it.

    with claim(recipe, resume, dist) as run_dir:   # before any model is built
        state = find_resume(...)
        run_dir.start_at(state)                     # metrics.jsonl: drop the rows to recompute;
                                                    # a branch sets later steps aside (lineage)
        train(...)

Rank 0 (the process that writes the directory) checks, before anything is built, that:
- the directory can be created and written (a read-only disk or folder: one clear error);
- no other run holds it: an OS lock (flock) on `.lock`, held until the run ends. The OS drops
  it when its process dies, so a lock left by a killed run is stale by construction;
- a run without `--resume` does not land on an earlier run's checkpoints or metrics.
Under several processes every rank learns rank 0's verdict, so none waits for a rank 0 that
has stopped.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jepa_core.errors import JepaError
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.lineage import METRICS_NAME, drop_rows_after, history_kept, retire_later
from jepa_core.runtime.runlog import metrics_rows

LOCK_NAME = ".lock"
# flock unsupported by the file system (e.g. Lustre mounted without -o flock, some NFS set-ups)
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class RunDirError(JepaError):
    """The run directory cannot be used as asked: not writable, in use, or holding another
    run. Exit code 2: the fix is the user's (another name, `--resume auto`, a writable path)."""

    title = "run directory"


class UnwritableFolder(RunDirError):
    """A folder jepa must write to (run directory, export folder) that cannot be written."""

    title = "folder not writable"


def ensure_writable(directory: Path, what: str, fix: str) -> None:
    """Create `directory` if needed and prove that files can be created in it; RunDirError
    naming the path otherwise. `what` names the folder ("run directory"), `fix` the remedy."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UnwritableFolder(f"{what} {directory} cannot be written ({reason}). {fix}") from None


class UnusablePath(JepaError):
    """A path given on the command line (or read from a file) that the OS refuses to look up."""

    title = "path cannot be used"


def check_lookup(path: Path, what: str) -> None:
    """UnusablePath naming `path` (`what`: "run directory", ...) when the OS cannot even look it
    up: a name over 255 bytes, a path over 4096, a folder on the way that cannot be searched.
    A path that merely does not exist passes: the caller says what should be there."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        limits = (" A file or folder name has at most 255 bytes, a whole path at most 4096."
                  if exc.errno == errno.ENAMETOOLONG else "")
        raise UnusablePath(f"{what} {path} cannot be looked up ({exc.strerror or exc}).{limits} "
                           f"Check the path.") from None


def is_file(path: Path) -> bool:
    """Path.is_file, and False where the OS refuses to look the path up (too long, ...): for
    paths read from files, which may name anything."""
    try:
        return Path(path).is_file()
    except OSError:
        return False


class Lock:
    """An exclusive flock on `run_dir/.lock`, which records the holder's pid, host and start.
    Released, the file goes, and so do the folders `created` for the run if still empty."""

    def __init__(self, run_dir: Path, created: Sequence[Path] = ()):
        self.path = Path(run_dir) / LOCK_NAME
        self.created = list(created)  # deepest first
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the run folder's lock (an flock on the lock file), or raise RunDirError naming
        the process that holds it."""
        for _ in range(3):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if self._lock(fd):
                break
            os.close(fd)  # locked a file a finishing run had just removed: take the new one
        else:
            raise RunDirError(f"run directory {self.path.parent}: its lock file keeps being "
                              f"replaced by other runs; start this run again.")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.fd = fd

    def _lock(self, fd: int) -> bool:
        """Lock `fd`; False when the path no longer names the file locked."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(
                f"run directory {self.path.parent} is in use by another run ({_holder(self.path)}"
                f"; lock file {self.path}). Two runs in one directory overwrite each other's "
                f"checkpoints. Wait for that run to end or stop it, or give this run another "
                f"name (name=NEW_NAME).") from None
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                os.close(fd)
                raise
            print(f"warning: the file system of {self.path.parent} does not support file locks "
                  f"({exc.strerror}); a second run into this directory would not be detected.",
                  file=sys.stderr)
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        """Remove the lock file and unlock it, and remove the folders created for the run if they
        are still empty. Does nothing if not held."""
        if self.fd is None:
            return
        # Unlinked while still locked: a run that opened the old file sees (after its own
        # flock) that the path names another file, and takes that one instead.
        self.path.unlink(missing_ok=True)
        for folder in self.created:  # a run that failed before writing leaves nothing behind
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: the run wrote something, or another run is starting there
        os.close(self.fd)  # closing drops the flock
        self.fd = None


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return f"held by {text}" if text else "holder not recorded yet"


def refuse_earlier_run(run_dir: Path) -> None:
    """RunDirError if `run_dir` holds an earlier run's checkpoints or metrics (for a run
    started without --resume, which would mix with them)."""
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    rows, live = metrics_rows(run_dir / METRICS_NAME)
    if not found and not rows and not live:
        return
    held = []
    if found:
        held.append(f"{len(found)} checkpoint(s), the newest {found[-1].name}")
    if rows or live:  # counted as the run's summary counts them
        knn = f" and {live} in-training kNN row(s)" if live else ""
        held.append(f"{rows} step row(s){knn} in {METRICS_NAME}")
    raise RunDirError(
        f"run directory {run_dir} already holds a run ({'; '.join(held)}), and a new run would "
        f"mix with it. To continue that run: `jepa run RECIPE --resume auto`"
        f"{'' if found else ' (it has no checkpoint yet, so that starts it over)'}. To start a "
        f"separate one: give it another name, e.g. `jepa run RECIPE name=NEW_NAME` (or another "
        f"out_dir=...). To start over: delete {run_dir}.")


class Claimed:
    """What `claim` hands out: the directory, and `start_at` for the resumed step."""

    def __init__(self, run_dir: Path, main: bool, resume: str | None = None):
        self.run_dir, self.main, self.resume = run_dir, main, resume

    def start_at(self, state: dict | None) -> None:
        """The run starts at `state["step"]` (0 without a state): drop the later rows. A run
        resumed from a named checkpoint older than the run's newest steps branches: those
        steps are set aside first (`retire_later`)."""
        if not self.main:
            return
        step = int(state["step"]) if state is not None else 0
        if state is not None and self.resume not in (None, "auto"):
            source = str(self.resume)
            retire_later(self.run_dir, step, source, history_kept(self.run_dir, source, state))
        drop_rows_after(self.run_dir / METRICS_NAME, step)


def take(run_dir: Path, resume: str | None) -> Lock:
    """Rank 0's checks (writable, not in use, no earlier run unless resuming); the held Lock."""
    fix = ("Choose a writable place for runs with out_dir=/path/to/runs (or fix the folder's "
           "permissions).")
    created = [p for p in [run_dir, *run_dir.parents] if not p.exists()]
    ensure_writable(run_dir, "run directory", fix)
    if (run_dir / "checkpoints").is_dir():
        ensure_writable(run_dir / "checkpoints", "checkpoint directory", fix)
    lock = Lock(run_dir, created)
    try:
        lock.acquire()
    except OSError as exc:
        raise RunDirError(f"run directory {run_dir}: cannot open its lock file "
                          f"{lock.path} ({exc.strerror or exc}). {fix}") from None
    try:
        if resume is None:
            refuse_earlier_run(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


@contextmanager
def claim(recipe: Any, resume: str | None, dist: Any) -> Iterator[Claimed]:
    """Hold `recipe.run_dir` for the run (rank 0 locks; every rank learns whether it may go)."""
    run_dir = Path(recipe.run_dir)
    lock, refusal = None, None
    if dist.is_main:
        try:
            lock = take(run_dir, resume)
        except JepaError as exc:
            refusal = exc
    _agree(dist, run_dir, refusal)
    try:
        yield Claimed(run_dir, dist.is_main, resume)
    finally:
        if lock is not None:
            lock.release()


def _agree(dist: Any, run_dir: Path, refusal: JepaError | None) -> None:
    """Share rank 0's verdict (its exit code, 0 to go on); raise the refusal on every rank."""
    code = refusal.exit_code if refusal is not None else 0
    if dist.distributed:
        import torch
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            device = "cpu"
            if tdist.get_backend() == "nccl":
                device = f"cuda:{dist.local_rank % torch.cuda.device_count()}"
            flag = torch.tensor([code], dtype=torch.int64, device=device)
            tdist.broadcast(flag, src=0)
            code = int(flag.item())
    if refusal is not None:
        raise refusal
    if code:
        error = RunDirError(f"rank 0 refused run directory {run_dir} (its message says why); "
                            f"this rank stops too.")
        error.exit_code = code
        raise error
