"""The checkerboard masker. Per batch, a coin picks which colour is the context (so every row
has the same length); per image, `num_targets` distinct whole cells of the other colour are
the targets. Every draw comes from the generator it is given."""

import torch

from jepa_core.errors import ConfigError
from jepa_core.interfaces import MaskBatch


class CheckerboardMasker:
    def __init__(self, config, grid):
        self.config, self.grid = config, (int(grid[0]), int(grid[1]))
        (gh, gw), k = self.grid, config.cell
        colour = (torch.arange(gh)[:, None] // k + torch.arange(gw)[None, :] // k) % 2
        self.patches = [(colour.flatten() == c).nonzero().squeeze(1) for c in (0, 1)]  # [Nc]
        corners = [(i, j) for i in range(0, gh - k + 1, k) for j in range(0, gw - k + 1, k)]
        offsets = (torch.arange(k)[:, None] * gw + torch.arange(k)).flatten()  # [k*k]
        self.cells = [  # per colour: [whole cells, k*k] patch indices
            torch.tensor([i * gw + j for i, j in corners if (i // k + j // k) % 2 == c],
                         dtype=torch.int64).reshape(-1, 1) + offsets
            for c in (0, 1)]

    def __call__(self, batch_size, generator):
        context_colour = int(torch.randint(2, (1,), generator=generator))
        cells = self.cells[1 - context_colour]
        keys = torch.rand(batch_size, len(cells), generator=generator)
        picked = keys.argsort(dim=1)[:, : self.config.num_targets]  # [B, M] distinct cells
        context = self.patches[context_colour].expand(batch_size, -1).clone()  # [B, Nc]
        return MaskBatch(context, cells[picked])  # targets [B, M, k*k]


def build_masker(config, grid):
    masker = CheckerboardMasker(config, grid)
    fewest = min(len(cells) for cells in masker.cells)
    if fewest < config.num_targets:
        raise ConfigError(
            f"masker checkerboard: num_targets: a {grid[0]}x{grid[1]} grid holds only {fewest} "
            f"whole {config.cell}x{config.cell} cells of one colour, fewer than num_targets="
            f"{config.num_targets}. Lower num_targets or cell, or use a larger grid.")
    return masker
