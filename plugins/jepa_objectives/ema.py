"""The target-encoder update of I-JEPA: an exponential moving average of the context encoder.

    target <- m * target + (1 - m) * online,   m = momentum(step), linear from m0 to m1

computed as `target.lerp_(online, 1 - m)` (the same value; one read of each tensor and one
write, and exact at m = 1). What is averaged: the online module's *trainable* parameters, paired
with the target's by name. Left alone: buffers (the ViTs here have none; a BatchNorm's running
statistics would keep the target's own), and frozen parameters such as the fixed sin-cos
`pos_embed` (equal in both; averaging equal tensors would only add rounding drift).

Works on plain tensors and on FSDP2 DTensor parameters (torch implements `_foreach_lerp_` for
DTensors with matching placements).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from jepa_objectives.configs import EMAConfig

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile / DDP wrappers


def _plain_name(name: str) -> str:
    """A parameter name without leading wrapper prefixes, so a compiled or DDP-wrapped module
    pairs with a plain one."""
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def paired_parameters(online: nn.Module,
                      target: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(online params, target params): the online module's trainable parameters and the target's
    parameters of the same names, in the same order. ValueError if a name or shape is missing."""
    target_params = {_plain_name(n): p for n, p in target.named_parameters()}
    online_list, target_list = [], []
    for name, param in online.named_parameters():
        if not param.requires_grad:
            continue
        key = _plain_name(name)
        other = target_params.get(key)
        if other is None or other.shape != param.shape:
            found = "missing" if other is None else f"shape {tuple(other.shape)}"
            raise ValueError(
                f"EMA target has no parameter matching online {key!r} {tuple(param.shape)} "
                f"({found}); the target must be a copy of the online module")
        online_list.append(param)
        target_list.append(other)
    return online_list, target_list


class EMATargetUpdater:
    """A `TargetUpdater`: momentum(step) is a pure function; update() moves the target in place.

    momentum: (m0, m1), the value at step 0 and at step >= total_steps.
    implementation: "foreach" (one multi-tensor call) or "loop" (one call per tensor, the
        baseline). Both compute the same lerp and give identical results.
    The parameter pairing is cached per (online, target) and rebuilt when the target's
    parameters are replaced (e.g. wrapped by FSDP2 after the first update).
    """

    def __init__(self, momentum: tuple[float, float], total_steps: int,
                 implementation: Literal["foreach", "loop"] = "foreach"):
        if implementation not in ("foreach", "loop"):
            raise ValueError(f"unknown EMA implementation {implementation!r}")
        self.start, self.end = float(momentum[0]), float(momentum[1])
        self.total_steps = int(total_steps)
        self.implementation = implementation
        self._cache: dict[tuple[int, int], tuple[object, tuple[list, list]]] = {}

    def momentum(self, step: int) -> float:
        """m at `step`: start + (end - start) * step / total_steps, clamped to [start, end]
        outside [0, total_steps]. total_steps <= 0 means "already at the end"."""
        if self.total_steps <= 0:
            return self.end
        fraction = min(max(step / self.total_steps, 0.0), 1.0)
        return self.start + (self.end - self.start) * fraction

    def _pairs(self, online: nn.Module, target: nn.Module) -> tuple[list, list]:
        """The cached (online, target) parameter lists; rebuilt when the target's first
        parameter is no longer the one seen when caching (its parameters were replaced)."""
        key = (id(online), id(target))
        first = next(target.parameters(), None)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is first:
            return cached[1]
        pairs = paired_parameters(online, target)
        self._cache = {key: (first, pairs)}  # one entry: no stale modules kept alive
        return pairs

    @torch.no_grad()
    def update(self, online: nn.Module, target: nn.Module, step: int) -> None:
        """target <- m * target + (1 - m) * online with m = momentum(step), in place."""
        online_params, target_params = self._pairs(online, target)
        if not target_params:
            return
        weight = 1.0 - self.momentum(step)
        if self.implementation == "foreach":
            torch._foreach_lerp_(target_params, online_params, weight)
        else:
            for t, o in zip(target_params, online_params, strict=True):
                t.lerp_(o, weight)


def build_ema(config: EMAConfig, total_steps: int) -> EMATargetUpdater:
    """The registered factory: EMAConfig plus the run length -> EMATargetUpdater."""
    return EMATargetUpdater(config.momentum, total_steps, config.implementation)
