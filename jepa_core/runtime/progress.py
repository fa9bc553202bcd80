"""Progress of a long phase that is not a training step (feature extraction, probe fitting).

On an interactive terminal a transient rich bar; elsewhere (CI, SLURM logs, a pipe) a line when
the phase starts, at most one line every `every_s` seconds while it runs, and one when it ends,
so logs show that work is going on without a line per batch.
"""

from __future__ import annotations

from typing import Any

from jepa_core.runtime import runlog

EVERY_S = 10.0  # seconds between plain progress lines


class Ticker:
    """`with Ticker(console, "extracting features", 1438, "images") as t: t.advance(64)`.
    console None: silent."""

    def __init__(self, console: Any, description: str, total: int, unit: str,
                 every_s: float = EVERY_S):
        self.console, self.description, self.total, self.unit = console, description, total, unit
        self.every_s, self.done = every_s, 0
        self.progress: Any = None  # a rich Progress on a terminal
        self.task: Any = None
        self._t0 = self._t_last = 0.0

    def __enter__(self) -> Ticker:
        self._t0 = self._t_last = runlog.now()
        if self.console is None:
            return self
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(TextColumn(self.description), BarColumn(),
                                     MofNCompleteColumn(), TextColumn(self.unit),
                                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=self.console,
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.description, total=self.total, rate="")
        else:
            self.console.print(f"{self.description}: {self.total} {self.unit}", markup=False)
        return self

    def advance(self, n: int = 1) -> None:
        """Count `n` more units done and update the bar (or the plain-text line)."""
        self.done += n
        if self.console is None:
            return
        t = runlog.now()
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, rate=self.rate(t))
            return
        if t - self._t_last >= self.every_s:
            self._t_last = t
            self.console.print(f"  {self.description}: {self.done}/{self.total} {self.unit} "
                               f"({t - self._t0:.0f} s, {self.rate(t)}, ETA "
                               f"{self.eta(t):.0f} s)", markup=False)

    def rate(self, t: float) -> str:
        """Units per second so far, e.g. "412 images/s"."""
        return f"{self.done / max(t - self._t0, 1e-9):.0f} {self.unit}/s"

    def eta(self, t: float) -> float:
        """Seconds left at the rate so far."""
        per_s = self.done / max(t - self._t0, 1e-9)
        return (self.total - self.done) / max(per_s, 1e-9)

    def __exit__(self, *exc: Any) -> None:
        if self.console is None:
            return
        if self.progress is not None:
            self.progress.stop()
        elif exc[0] is None:
            t = runlog.now()
            self.console.print(f"  {self.description}: done in {t - self._t0:.0f} s "
                               f"({self.rate(t)})", markup=False)
