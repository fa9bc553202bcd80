"""LeJEPA (Balestriero & LeCun, 2025): several augmented views of each image; their projected
embeddings must agree (invariance) and be distributed as an isotropic Gaussian (SIGReg).
No teacher, no EMA, no stop-gradient, no masks.

    views [V, B, C, H, W] → encoder (one call on all views) → average pool → projector → z
    loss = lam · SIGReg(z) + (1 − lam) · invariance(z)

SIGReg's random directions come from (seed, "sigreg", step): new every step, the same on every
rank, so N processes × B/N compute the same statistic as one process × B.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jepa_core.build import MethodParts
from jepa_core.interfaces import MethodOutput
from jepa_core.seeding import generator
from jepa_objectives.regularizers import lejepa_loss


def projector(width: int, widths: tuple[int, ...]) -> nn.Sequential:
    """MLP width → widths[0] → ... → widths[-1]: Linear, LayerNorm, GELU between layers. (The
    authors use BatchNorm; its batch statistics are per rank, so a run would then depend on
    the number of processes. LayerNorm is per sample.)"""
    layers: list[nn.Module] = []
    for i, out in enumerate(widths):
        layers.append(nn.Linear(width, out))
        if i < len(widths) - 1:
            layers += [nn.LayerNorm(out), nn.GELU()]
        width = out
    return nn.Sequential(*layers)


def sigreg_arguments(config: Any, seed: int, step: int) -> dict[str, Any]:
    """The `sigreg` keyword arguments of a step: its generator and quadrature."""
    return {"generator": generator(seed, "sigreg", step),
            "num_directions": config.num_directions, "knots": config.knots,
            "t_max": config.t_max}


class LeJEPA:
    trainable = ("encoder", "projector")
    eval_module = "encoder"

    def __init__(self, config: Any, parts: MethodParts):
        self.config, self.seed = config, parts.recipe.seed
        self.views = tuple(f"view{i}" for i in range(config.num_views))
        with parts.seeded_init():  # the encoder first: eval's random-init baseline is this draw
            encoder = parts.build("encoder")
            head = projector(int(encoder.embed_dim), tuple(config.projector))
        self.modules: dict[str, nn.Module] = {"encoder": encoder, "projector": head}

    def loss(self, modules: dict, batch: Any) -> MethodOutput:
        views = torch.cat([batch.views[name] for name in self.views])  # [V*B, C, H, W]
        b = batch.images.shape[0]
        pooled = modules["encoder"](views).mean(dim=1)  # [V*B, D]
        z = modules["projector"](pooled).float().reshape(len(self.views), b, -1)  # [V, B, K]
        out = lejepa_loss(z, self.config.lam,
                          **sigreg_arguments(self.config.sigreg, self.seed, batch.step))
        return MethodOutput(out.total, {"sigreg": out.sigreg, "invariance": out.invariance},
                            features=pooled[:b].detach())

    def after_step(self, step: int) -> None:
        """Nothing: there is no teacher."""

    def schedule_metrics(self, step: int) -> dict[str, float]:
        return {}


def build_lejepa(config: Any, parts: MethodParts) -> LeJEPA:
    return LeJEPA(config, parts)
