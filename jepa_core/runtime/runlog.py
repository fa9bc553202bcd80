"""Run output on rank 0: metrics.jsonl (every step), and progress on the terminal.

On an interactive terminal a rich progress bar (step, img/s, loss, ETA); elsewhere (CI, SLURM
logs) one plain line every `train.log_every` steps, so logs stay readable.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from jepa_core.errors import RunError
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime import threads

COLLAPSE_STD = 1e-2  # pooled target features this flat across a batch mean collapse
# No step count of a real run comes near this; a larger one is not a row jepa wrote. Below
# 2**53 every whole number is exact as a float, so `float(step)` round-trips.
MAX_STEP = 2**53


def now() -> float:
    """The clock of the run log (seconds, monotonic)."""
    return time.perf_counter()


def eta_seconds(step: int, start_step: int, stop_step: int, elapsed: float) -> float | None:
    """Seconds left at `step`, from the pace of this process: `elapsed` seconds for the
    steps it trained itself (from `start_step`, where a resumed run began), not since step 0.
    None before this process has finished a step."""
    done = step - start_step
    if done <= 0:
        return None
    return (stop_step - step) * elapsed / done


def _figure(metrics: dict[str, float], key: str, fmt: str) -> str:
    """The metric formatted, or '-' where this step has none (or it is not finite)."""
    value = metrics.get(key)
    if value is None or not math.isfinite(value):
        return "-"
    return format(value, fmt)


class RunLogger:
    """A run's logging, as a with-block: metrics.jsonl lines and the progress bar (main
    process only), and the warnings about collapsing representations."""
    def __init__(self, run: Any, stop_step: int, console: Any = None):
        from rich.console import Console

        self.run, self.stop = run, stop_step
        self.main = run.dist.is_main
        self.console = console or Console(stderr=False, highlight=False)
        self.every = run.recipe.train.log_every
        self.file: MetricsFile | None = None  # opened on entry, main process only
        self.progress: Any = None  # a rich Progress on a terminal
        self.task: Any = None
        self.start_step = run.step  # where this process began (a resumed run: not 0)
        self._t0 = self._t_last = now()
        self._images_since = 0
        self._warned = False

    def __enter__(self) -> RunLogger:
        if not self.main:
            return self
        self.file = MetricsFile(self.run.run_dir / "metrics.jsonl")
        found = threads.settings(self.run.recipe.train.threads)
        self.console.print(threads.header(found), soft_wrap=True, markup=False)
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                     TimeRemainingColumn(), console=self.console)
            self.progress.start()
            self.task = self.progress.add_task(self.run.recipe.name, total=self.stop,
                                               completed=self.run.step, info="")
        else:
            self.console.print(f"training {self.run.recipe.name}: steps {self.run.step}→"
                               f"{self.stop}, {self.run.layout.global_batch} images/step on "
                               f"{self.run.dist.world_size} process(es), device "
                               f"{self.run.device}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.main and (self.run.skipped_samples or self.run.nonfinite_total):
            self.console.print(
                f"[yellow]note:[/yellow] {self.run.skipped_samples} unreadable sample(s) were "
                f"skipped and {self.run.nonfinite_total} step(s) with a non-finite loss or "
                f"gradient were skipped (counts in metrics.jsonl).")
        if self.file is not None:
            self.file.close()
            self.file = None

    def add_row(self, row: dict[str, Any], line: str) -> None:
        """A row that is not a training step's (the in-training kNN) and its console line;
        after the logger has closed (the last checkpoint) the file is opened for this row."""
        if not self.main:
            return
        text = json.dumps({k: _num(v) for k, v in row.items()}) + "\n"
        if self.file is not None:
            self.file.append(text, row["step"])
        else:
            file = MetricsFile(self.run.run_dir / "metrics.jsonl")
            try:
                file.append(text, row["step"])
            finally:
                file.close()
        self.console.print(line, soft_wrap=True, markup=False)

    def step_end(self, metrics: dict[str, float]) -> None:
        """Log one step's metrics: throughput every `log_every` steps, a metrics.jsonl line and
        the progress bar on the main process, and the collapse check."""
        self._images_since += self.run.layout.global_batch
        t = now()
        if self.run.step % self.every == 0 or self.run.step == self.stop:
            metrics["img_per_s"] = self._images_since / max(t - self._t_last, 1e-9)
            self._t_last, self._images_since = t, 0
        if not self.main:
            return
        metrics["elapsed_s"] = t - self._t0
        assert self.file is not None, "log() outside the logger's with-block"
        self.file.append(json.dumps({k: _num(v) for k, v in metrics.items()}) + "\n",
                         self.run.step)
        self._check_collapse(metrics)
        if "img_per_s" not in metrics:
            if self.progress is not None:
                self.progress.update(self.task, completed=self.run.step)
            return
        info = (f"loss {_figure(metrics, 'loss', '.4f')}  {metrics['img_per_s']:.1f} img/s  "
                f"lr {metrics['lr']:.2e}  rank {_figure(metrics, 'effective_rank', '.1f')}")
        if self.progress is not None:
            self.progress.update(self.task, completed=self.run.step, info=info)
        else:
            eta = eta_seconds(self.run.step, self.start_step, self.stop, t - self._t0)
            self.console.print(f"step {self.run.step}/{self.stop}  {info}  "
                               f"eta {'-' if eta is None else f'{eta:.0f}s'}")

    def _check_collapse(self, metrics: dict[str, float]) -> None:
        if metrics.get("target_std", 1.0) < COLLAPSE_STD and not self._warned:
            self._warned = True
            self.console.print(
                f"[yellow]warning:[/yellow] target features barely vary across the batch "
                f"(std {metrics['target_std']:.2e} at step {self.run.step}): the representation "
                f"may be collapsing. Check the lr, the EMA momentum and the masker.")


class MetricsFile:
    """metrics.jsonl, appended one whole row at a time: a row that cannot be written in full
    (full disk, I/O error) is cut off again, so the file never holds a torn line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self.size = os.fstat(self.fd).st_size

    def append(self, line: str, step: int) -> None:
        """Write `line` with one append (whole, or RunError naming the file and `step`)."""
        data = line.encode()
        try:
            done = 0
            while done < len(data):  # one write, unless the kernel takes only part of it
                done += os.write(self.fd, data[done:])
        except OSError as exc:
            try:
                os.ftruncate(self.fd, self.size)
                cut = True
            except OSError:
                cut = False
            raise self._failure(exc, step, cut) from None
        self.size += len(data)

    def _failure(self, exc: OSError, step: int, cut: bool) -> RunError:
        full = " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        tail = ("the file ends with the last whole row" if cut
                else "its last line may be torn (a resume drops it)")
        found = ckpt.list_checkpoints(self.path.parent / "checkpoints")
        kept = (f"The previous checkpoint, {found[-1]}, is intact: make room, then continue "
                f"with `jepa run RECIPE --resume auto`." if found else
                "No checkpoint was written before this step (train.checkpoint_every), so "
                "`--resume auto` will start over once there is room.")
        return RunError(f"could not write the row of step {step} to {self.path}: "
                        f"{exc.strerror or exc}{full}. The run stops; {tail}. {kept}")

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)


