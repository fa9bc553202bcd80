"""MAE-style random-patch masker: a random context subset and M random target sets.

Per image: the context is a uniformly random set of round(context_ratio * N) patches; each of
the M target sets is a uniformly random set of round(target_ratio * N) patches drawn from the
patches outside the context (target sets may share patches with each other, as I-JEPA's target
blocks may). Every row has the same length, so no equalisation is needed.

Random keys come from the given generator; numpy orders them (torch's CPU sort costs ~5 us per
row on short rows, several times numpy's).
"""

from __future__ import annotations

import numpy as np
import torch

from jepa_core.errors import ConfigError
from jepa_core.interfaces import MaskBatch
from jepa_image.configs import RandomPatchConfig


class RandomPatchMasker:
    """grid: (gh, gw). __call__(B, generator) -> MaskBatch with context [B, Nc] int64 and
    targets [B, M, Nt] int64, both sorted in raster order; Nc, Nt fixed at construction."""

    def __init__(self, config: RandomPatchConfig, grid: tuple[int, int]):
        self.config = config
        self.grid = (int(grid[0]), int(grid[1]))
        n = self.grid[0] * self.grid[1]
        self.num_context = round(config.context_ratio * n)
        self.num_target = round(config.target_ratio * n)

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskBatch:
        n = self.grid[0] * self.grid[1]
        nc, nt, m = self.num_context, self.num_target, self.config.num_targets
        order = np.argsort(torch.rand(batch_size, n, generator=generator).numpy(), axis=1)
        context = np.sort(order[:, :nc], axis=1)  # [B, Nc]
        rest = order[:, nc:]  # [B, N - Nc], the patches targets may use
        keys = torch.rand(batch_size, m, n - nc, generator=generator).numpy()
        picks = np.argpartition(keys, nt - 1, axis=2)[..., :nt]  # [B, M, Nt] columns of rest
        targets = np.sort(np.take_along_axis(rest[:, None, :], picks, axis=2), axis=2)
        return MaskBatch(torch.from_numpy(context), torch.from_numpy(targets))

    def __repr__(self) -> str:
        return f"RandomPatchMasker(grid={self.grid}, config={self.config})"


def build_masker(config: RandomPatchConfig, grid: tuple[int, int]) -> RandomPatchMasker:
    """The factory registered as masker "random": raises ConfigError when the counts do not fit."""
    masker = RandomPatchMasker(config, grid)
    n = masker.grid[0] * masker.grid[1]
    where = f"on a {masker.grid[0]}x{masker.grid[1]} grid ({n} patches)"
    if masker.num_context < 1:
        raise ConfigError(f"masker random: context_ratio: {config.context_ratio} leaves no "
                          f"context patch {where}. Raise context_ratio or use a larger grid.")
    if masker.num_target < 1:
        raise ConfigError(f"masker random: target_ratio: {config.target_ratio} rounds to 0 "
                          f"target patches {where}. Raise target_ratio or use a larger grid.")
    if masker.num_context + masker.num_target > n:
        raise ConfigError(
            f"masker random: target_ratio: {masker.num_context} context + {masker.num_target} "
            f"target patches do not fit {where}; targets are drawn outside the context. "
            f"Make context_ratio + target_ratio at most 1.")
    return masker
