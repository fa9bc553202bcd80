"""Checkpoints: one explicit, versioned dict, written atomically, loaded with weights_only.

Layout (FORMAT_VERSION 2):
    format: "jepa-checkpoint", version: 2, step: int (completed steps), epoch: int,
    modules: {name: state dict} for every module of the method (e.g. encoder, predictor,
        target_encoder; timm key names for encoders),
    method: the method's name, eval_module: the module `jepa eval` / `jepa export` use,
    optimizer: optimizer state dict, recipe: resolved recipe dict, plugins: {plugin: version},
    counters: {nonfinite_total, skipped_samples}, metrics: last step's metrics.
No RNG state is stored: every draw comes from generators derived from (seed, step, ...).

Version 1 (before methods were plugins: I-JEPA only, the three state dicts at the top level)
is read as version 2 by `upgrade`, so older runs still resume, evaluate and export.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from jepa_core.errors import CheckpointError, RunError

FORMAT = "jepa-checkpoint"
FORMAT_VERSION = 2
V1_MODULES = ("encoder", "predictor", "target_encoder")
_NAME = re.compile(r"^step_(\d{9})\.pt$")
_SET_ASIDE = re.compile(r"^step_(\d{9})\.pt\.[a-z]+(-\d+)?$")  # *.diverged, *.corrupt


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint after `step` steps (zero-padded, so names sort by step)."""
    return f"step_{step:09d}.pt"


