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
        self.every_s, self.done, self.cached = every_s, 0, 0
        self._done_last = 0  # units computed (not cached) at the previous plain line
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

    def advance(self, n: int = 1, cached: bool = False) -> None:
        """Count `n` more units done and update the bar (or the plain-text line); `cached`:
        units read from a cache rather than computed, left out of the rate."""
        self.done += n
        self.cached += n if cached else 0
        if self.console is None:
            return
        t = runlog.now()
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, rate=self.rate(t))
            return
        if t - self._t_last >= self.every_s:
            eta = self.eta(t)
            left = f", ETA {eta:.0f} s" if eta is not None else ""
            self._t_last, self._done_last = t, self.done - self.cached
            self.console.print(f"  {self.description}: {self.done}/{self.total} {self.unit} "
                               f"({t - self._t0:.0f} s, {self.rate(t)}{left})", markup=False)

    def rate(self, t: float) -> str:
        """The units computed per second so far, e.g. "412 images/s", or under one a second
        "3.2 s per epoch"; "" when nothing was computed yet (all read from a cache)."""
        worked = self.done - self.cached
        if worked <= 0:
            return ""
        per_s = worked / max(t - self._t0, 1e-9)
        if per_s >= 1:
            return f"{per_s:.0f} {self.unit}/s"
        one = self.unit[:-1] if self.unit.endswith("s") else self.unit
        return f"{1 / per_s:.1f} s per {one}"

    def eta(self, t: float) -> float | None:
        """Seconds left at the rate since the previous line (the recent rate: the average
        since the start hides a phase that slowed down), or None before any unit was
        computed in that time."""
        recent = (self.done - self.cached) - self._done_last
        if recent <= 0 or t <= self._t_last:
            return None
        return (self.total - self.done) * (t - self._t_last) / recent

    def __exit__(self, *exc: Any) -> None:
        if self.console is None:
            return
        if self.progress is not None:
            self.progress.stop()
        elif exc[0] is None:
            t = runlog.now()
            self.console.print(f"  {self.description}: {self.summary(t)}", markup=False)

    def summary(self, t: float) -> str:
        """The closing words: "done in 20 s (15 images/s)", with how many units came from
        the cache, or "read from the cache" when all of them did (no rate to give)."""
        if self.cached and self.cached >= self.done:
            return f"read from the cache ({self.done} {self.unit}, {t - self._t0:.0f} s)"
        cache = f"; {self.cached} read from the cache" if self.cached else ""
        rate = self.rate(t)
        return f"done in {t - self._t0:.0f} s" + (f" ({rate}{cache})" if rate or cache else "")