def row_step(row: Any) -> int | None:
    """The step of a metrics.jsonl row (a parsed JSON value), or None where the row has none
    that a run could have written: not a dict, no "step", a bool, NaN or infinite, not a whole
    number, negative, or beyond MAX_STEP (e.g. a row edited by hand or by another tool)."""
    step = row.get("step") if isinstance(row, dict) else None
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        return None
    if isinstance(step, float) and not (math.isfinite(step) and step.is_integer()):
        return None
    return int(step) if 0 <= step <= MAX_STEP else None


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def describe_outputs(run_dir: Path, evaluated: dict | None = None) -> list[str]:
    """What a run left in `run_dir`, one line per output that exists: the resolved recipe,
    the checkpoints, metrics.jsonl and eval.json, each with what it holds. `evaluated`: the
    eval.json this invocation wrote (its table printed above); None when it evaluated
    nothing, so an eval.json found is an earlier one, described as such."""
    run_dir = Path(run_dir)
    lines = [f"run directory: {run_dir}/"]
    if (run_dir / "recipe.yaml").is_file():
        lines.append("  recipe.yaml     the resolved recipe, overrides included")
    found = ckpt.list_checkpoints(run_dir / "checkpoints")
    if found:
        names = ", ".join(p.name for p in found)
        lines.append(f"  checkpoints/    {len(found)} checkpoint(s): {names} (continue with "
                     f"`--resume auto`; probe with `jepa eval {run_dir}`)")
    abandoned = sorted((run_dir / "checkpoints").glob("abandoned-*"))
    if abandoned:
        lines.append(f"  checkpoints/abandoned-*/  {len(abandoned)} branch(es) set aside when "
                     f"the run was resumed from an earlier step (their metrics rows in "
                     f"metrics.abandoned-*.jsonl); kept, never resumed by `--resume auto`")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows, live = metrics_rows(metrics)
        knn = f"; {live} in-training kNN row(s) (live_knn)" if live else ""
        lines.append(f"  metrics.jsonl   {rows} row(s), one per step: loss, lr, img/s, token "
                     f"counts, representation health{knn}; draw them with `jepa plot "
                     f"{run_dir}`")
    if (run_dir / "eval.json").is_file():
        lines.append("  eval.json       " + eval_json_line(run_dir, evaluated, found))
    features = run_dir / "features"
    if features.is_dir():
        lines.append(f"  features/       {size_text(folder_bytes(features))}: the evaluation's "
                     f"feature cache, reused by `jepa eval` of the same weights; safe to "
                     f"delete (it is extracted again when needed)")
    return lines


