"""Loss terms of LeJEPA (SIGReg, invariance) and C-JEPA (VICReg variance and covariance).

Pure functions of tensors; they compute in float32 with autocast off (cos/sin of t·x and the
covariance products lose too much in bf16) and return 0-dim float32 tensors.

Distributed runs: the batch statistics (SIGReg's characteristic function, VICReg's mean,
variance and covariance) are summed over the ranks of `group` (default: the world, when
torch.distributed is initialised with more than one process) before any non-linearity, so the
value is that of the global batch, whatever the number of ranks. Gradients follow DDP's
convention: backward through the all-reduce sums the ranks' gradients, so each rank's local
gradient is world_size × the gradient of the global loss, and DDP's averaging of parameter
gradients gives exactly the single-process gradient (the same as for a per-sample mean loss
computed on the local shard). Each call costs one (SIGReg) or two (VICReg) all-reduces
(a sync point between ranks; none with the host).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# --- distributed helpers --------------------------------------------------------------------

def _world_size(group) -> int:
    """The number of ranks the statistics are summed over (1: no reduction)."""
    import torch.distributed as dist

    if group is not None:
        return dist.get_world_size(group)
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _global_sum(x: torch.Tensor, group) -> torch.Tensor:
    """x summed over the ranks of `group`, differentiably (backward sums the gradients)."""
    if _world_size(group) == 1:
        return x
    import torch.distributed as dist
    import torch.distributed._functional_collectives as fc

    # The functional all-reduce has autograd registered; torch.distributed.nn.functional's
    # all_reduce does the same but is deprecated (a FutureWarning on every call) in torch 2.14.
    return fc.all_reduce(x, "sum", group if group is not None else dist.group.WORLD)


def _sums_and_count(sums: torch.Tensor, count: int, group):
    """Per-rank sums [*] and sample count -> global sums [*] and global count [] float32, in
    one all-reduce: the count rides along as one more element, so shards of unequal size
    are exact, and it stays a tensor (no host sync)."""
    if _world_size(group) == 1:
        return sums, sums.new_tensor(float(count))
    packed = torch.cat([sums.reshape(-1), sums.new_tensor([float(count)])])
    packed = _global_sum(packed, group)
    return packed[:-1].reshape(sums.shape), packed[-1]


def global_mean_var(x: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and biased (÷N) variance [D] of x [N, D] over the global batch (the ranks of
    `group`), float32, differentiable; centred in two passes (two all-reduces under DDP)."""
    x = x.float()
    sums, n = _sums_and_count(x.sum(0), x.shape[0], group)
    mean = sums / n
    return mean, _global_sum((x - mean).square().sum(0), group) / n


# --- SIGReg ---------------------------------------------------------------------------------

