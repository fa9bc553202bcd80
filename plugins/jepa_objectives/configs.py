"""Config classes of the objectives plugin (no torch here)."""

from __future__ import annotations

from typing import Literal

import attrs

from jepa_core.validate import between, greater, range_pair


@attrs.frozen
class EMAConfig:
    """target <- m * target + (1 - m) * online; m linear from momentum[0] to momentum[1]."""

    momentum: tuple[float, float] = attrs.field(default=(0.996, 1.0), validator=range_pair(0, 1))
    # "foreach": one fused multi-tensor update; "loop": a per-tensor loop (the slow baseline).
    implementation: Literal["foreach", "loop"] = "foreach"


@attrs.frozen
class SmoothL1Config:
    """Smooth L1 (Huber with beta) between predictions and targets, mean over all elements."""

    beta: float = attrs.field(default=1.0, validator=greater(0))


@attrs.frozen
class L2Config:
    """Mean squared error between predictions and targets (the paper's text)."""

    reduction: Literal["mean"] = "mean"


# -- methods ------------------------------------------------------------------------------
@attrs.frozen
class IJEPAConfig:
    """I-JEPA: predict an EMA target encoder's block tokens from a context block."""

    def needs(self) -> tuple[str, ...]:
        return ("predictor", "masker", "target_updater", "loss")
