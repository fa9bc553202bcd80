"""LeJEPA (Balestriero & LeCun, 2025): several augmented views of each image; their projected
embeddings must agree (invariance) and be distributed as an isotropic Gaussian (SIGReg).
No teacher, no EMA, no stop-gradient, no masks.

    views [V, B, C, H, W] → encoder (one call on all views) → average pool → projector → z
    loss = lam · SIGReg(z) + (1 − lam) · invariance(z)

SIGReg's random directions come from (seed, "sigreg", step): new every step, the same on every
rank, and the projector's batch norm uses the statistics of the global batch (all views
together), so N processes × B/N train like one process × B. (Under gradient accumulation,
SIGReg and the batch norm see one micro-batch at a time.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jepa_core.interfaces import MethodOutput
from jepa_core.runtime.build import MethodParts
from jepa_core.seeding import generator
from jepa_objectives.regularizers import global_mean_var, lejepa_loss


class GlobalBatchNorm(nn.Module):
    """Batch normalisation over the global batch: [N, D] -> [N, D], statistics from the
    current batch only (train and eval alike; no running averages), then a learned affine.

    Under torch.distributed the mean and variance are those of all ranks' samples together
    (`global_mean_var`), so N processes × B/N normalise exactly like 1 process × B, which
    torch's BatchNorm1d (per-rank statistics) does not."""

    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = global_mean_var(x)
        with torch.autocast(x.device.type, enabled=False):
            y = (x.float() - mean) * torch.rsqrt(var + self.eps)
        return (y * self.weight + self.bias).to(x.dtype)


NORMS = {"batch": GlobalBatchNorm, "layer": nn.LayerNorm}


def projector(width: int, widths: tuple[int, ...], norm: str = "batch") -> nn.Sequential:
    """MLP width → widths[0] → ... → widths[-1]: Linear, norm, GELU between layers.

    norm "batch" (the authors' choice, global-batch statistics): each hidden unit is
    standardised across the batch, so the spread of the images' embeddings reaches SIGReg
    whatever its scale in the encoder's features. With "layer" (per sample), a random-init
    encoder's pooled features (a shared offset, the pooled positional embedding, plus a small
    image-dependent part) give nearly the same output for every image: training starts
    collapsed and the encoder ends worse than at init (see recipes/quickstart_lejepa.yaml).
    A Linear before a batch norm has no bias: the norm removes any shift, so the bias would
    have no effect on the loss, only a rounding-noise gradient that Adam turns into steps of
    order lr (and that differs with the number of processes)."""
    layers: list[nn.Module] = []
    for i, out in enumerate(widths):
        hidden = i < len(widths) - 1
        layers.append(nn.Linear(width, out, bias=not (hidden and norm == "batch")))
        if hidden:
            layers += [NORMS[norm](out), nn.GELU()]
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
            head = projector(int(encoder.embed_dim), tuple(config.projector),
                             config.projector_norm)
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
