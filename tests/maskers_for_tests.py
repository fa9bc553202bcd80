"""Maskers that break (or keep) the masker contract in one way each, for the mask guard and
contract-kit tests. A plugin module: `jepa -p maskers_for_tests` registers masker "testmask"
(the `kind` field picks the behaviour), "padded" (target blocks of unequal size) and "twosets"
(two named mask sets, as V-JEPA's)."""

from __future__ import annotations

import random

import attrs
import numpy as np
import torch

from jepa_core.hookspecs import hookimpl
from jepa_core.interfaces import MaskBatch


@attrs.frozen
class TestMaskConfig:
    """Random context and two disjoint target blocks, broken as `kind` says."""

    kind: str = "good"


class TestMasker:
    """Context: 8 random patches; targets: 2 blocks of 3 other patches (needs N >= 14)."""

    def __init__(self, config: TestMaskConfig, grid: tuple[int, int]):
        self.config, self.grid = config, (int(grid[0]), int(grid[1]))
        self.allow_overlap = config.kind == "declared_overlap"

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskBatch:
        kind, n = self.config.kind, self.grid[0] * self.grid[1]
        if kind == "raises":
            raise ValueError("no masks today")
        keys = torch.rand(batch_size, n, generator=generator)
        if kind == "global_torch":
            keys = keys + torch.rand(batch_size, n)
        if kind == "hidden_global":  # global state restored afterwards: only a redraw sees it
            with torch.random.fork_rng(devices=[]):
                keys = keys + torch.rand(batch_size, n)
        if kind == "numpy_global":
            keys = keys + torch.from_numpy(np.random.rand(batch_size, n)).float()
        if kind == "python_random":
            keys = keys.roll(random.randrange(n), dims=1)
        if kind == "worker_state" and torch.utils.data.get_worker_info() is not None:
            keys = keys.flip(1)
        order = keys.argsort(dim=1)
        context = order[:, :8].sort(dim=1).values
        targets = order[:, 8:14].reshape(batch_size, 2, 3)
        if kind in ("leak", "declared_overlap"):
            targets = targets.clone()
            targets[3 % batch_size, 1, 0] = context[3 % batch_size, 0]
        if kind == "duplicate":
            context = context.clone()
            context[1, 2] = context[1, 1]
        if kind == "int32":
            context = context.int()
        if kind == "float":
            targets = targets.float()
        if kind == "targets_2d":
            targets = targets[:, 0]
        if kind == "out_of_range":
            targets = targets.clone()
            targets[2, 0, 1] = n + 5
        if kind == "tuple":
            return context, targets
        return MaskBatch(context, targets)


@attrs.frozen
class PaddedConfig:
    """Two target blocks of unequal size (1-3 and 3 patches), padded, with targets_valid."""


class PaddedMasker:
    """Context: 6 random patches; targets: block 0 has 1-3 patches (per sample), block 1 has
    3, padded to 3 by repeating the block's first index (targets_valid False there)."""

    def __init__(self, config: PaddedConfig, grid: tuple[int, int]):
        self.config, self.grid = config, (int(grid[0]), int(grid[1]))

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskBatch:
        n = self.grid[0] * self.grid[1]
        order = torch.rand(batch_size, n, generator=generator).argsort(dim=1)
        context = order[:, :6].sort(dim=1).values
        targets = order[:, 6:12].reshape(batch_size, 2, 3).clone()
        sizes = torch.randint(1, 4, (batch_size,), generator=generator)
        valid = torch.ones(batch_size, 2, 3, dtype=torch.bool)
        valid[:, 0] = torch.arange(3) < sizes[:, None]
        targets[:, 0] = torch.where(valid[:, 0], targets[:, 0], targets[:, 0, :1])
        return MaskBatch(context, targets, targets_valid=valid)


def build_test_masker(config: TestMaskConfig, grid: tuple[int, int]) -> TestMasker:
    return TestMasker(config, grid)


def build_padded(config: PaddedConfig, grid: tuple[int, int]) -> PaddedMasker:
    return PaddedMasker(config, grid)


@hookimpl
def register_maskers(register):
    register("testmask", TestMaskConfig, build_test_masker)
    register("padded", PaddedConfig, build_padded)
    register("twosets", TwoSetsConfig, build_two_sets)


@attrs.frozen
class TwoSetsConfig:
    """Two named mask sets per sample, as V-JEPA's masker gives them."""


class TwoSetsMasker:
    """{"short": context 10, targets 1 block of 4; "long": context 5, targets 1 block of 8},
    each a random disjoint split of the grid's patches (needs N >= 15)."""

    def __init__(self, config: TwoSetsConfig, grid: tuple[int, ...]):
        self.config, self.grid = config, tuple(int(g) for g in grid)

    def __call__(self, batch_size: int, generator: torch.Generator) -> dict:
        n = int(np.prod(self.grid))
        out = {}
        for name, context, target in (("short", 10, 4), ("long", 5, 8)):
            order = torch.rand(batch_size, n, generator=generator).argsort(dim=1)
            out[name] = MaskBatch(order[:, :context].sort(dim=1).values,
                                  order[:, context:context + target].sort(dim=1).values[:, None])
        return out


def build_two_sets(config: TwoSetsConfig, grid: tuple[int, ...]) -> TwoSetsMasker:
    return TwoSetsMasker(config, grid)
