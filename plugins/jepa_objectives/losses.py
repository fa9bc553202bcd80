"""Prediction losses of I-JEPA: smooth L1 (what the released code trains with) and L2.

Both take predictions and targets of the same shape, [B, M, Nt, D], compute in float32 (inputs
may be bf16 under autocast) and return the mean over all elements as a 0-dim float32 tensor;
with `valid` [B, M, Nt] bool (padded target blocks), the mean over the elements of the valid
tokens only. Without `valid` the computation is exactly what it always was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jepa_objectives.configs import L1Config, L2Config, SmoothL1Config


def _check_shapes(predictions: torch.Tensor, targets: torch.Tensor) -> None:
    # Broadcasting would silently average the wrong pairs.
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets "
                         f"{tuple(targets.shape)} must have the same shape")


def valid_tokens(predictions: torch.Tensor, targets: torch.Tensor,
                 valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, targets) as float32, cut to the valid tokens ([K, D]) when `valid`
    [B, M, Nt] bool is given; unchanged otherwise."""
    _check_shapes(predictions, targets)
    predictions, targets = predictions.float(), targets.float()
    if valid is None:
        return predictions, targets
    if valid.shape != predictions.shape[:-1]:
        raise ValueError(f"valid {tuple(valid.shape)} must be the shape of predictions "
                         f"{tuple(predictions.shape)} without the last dimension")
    return predictions[valid], targets[valid]


class SmoothL1Loss:
    """mean(0.5 * d**2 / beta if |d| < beta else |d| - 0.5 * beta), d = prediction - target."""

    def __init__(self, beta: float = 1.0):
        self.beta = float(beta)

    def __call__(self, predictions: torch.Tensor, targets: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
        """predictions, targets [B, M, Nt, D], valid [B, M, Nt] bool | None -> [] float32."""
        predictions, targets = valid_tokens(predictions, targets, valid)
        return F.smooth_l1_loss(predictions, targets, beta=self.beta)


class L2Loss:
    """mean((prediction - target) ** 2): the squared L2 distance averaged over all elements."""

    def __call__(self, predictions: torch.Tensor, targets: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
        """predictions, targets [B, M, Nt, D], valid [B, M, Nt] bool | None -> [] float32."""
        predictions, targets = valid_tokens(predictions, targets, valid)
        return F.mse_loss(predictions, targets)


def build_smooth_l1(config: SmoothL1Config) -> SmoothL1Loss:
    """The registered factory of the "smooth_l1" loss."""
    return SmoothL1Loss(config.beta)


def build_l2(config: L2Config) -> L2Loss:
    """The registered factory of the "l2" loss."""
    return L2Loss()


class L1Loss:
    """mean(|prediction - target|): V-JEPA's loss (its loss_exp 1.0), over all elements."""

    def __call__(self, predictions: torch.Tensor, targets: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
        """predictions, targets [B, M, Nt, D], valid [B, M, Nt] bool | None -> [] float32."""
        predictions, targets = valid_tokens(predictions, targets, valid)
        return F.l1_loss(predictions, targets)


def build_l1(config: L1Config) -> L1Loss:
    """The registered factory of the "l1" loss."""
    return L1Loss()
