"""`jepa check` on the CPU: time a few real training steps of the recipe on this machine.

A CPU has no published peak to plan against, so the plan measures instead: the recipe's models
built as `jepa run` builds them, real batches of its training data (masks and augmentation as
in training), a warm-up step and then a few timed `train_step`s (forward, backward, AdamW,
the target update). Memory is the peak resident set size (RSS) of this process.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import TYPE_CHECKING

import attrs
import torch

from jepa_core.recipe import Recipe

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry

WARMUP_STEPS = 1
TIMED_STEPS = 3
# A step of more FLOPs than this is not timed in a check (on a CPU at ~100 GFLOP/s: 10 s a
# step); and models this large are not built on the CPU just to be timed.
MAX_STEP_FLOPS = 1e12
MAX_PARAMETERS = 100_000_000


@attrs.frozen
class Measured:
    """What the timed steps took on this machine."""

    seconds_per_step: float  # median over the timed steps
    steps: int  # steps timed (after the warm-up)
    images_per_step: int
    peak_rss_bytes: int  # the process's peak resident set size when the steps ended
    threads: int  # torch's intra-op threads


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def too_large(step_flops: float | None, parameters: int) -> str | None:
    """Why the recipe is not timed on the CPU in a check, or None."""
    if step_flops is not None and step_flops > MAX_STEP_FLOPS:
        return (f"one step of this recipe is {step_flops / 1e12:,.1f} TFLOP, too much to time "
                f"on a CPU in a check")
    if parameters > MAX_PARAMETERS:
        return (f"its models have {parameters / 1e6:,.0f}M parameters, too many to build and "
                f"time on a CPU in a check")
    return None


def time_cpu_steps(recipe: Recipe, registry: Registry, steps: int = TIMED_STEPS) -> Measured:
    """Build the run as `jepa run` does on the CPU and time `steps` training steps after
    WARMUP_STEPS; the batches are loaded before the clock starts (data loading excluded)."""
    from jepa_core.runtime.data import train_loader
    from jepa_core.runtime.distributed import DistEnv
    from jepa_core.runtime.trainer import setup, train_step

    run = setup(recipe, registry, DistEnv())
    total = WARMUP_STEPS + steps
    run.stop_step = total
    loader = train_loader(run.parts.source, run.parts.masker, run.layout, seed=recipe.seed,
                          steps_per_epoch=run.parts.steps_per_epoch, start_step=0,
                          stop_step=total, num_workers=0, view_names=tuple(run.method.views))
    batches = list(loader)
    accum = run.layout.accum_steps
    times = []
    for i in range(total):
        start = time.perf_counter()
        train_step(run, batches[i * accum:(i + 1) * accum])
        times.append(time.perf_counter() - start)
    return Measured(statistics.median(times[WARMUP_STEPS:]), steps, run.layout.per_rank,
                    peak_rss_bytes(), torch.get_num_threads())
