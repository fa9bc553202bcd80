"""Config classes of the objectives plugin (no torch here)."""

from __future__ import annotations

from typing import Literal

import attrs

from jepa_core.validate import Invalid, at_least, between, greater, range_pair


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


@attrs.frozen
class L1Config:
    """Mean absolute error between predictions and targets (V-JEPA)."""

    reduction: Literal["mean"] = "mean"


def _widths(_inst: object, _attr: object, value: tuple[int, ...]) -> None:
    if not value:
        raise Invalid("must list at least one width (the output width)")
    for i, width in enumerate(value):
        if width < 1:
            raise Invalid(f"must be >= 1 (got {width})", f"[{i}]")


# -- methods ------------------------------------------------------------------------------
@attrs.frozen
class IJEPAConfig:
    """I-JEPA: predict an EMA target encoder's block tokens from a context block."""

    def needs(self) -> tuple[str, ...]:
        return ("predictor", "masker", "target_updater", "loss")


@attrs.frozen
class CJEPAConfig:
    """C-JEPA: I-JEPA plus VICReg variance and covariance terms on pooled context features."""

    variance_weight: float = attrs.field(default=1.0, validator=at_least(0))
    covariance_weight: float = attrs.field(default=0.04, validator=at_least(0))
    target_std: float = attrs.field(default=1.0, validator=greater(0))  # the variance hinge

    def needs(self) -> tuple[str, ...]:
        return ("predictor", "masker", "target_updater", "loss")


@attrs.frozen
class SIGRegConfig:
    """SIGReg: Epps-Pulley statistic of random 1-D projections against N(0, 1)."""

    num_directions: int = attrs.field(default=256, validator=at_least(1))  # new every step
    knots: int = attrs.field(default=17, validator=at_least(3))  # trapezoid on [0, t_max]
    t_max: float = attrs.field(default=3.0, validator=greater(0))


@attrs.frozen
class LeJEPAConfig:
    """LeJEPA: views of an image agree (invariance) and embeddings are Gaussian (SIGReg);
    no teacher, no stop-gradient, no masks."""

    num_views: int = attrs.field(default=4, validator=at_least(2))
    lam: float = attrs.field(default=0.05, validator=between(0, 1))  # SIGReg's share
    # Hidden and output widths of the MLP projector after the pooled encoder.
    projector: tuple[int, ...] = attrs.field(default=(256, 256, 32), validator=_widths)
    # The norm between projector layers: "batch" (statistics of the global batch, so N
    # processes train exactly like one) or "layer" (per sample; starts collapsed, see
    # jepa_objectives.methods.lejepa.projector).
    projector_norm: Literal["batch", "layer"] = "batch"
    sigreg: SIGRegConfig = SIGRegConfig()

    def needs(self) -> tuple[str, ...]:
        return ()


@attrs.frozen
class IJEPASIGRegConfig:
    """I-JEPA's masks and predictor, with SIGReg on the encoder's pooled embeddings instead
    of an EMA teacher: the targets come from the same encoder, with gradients."""

    lam: float = attrs.field(default=0.05, validator=between(0, 1))  # SIGReg's share
    sigreg: SIGRegConfig = SIGRegConfig()

    def needs(self) -> tuple[str, ...]:
        return ("predictor", "masker", "loss")


@attrs.frozen
class VJEPAConfig:
    """V-JEPA: for each mask set of a clip (or image), predict the EMA target encoder's
    layer-normed tokens of its targets from its context; the loss is the mean over sets."""

    def needs(self) -> tuple[str, ...]:
        return ("predictor", "masker", "target_updater", "loss")