def random_directions(dim: int, num: int, generator: torch.Generator,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """num unit directions in R^dim, [dim, num] float32, drawn from `generator` (never the
    global RNG) on the generator's device and then moved to `device`, so every rank (and
    every device type) given the same seed draws the same directions."""
    a = torch.randn(dim, num, generator=generator, device=generator.device, dtype=torch.float32)
    a = a / a.norm(dim=0, keepdim=True)
    return a.to(device) if device is not None else a


def _quadrature(knots: int, t_max: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots t [T] on [0, t_max] and weights [T]: trapezoid rule doubled (the integrand is
    even in t, so ∫ over [-t_max, t_max] is twice ∫ over [0, t_max]) times w(t) = exp(-t²/2)."""
    if knots < 2 or not t_max > 0:
        raise ValueError(f"sigreg needs knots >= 2 and t_max > 0, got knots={knots}, "
                         f"t_max={t_max}")
    t = torch.linspace(0.0, t_max, knots, dtype=torch.float32, device=device)
    dt = t_max / (knots - 1)
    weights = torch.full((knots,), 2 * dt, dtype=torch.float32, device=device)
    weights[0] = weights[-1] = dt
    return t, weights * torch.exp(-0.5 * t.square())


def _as_views(z: torch.Tensor) -> torch.Tensor:
    if z.ndim == 2:
        return z.unsqueeze(0)
    if z.ndim == 3:
        return z
    raise ValueError(f"expected embeddings [N, D] or [V, N, D], got shape {tuple(z.shape)}")


def sigreg(z: torch.Tensor, *, generator: torch.Generator | None = None,
           directions: torch.Tensor | None = None, num_directions: int = 256,
           knots: int = 17, t_max: float = 3.0, group=None) -> torch.Tensor:
    """SIGReg: how far embeddings are from an isotropic standard Gaussian. -> [] float32.

    z: [N, D] or [V, N, D] (V views of the same N samples; each view is tested on its own).
    The embeddings are projected on P unit directions, [D, P]: `directions` if given (columns
    are normalised), else `num_directions` drawn from `generator` (seed it from (seed, step)
    so that every rank draws the same ones). For each view and direction, the Epps–Pulley
    statistic against N(0, 1) of the projections x [N]:

        N · ∫ |φ̂(t) − exp(−t²/2)|² exp(−t²/2) dt,   φ̂(t) = mean cos(t x) + i mean sin(t x),

    by the trapezoid rule on `knots` points of [0, t_max], doubled. The result is the mean
    over directions and views. Its expectation on standard Gaussian embeddings is
    ∫ (1 − exp(−t²)) exp(−t²/2) dt, whatever N: 1.06 exactly, 1.05 by the default rule;
    collapse makes it grow like N.
    Distributed: the cos/sin means are over the global batch (N = global batch per view).
    """
    z = _as_views(z)
    views, n, dim = z.shape
    if directions is None:
        if generator is None:
            raise ValueError("sigreg needs a torch.Generator (seeded from (seed, step)) or a "
                             "directions tensor [D, P]; it never draws from the global RNG")
        directions = random_directions(dim, num_directions, generator, z.device)
    if directions.ndim != 2 or directions.shape[0] != dim:
        raise ValueError(f"directions must be [D={dim}, P], got {tuple(directions.shape)}")
    with torch.autocast(z.device.type, enabled=False):
        a = directions.to(z.device, torch.float32)
        a = a / a.norm(dim=0, keepdim=True)
        t, weights = _quadrature(knots, t_max, z.device)
        tx = (z.float() @ a).unsqueeze(-1) * t  # [V, N, P, T]
        sums = torch.stack([tx.cos().sum(1), tx.sin().sum(1)])  # [2, V, P, T]
        sums, n_global = _sums_and_count(sums, n, group)
        cos_mean, sin_mean = sums / n_global
        err = (cos_mean - torch.exp(-0.5 * t.square())).square() + sin_mean.square()
        return (err @ weights).mean() * n_global  # [V, P] -> []


# --- LeJEPA ---------------------------------------------------------------------------------

def invariance(z: torch.Tensor) -> torch.Tensor:
    """LeJEPA's prediction (invariance) term. z: [V, N, D], V >= 2 views -> [] float32.

        mean over v, n, d of (z[v, n, d] − mean over v' of z[v', n, d])²

    a per-element mean, i.e. the squared distance ||z_vn − mean_v z_n||² divided by D. This
    is the authors' definition (their minimal example), and it keeps the balance with
    SIGReg (which does not grow with D) independent of D, so their λ of 0.02–0.05 carries
    over. A per-sample mean: under DDP the local value's gradient is already right.
    """
    if z.ndim != 3 or z.shape[0] < 2:
        raise ValueError(f"invariance needs embeddings of at least 2 views, [V >= 2, N, D], "
                         f"got shape {tuple(z.shape)}")
    z = z.float()
    return (z - z.mean(0, keepdim=True)).square().mean()


class LeJEPALoss(NamedTuple):
    """The LeJEPA loss and its two terms, each a [] float32 tensor (log each on its own)."""

    total: torch.Tensor
    sigreg: torch.Tensor
    invariance: torch.Tensor


def lejepa_loss(z: torch.Tensor, lam: float, **sigreg_args) -> LeJEPALoss:
    """lam · sigreg(z) + (1 − lam) · invariance(z). z: [V >= 2, N, D]; lam in [0, 1];
    sigreg_args are passed to `sigreg` (generator or directions, num_directions, knots,
    t_max, group)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lejepa_loss: lam must be in [0, 1], got {lam}")
    sig = sigreg(z, **sigreg_args)
    inv = invariance(z)
    return LeJEPALoss(lam * sig + (1.0 - lam) * inv, sig, inv)


# --- VICReg (C-JEPA) ------------------------------------------------------------------------

def _check_features(x: torch.Tensor, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} expects pooled features [N, D], got shape {tuple(x.shape)}")


def _global_mean(x: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the global batch [D] and the global N [], for features x [N, D] float32."""
    if x.shape[0] < 2 and _world_size(group) == 1:
        # (Under DDP only the global batch must have 2; checking it would cost a host sync.)
        raise ValueError(f"VICReg statistics need at least 2 samples, got {x.shape[0]}")
    sums, n = _sums_and_count(x.sum(0), x.shape[0], group)
    return sums / n, n


def vicreg_variance(x: torch.Tensor, target_std: float = 1.0, eps: float = 1e-4,
                    group=None) -> torch.Tensor:
    """VICReg's variance term. x: [N, D] -> [] float32.

        mean over d of relu(target_std − sqrt(var_d + eps))

    var_d: the unbiased (N − 1) variance of dimension d over the global batch. Centred in
    two passes (global mean first) for accuracy in float32.
    """
    _check_features(x, "vicreg_variance")
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        mean, n = _global_mean(x, group)
        var = _global_sum((x - mean).square().sum(0), group) / (n - 1)  # [D]
        return torch.relu(target_std - torch.sqrt(var + eps)).mean()


def vicreg_covariance(x: torch.Tensor, group=None) -> torch.Tensor:
    """VICReg's covariance term. x: [N, D] -> [] float32.

        sum over d != d' of C[d, d']² / D

    C: the unbiased (N − 1) covariance [D, D] over the global batch, centred in two passes.
    """
    _check_features(x, "vicreg_covariance")
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        mean, n = _global_mean(x, group)
        centred = x - mean
        cov = _global_sum(centred.T @ centred, group) / (n - 1)  # [D, D]
        off_diagonal = cov.square().sum() - cov.diagonal().square().sum()
        return off_diagonal / x.shape[1]


__all__ = ["LeJEPALoss", "global_mean_var", "invariance", "lejepa_loss", "random_directions",
           "sigreg", "vicreg_covariance", "vicreg_variance"]
