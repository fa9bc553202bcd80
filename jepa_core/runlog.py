"""Run output on rank 0: metrics.jsonl (every step), and progress on the terminal.

On an interactive terminal a rich progress bar (step, img/s, loss, ETA); elsewhere (CI, SLURM
logs) one plain line every `train.log_every` steps, so logs stay readable.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

COLLAPSE_STD = 1e-2  # pooled target features this flat across a batch mean collapse


class RunLogger:
    def __init__(self, run: Any, stop_step: int, console: Any = None):
        from rich.console import Console

        self.run, self.stop = run, stop_step
        self.main = run.dist.is_main
        self.console = console or Console(stderr=False, highlight=False)
        self.every = run.recipe.train.log_every
        self.file = None
        self.progress = None
        self.task = None
        self._t0 = self._t_last = time.perf_counter()
        self._images_since = 0
        self._warned = False

    def __enter__(self) -> "RunLogger":
        if not self.main:
            return self
        self.file = open(self.run.run_dir / "metrics.jsonl", "a")
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

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

    def step_end(self, metrics: dict[str, float]) -> None:
        self._images_since += self.run.layout.global_batch
        now = time.perf_counter()
        if self.run.step % self.every == 0 or self.run.step == self.stop:
            metrics["img_per_s"] = self._images_since / max(now - self._t_last, 1e-9)
            self._t_last, self._images_since = now, 0
        if not self.main:
            return
        metrics["elapsed_s"] = now - self._t0
        self.file.write(json.dumps({k: _num(v) for k, v in metrics.items()}) + "\n")
        self.file.flush()
        self._check_collapse(metrics)
        if "img_per_s" not in metrics:
            if self.progress is not None:
                self.progress.update(self.task, completed=self.run.step)
            return
        rank = metrics.get("effective_rank", float("nan"))
        info = (f"loss {metrics['loss']:.4f}  {metrics['img_per_s']:.1f} img/s  "
                f"lr {metrics['lr']:.2e}  rank {rank:.1f}")
        if self.progress is not None:
            self.progress.update(self.task, completed=self.run.step, info=info)
        else:
            eta = (self.stop - self.run.step) * (now - self._t0) / max(1, self.run.step)
            self.console.print(f"step {self.run.step}/{self.stop}  {info}  eta {eta:.0f}s")

    def _check_collapse(self, metrics: dict[str, float]) -> None:
        if metrics.get("target_std", 1.0) < COLLAPSE_STD and not self._warned:
            self._warned = True
            self.console.print(
                f"[yellow]warning:[/yellow] target features barely vary across the batch "
                f"(std {metrics['target_std']:.2e} at step {self.run.step}): the representation "
                f"may be collapsing. Check the lr, the EMA momentum and the masker.")


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