def metrics_rows(path: Path) -> tuple[int, int]:
    """(step rows, in-training kNN rows) of a metrics.jsonl: how a run counts its rows, so
    every message that counts them gives the same figures. (0, 0) when it does not exist."""
    steps = live = 0
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                if b'"live_knn"' in line:
                    live += 1
                else:
                    steps += 1
    except FileNotFoundError:
        pass
    return steps, live


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (those that vanish meanwhile are not counted)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def size_text(n: int) -> str:
    """"41.2 MiB", or "1.20 GiB" from 1 GiB."""
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def eval_json_line(run_dir: Path, evaluated: dict | None, found: list[Path]) -> str:
    """What the summary says of `run_dir`/eval.json: this invocation's probes, printed above,
    or an earlier evaluation, of which step and checkpoint."""
    import json

    try:
        saved = json.loads((run_dir / "eval.json").read_text())
    except (OSError, ValueError):
        saved = None
    # the file on disk, not merely an evaluation: a failed write leaves an older one there
    if evaluated is not None and saved == json.loads(json.dumps(evaluated)):
        failed = len(evaluated.get("failed") or [])
        return ("the probe accuracies above, and which images they used" + (
            f"; {failed} protocol failure(s) under \"failed\"" if failed else ""))
    source = saved.get("source") if isinstance(saved, dict) else None
    source = source if isinstance(source, dict) else {}
    step = source.get("step")
    of = f"of step {step} ({source.get('checkpoint', '?')})" if isinstance(step, int) else (
        "of an unknown step")
    newest = ckpt.step_of(found[-1]) if found else None
    if isinstance(step, int) and newest is not None and step != newest:
        of += f", not of the newest checkpoint (step {newest})"
    now = ("this invocation evaluated nothing (nothing printed above)" if evaluated is None
           else "this invocation's evaluation above could not replace it")
    return (f"from an earlier evaluation {of}: {now}; `jepa eval {run_dir}` evaluates the "
            f"newest checkpoint")