def save_atomic(state: dict, path: Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write checkpoint {path}: {exc.strerror or exc}. The previous "
                       f"checkpoints in {path.parent} are untouched.") from exc
    except BaseException:  # e.g. a second Ctrl-C while writing: no temp file left behind
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(directory: Path) -> None:
    """Temp files left by a process killed mid-write are never checkpoints: delete them."""
    if Path(directory).is_dir():
        for p in Path(directory).glob(".step_*.pt.tmp-*"):
            p.unlink(missing_ok=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir()
             if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


# The keys a loadable checkpoint has, by format version (the optimizer state may be None).
REQUIRED = {1: ("step", *V1_MODULES, "recipe"), 2: ("step", "modules", "eval_module", "recipe")}


def load(path: Path) -> dict:
    """The checkpoint dict at `path`; CheckpointError if the file is unusable (corrupt, refused
    for holding pickled code, or missing required keys), RunError if it is absent or newer."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"checkpoint {path} does not exist.") from None
    except pickle.UnpicklingError as exc:
        raise _refused_or_corrupt(path, exc) from None
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{_first_line(exc)}); it is truncated or corrupt.") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a jepa checkpoint (no format tag). For an "
                              f"official I-JEPA checkpoint use `jepa import-checkpoint`.")
    if not isinstance(state.get("version"), int):
        raise CheckpointError(f"checkpoint {path} has no format version; it is not one jepa "
                              f"wrote, or it was edited.")
    if state["version"] > FORMAT_VERSION:
        raise RunError(f"{path} has checkpoint format {state['version']}, newer than this "
                       f"jepa ({FORMAT_VERSION}); upgrade jepa-core.")
    missing = [k for k in REQUIRED.get(state["version"], REQUIRED[FORMAT_VERSION])
               if k not in state]
    if not missing and state["version"] >= 2 and state["eval_module"] not in state["modules"]:
        missing = [f"modules[{state['eval_module']!r}]"]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it has the jepa format tag but "
                              f"no {', '.join(repr(k) for k in missing)} (it holds "
                              f"{', '.join(map(repr, state)) or 'nothing'}). It was not written "
                              f"by jepa's trainer or was edited; use another checkpoint.")
    return upgrade(state)


def upgrade(state: dict) -> dict:
    """A checkpoint of any older format, in today's layout (in place; returned)."""
    if state["version"] < 2:
        state["modules"] = {name: state.pop(name) for name in V1_MODULES}
        state["method"] = "ijepa"
        state["eval_module"] = "target_encoder"
        recipe = state.get("recipe")
        if isinstance(recipe, dict):
            recipe.setdefault("method", {"name": "ijepa"})
        state["version"] = FORMAT_VERSION
    return state


def _first_line(exc: Exception) -> str:
    # torch appends advice to retry with weights_only=False; that never applies to our files.
    text = str(exc).partition("WeightsUnpickler error:")[2].strip() or str(exc).strip()
    return text.splitlines()[0] if text else "no details"


def _refused_or_corrupt(path: Path, exc: Exception) -> CheckpointError:
    """weights_only refuses a file whose pickle names a class or function (code)."""
    import torch

    if "Unsupported global" not in str(exc) and "Unsupported class" not in str(exc):
        return CheckpointError(f"checkpoint {path} cannot be read (UnpicklingError: "
                               f"{_first_line(exc)}); it is truncated or corrupt.")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # only names for the message; the refusal stands
        names = []
    what = f" ({', '.join(names[:5])})" if names else ""
    return CheckpointError(
        f"checkpoint {path} contains pickled code or Python objects{what}, which jepa refuses to "
        f"load for safety: unpickling them would run code from the file. A jepa checkpoint holds "
        f"only tensors and plain values, so this file was not written by jepa or was tampered "
        f"with. Do not load it; delete it or move it out of the run directory.")


def is_complete(path: Path) -> bool:
    """Cheap check (no unpickling, reads the zip directory only) that `path` is a whole file
    written by torch.save: a truncated or overwritten file has no zip directory."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def set_aside(path: Path, suffix: str) -> Path:
    """Rename `path` to `path + suffix` (out of list_checkpoints' sight, kept for inspection);
    `path + suffix-2` (-3, ...) where an earlier file was set aside under that name."""
    target, n = Path(f"{path}{suffix}"), 1
    while target.exists():
        n += 1
        target = Path(f"{path}{suffix}-{n}")
    os.replace(path, target)
    return target


def files_after(directory: Path, step: int) -> list[Path]:
    """The checkpoints after `step` in `directory`, and the ones set aside (*.diverged,
    *.corrupt) of those steps, by step."""
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p.name, p) for p in Path(directory).iterdir()
             if (m := _NAME.match(p.name) or _SET_ASIDE.match(p.name))]
    return [p for s, _, p in sorted(found) if s > step]


def set_aside_after(directory: Path, step: int, suffix: str) -> list[Path]:
    """Rename every checkpoint after `step` to `*<suffix>`; returns the new paths."""
    return [set_aside(p, suffix) for p in list_checkpoints(directory) if step_of(p) > step]


def newest_readable(directory: Path, *, move_bad: bool = False,
                    warn: Callable[[str], None] | None = None) -> tuple[Path, dict] | None:
    """(path, state) of the newest checkpoint in `directory` that loads, or None if there is
    none at all. Unusable ones are skipped with a warning and, with `move_bad` (the process that
    owns the run), renamed to `*.corrupt` so that later resumes and pruning ignore them.
    RunError if checkpoints exist but none loads."""
    warn = warn or _stderr
    candidates = list(reversed(list_checkpoints(directory)))
    if not candidates:
        return None
    errors = []
    for path in candidates:
        try:
            return path, load(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            moved = ""
            if move_bad:
                try:
                    moved = f" Moved it aside to {set_aside(path, '.corrupt').name}."
                except FileNotFoundError:
                    pass  # another rank moved it first
            warn(f"warning: {exc}{moved} Trying the previous checkpoint.")
        except RunError as exc:
            if path.exists():
                raise
            errors.append(str(exc))  # renamed by another rank meanwhile: skip it
    raise RunError(f"no readable checkpoint in {directory}: " + " ".join(errors))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def step_of(path: Path) -> int:
    """The step in a checkpoint's file name, -1 for a name that is not a checkpoint's."""
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else -1


def prune(directory: Path, keep_last: int, milestone_every: int = 0) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, keeping milestones for good.
    Incomplete files (truncated, overwritten) neither count toward `keep_last` nor get deleted:
    counting them would delete the good checkpoints they outnumber."""
    complete = [p for p in list_checkpoints(directory) if is_complete(p)]
    for old in complete[:-keep_last]:
        if milestone_every and step_of(old) % milestone_every == 0:
            continue
        old.unlink(missing_ok=True)
