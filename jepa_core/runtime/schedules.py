"""Schedules as pure functions of the step, so resume is exact and runs can be re-plotted.

All take the step counted from 0 (the step about to run) and the run's total steps.
"""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, warmup_steps: int, start_lr: float,
                  peak_lr: float, final_lr: float) -> float:
    """Linear warmup from start_lr to peak_lr over warmup_steps, then cosine to final_lr."""
    if step < warmup_steps:
        return start_lr + (peak_lr - start_lr) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def weight_decay(step: int, total_steps: int, start_wd: float, final_wd: float) -> float:
    """Cosine ramp from start_wd at step 0 to final_wd at total_steps (I-JEPA: 0.04 → 0.4)."""
    progress = min(1.0, step / max(1, total_steps))
    return final_wd + 0.5 * (start_wd - final_wd) * (1.0 + math.cos(math.pi * progress))


def linear(step: int, total_steps: int, start: float, end: float) -> float:
    """Linear from start at step 0 to end at total_steps, constant after (EMA momentum)."""
    progress = min(1.0, max(0.0, step / max(1, total_steps)))
    return start + (end - start) * progress
