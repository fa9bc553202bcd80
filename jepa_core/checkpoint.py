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
import re
from pathlib import Path
from typing import Any

from jepa_core.errors import RunError

FORMAT = "jepa-checkpoint"
FORMAT_VERSION = 2
V1_MODULES = ("encoder", "predictor", "target_encoder")
_NAME = re.compile(r"^step_(\d{9})\.pt$")


def checkpoint_name(step: int) -> str:
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


def load(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"checkpoint {path} does not exist.") from None
    except Exception as exc:
        raise RunError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it "
                       f"is truncated or corrupt.") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunError(f"{path} is not a jepa checkpoint (no format tag). For an official "
                       f"I-JEPA checkpoint use `jepa import-checkpoint`.")
    if state.get("version", 0) > FORMAT_VERSION:
        raise RunError(f"{path} has checkpoint format {state['version']}, newer than this "
                       f"jepa ({FORMAT_VERSION}); upgrade jepa-core.")
    return upgrade(state)


def upgrade(state: dict) -> dict:
    """A checkpoint of any older format, in today's layout (in place; returned)."""
    if state.get("version", 1) < 2:
        state["modules"] = {name: state.pop(name) for name in V1_MODULES if name in state}
        state["method"] = "ijepa"
        state["eval_module"] = "target_encoder"
        recipe = state.get("recipe")
        if isinstance(recipe, dict):
            recipe.setdefault("method", {"name": "ijepa"})
        state["version"] = FORMAT_VERSION
    return state


def step_of(path: Path) -> int:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else -1


def prune(directory: Path, keep_last: int, milestone_every: int = 0) -> None:
    """Delete all but the newest `keep_last` checkpoints, keeping milestones for good."""
    for old in list_checkpoints(directory)[:-keep_last]:
        if milestone_every and step_of(old) % milestone_every == 0:
            continue
        old.unlink(missing_ok=True)
