"""A run directory holds one line of steps (one lineage): its checkpoints, the rows of
metrics.jsonl and eval.json all belong to the same training, step after step.

    drop_rows_after(run_dir / METRICS_NAME, step)    # a resume recomputes the later rows
    kept = history_kept(run_dir, source, state)      # what of the directory is the checkpoint's
    retire_later(run_dir, step, source, kept)        # a branch: set the rest aside, never delete

`jepa run --resume PATH` from a checkpoint older than the run's newest steps starts a branch;
the later steps move to checkpoints/abandoned-<time>/, metrics.abandoned-<time>.jsonl and
eval.abandoned-<time>.json, so that `--resume auto` continues the branch. Rank 0 only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from jepa_core.errors import RunError
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.runlog import MAX_STEP, row_step

METRICS_NAME = "metrics.jsonl"


def drop_rows_after(metrics: Path, step: int) -> int:
    """Rewrite `metrics` (atomically) without the rows of steps after `step`, which a run
    resumed from `step` computes again, and without torn lines or rows that have no valid step
    (those are named on stderr). Returns the rows dropped."""
    lines = _read_lines(metrics)
    steps = [_row_step(line) for line in lines]
    keep = [line for line, s in zip(lines, steps, strict=True) if s is not None and s <= step]
    if len(keep) == len(lines) and all(line.endswith(b"\n") for line in keep):
        return 0
    _note_invalid(metrics, lines, steps)
    _write_atomic(metrics, b"".join(_whole(line) for line in keep),
                  "It is unchanged.", "for the resumed run")
    return len(lines) - len(keep)


def _read_lines(path: Path) -> list[bytes]:
    try:
        return Path(path).read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return []


def _whole(line: bytes) -> bytes:
    return line if line.endswith(b"\n") else line + b"\n"


def _write_atomic(path: Path, data: bytes, unchanged: str, why: str) -> None:
    """Write `data` to `path` through a temp file and a rename; RunError naming `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {path} {why}: {exc.strerror or exc}. "
                       f"{unchanged}") from None


def _note_invalid(metrics: Path, lines: list[bytes], steps: list[int | None]) -> None:
    """Name the rows dropped for having no valid step, but a torn last line (a killed run's)
    or a blank line, which need no word."""
    bad = [i + 1 for i, (line, s) in enumerate(zip(lines, steps, strict=True))
           if s is None and line.strip() and (i < len(lines) - 1 or line.endswith(b"\n"))]
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        print(f"note: {metrics}: left out {len(bad)} row(s) without a valid step (line(s) "
              f"{shown}: not JSON, or a step that is not a whole number from 0 to "
              f"{MAX_STEP}); no run writes such rows, so they were edited or written by "
              f"another tool.", file=sys.stderr)


def _row_step(line: bytes) -> int | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None  # a torn line (a process killed mid-write)
    return row_step(row)


def retire_later(run_dir: Path, step: int, source: str, kept: int | None = None) -> None:
    """A branch: the run resumes from checkpoint `source` after `step` steps while `run_dir`
    holds a later part of the run (checkpoints, or an eval.json, of later steps), or steps of
    another run (`kept` < `step`: the directory's steps after `kept` are not the checkpoint's
    history). What lies after `kept` moves aside, never deleted: the checkpoints (and their
    *.diverged / *.corrupt copies) to checkpoints/abandoned-<time>/, the metrics rows to
    metrics.abandoned-<time>.jsonl, eval.json to eval.abandoned-<time>.json. The directory
    then holds one line of steps, which `--resume auto` continues. Rows go first, so a process
    killed in between leaves every row in a file."""
    kept = step if kept is None else kept
    directory = run_dir / "checkpoints"
    later = ckpt.files_after(directory, kept)
    evaluated = _evaluated_after(run_dir / "eval.json", kept)
    lines = _read_lines(run_dir / METRICS_NAME)
    rows = [line for line in lines if (_row_step(line) or 0) > kept]
    if not later and not evaluated and (kept == step or not rows):
        return  # rows alone after the newest checkpoint: recomputed, as by `--resume auto`
    stamp = _free_stamp(run_dir)
    moved = []
    if rows:
        aside = run_dir / f"metrics.abandoned-{stamp}.jsonl"
        _write_atomic(aside, b"".join(_whole(line) for line in rows), "Nothing was moved.",
                      "(the metrics rows after the branch point)")
        steps = [_row_step(line) or 0 for line in rows]
        moved.append(f"{len(rows)} metrics row(s) of steps {min(steps)}-{max(steps)} to "
                     f"{aside.name}")
        _write_atomic(run_dir / METRICS_NAME, b"".join(
            _whole(line) for line in lines if (_row_step(line) or 0) <= kept), "It is "
            "unchanged; the rows after the branch point are also in " + aside.name + ".",
            "(the rows of this branch)")
    if later:
        folder = directory / f"abandoned-{stamp}"
        folder.mkdir()
        for path in later:
            os.replace(path, folder / path.name)
        moved.append(f"{len(later)} file(s) ({', '.join(p.name for p in later)}) to {folder}/")
    if evaluated:
        os.replace(run_dir / "eval.json", run_dir / f"eval.abandoned-{stamp}.json")
        moved.append(f"eval.json (of step {evaluated}) to eval.abandoned-{stamp}.json")
    what = (f"later steps of the run: this starts a branch from step {step}" if kept == step
            else "steps of another run (the checkpoint is not from this directory, and the "
                 f"directory did not log its step {step}): this run continues the checkpoint's")
    print(f"note: resuming from {source} (step {step}) while {run_dir} holds {what}. Those "
          f"steps are set aside, not deleted: {'; '.join(moved)}. `--resume auto` continues "
          f"this run; to go back to the other, resume from its newest checkpoint with "
          f"`--resume PATH`, or move its files back.", file=sys.stderr)


def history_kept(run_dir: Path, source: str, state: dict) -> int:
    """The last step of `run_dir` that is the history of checkpoint `source` (at `state`): its
    own step where it lies in run_dir/checkpoints (which holds one line of steps) or where the
    directory logged the very row the checkpoint ends with (the same step, elapsed_s and
    loss); -1 where the directory's steps are another run's."""
    step = int(state["step"])
    try:
        if Path(source).resolve().parent == (run_dir / "checkpoints").resolve():
            return step
    except OSError:
        pass
    own = state.get("metrics") or {}
    for line in _read_lines(run_dir / METRICS_NAME):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row_step(row) == step and own.get("elapsed_s") is not None:
            same = all(_same(row.get(k), own.get(k)) for k in ("elapsed_s", "loss"))
            return step if same else -1
    return -1


def _same(logged: Any, saved: Any) -> bool:
    """A metrics row's value and a checkpoint's: equal (non-finite ones are strings in rows)."""
    if isinstance(logged, str) and isinstance(saved, float):
        return logged == str(saved)
    return bool(logged == saved)


def _evaluated_after(eval_json: Path, step: int) -> int | None:
    """The step eval.json evaluated, where later than `step`; None otherwise."""
    try:
        data = json.loads(eval_json.read_text())
    except (OSError, ValueError):
        return None
    source = data.get("source") if isinstance(data, dict) else None
    found = source.get("step") if isinstance(source, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found > step:
        return found
    return None


def _free_stamp(run_dir: Path) -> str:
    """A UTC time stamp that names no abandoned checkpoints or rows yet in `run_dir`."""
    base = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    stamp, n = base, 1
    while any(run_dir.glob(f"*abandoned-{stamp}*")) or any(
            run_dir.glob(f"checkpoints/abandoned-{stamp}")):
        n += 1
        stamp = f"{base}-{n}"
    return stamp
