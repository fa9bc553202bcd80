"""Timing two or more variants fairly on a busy machine: interleaved, with a verdict.

Timing one variant after the other lets a load spike land on one of them only. Here the
variants run in turns (A, B, A, B, ... after a warm-up of each), so a spike hits both, and
each gets a median, an interquartile range and a min-max. `verdict` says when the spread is
too wide for the ratio of the medians to mean anything, instead of printing it bare.

    times = interleave({"fast": step_a, "baseline": step_b}, iters=10, warmup=3)
    print(report(times, baseline="baseline"))
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable


def interleave(steps: dict[str, Callable[[int], None]], iters: int,
               warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each `steps[name](i)`, the variants called in turns: `warmup`
    rounds (not timed), then `iters` timed rounds. A callable may synchronise a device
    before returning; nothing here does it for it."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + iters):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(i)
            elapsed = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(elapsed)
    return times


def quartiles(times: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of at least one timing."""
    if len(times) < 2:
        return times[0], times[0], times[0]
    q1, q2, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, q2, q3


def verdict(fast: list[float], baseline: list[float]) -> tuple[float, str | None]:
    """(baseline median / fast median, None if that ratio can be trusted, else why not).

    Not trusted when the interquartile ranges of the two overlap (the variants are not told
    apart), or when either variant's min-max spread exceeds the gap between the medians (a few
    disturbed steps could have made the difference)."""
    f1, fm, f3 = quartiles(fast)
    b1, bm, b3 = quartiles(baseline)
    ratio = bm / fm
    gap = abs(bm - fm)
    if f1 <= b3 and b1 <= f3:
        return ratio, ("the interquartile ranges overlap: the variants are not told apart at "
                       "this load; rerun on an idle machine or with more --iters")
    spread = max(max(fast) - min(fast), max(baseline) - min(baseline))
    if spread > gap:
        return ratio, (f"a min-max spread of {1000 * spread:.1f} ms exceeds the "
                       f"{1000 * gap:.1f} ms between the medians: the machine was disturbed "
                       f"during the run; rerun on an idle machine or with more --iters")
    return ratio, None


def load() -> str:
    """The machine's 1-, 5- and 15-minute load averages and its core count, in words."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def report(times: dict[str, list[float]], fast: str, baseline: str,
           items: int | None = None) -> str:
    """Lines per variant (median, IQR, min-max, items/s) and the ratio with its verdict."""
    lines = []
    for name, ts in times.items():
        q1, med, q3 = quartiles(ts)
        rate = f"  {items / med:8.1f} items/s" if items else ""
        lines.append(f"{name:>9}: median {1000 * med:8.1f} ms  IQR {1000 * q1:.1f}-"
                     f"{1000 * q3:.1f}  min-max {1000 * min(ts):.1f}-{1000 * max(ts):.1f}  "
                     f"n={len(ts)}{rate}")
    ratio, doubt = verdict(times[fast], times[baseline])
    lines.append(f"speed-up {fast} vs {baseline}: {ratio:.2f}x ({load()})")
    if doubt:
        lines.append(f"WARNING: this ratio is not meaningful: {doubt}.")
    return "\n".join(lines)
