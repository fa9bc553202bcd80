"""The I-JEPA multi-block masker, vectorised over the batch.

One call draws, for a batch of B images on a (gh, gw) patch grid:

1. block sizes, once per batch (so index tensors stack): one (h, w) shared by all M target
   blocks, one (h, w) for the context block(s);
2. block positions, per sample: M target blocks and `num_context` context blocks (the context
   is the union of its blocks; 1 in I-JEPA);
3. the context minus every target patch (unless `allow_overlap`), redrawing the positions of
   the samples left with fewer than `min_keep` context patches (at most `MAX_REDRAWS` rounds);
4. one [B, Nc] context tensor out of rows of unequal length.

Two styles (see the "official sampler's quirks" in the project reference):

- "reference" reproduces the official sampler's distribution: one uniform draw u sets both the
  scale (lo + u (hi - lo)) and the aspect ratio (lo + u (hi - lo)) of a block, so large blocks
  are tall; h and w are capped at grid - 1 and top-left corners are drawn from [0, grid - size),
  so the last row and column are never in a block; rows are cut to the batch minimum by keeping
  their first indices in raster order. Its infinite loop and global-RNG use are not reproduced.
- "corrected" (default): independent draws of scale and log-aspect, sizes capped at the grid,
  corners drawn from [0, grid - size] (every patch reachable), and rows equalised without bias:
  a uniformly random subset of each row ("subset") or padding with `context_valid` ("pad").

Fallback: a sample still short of `min_keep` after the redraws removes the target blocks from
its context one by one, in order, and stops before the one that would leave fewer than
`min_keep` patches (the official sampler also gives up targets after repeated failures); its
context then overlaps the targets it kept. `sample_with_stats` counts such samples. The
build-time check guarantees the uncarved context block always holds `min_keep` patches, so a
call never loops for long and never fails.

h = round(sqrt(area * aspect)) and w = round(sqrt(area / aspect)) are monotone in the scale
and in the aspect draw (for "reference", area / aspect is a ratio of two linear functions of u),
so their extremes over a config's ranges are reached at the ends of the ranges.
"""

from __future__ import annotations

import math

import attrs
import torch

from jepa_core.errors import ConfigError
from jepa_core.interfaces import MaskBatch
from jepa_image.configs import MultiBlockConfig

MAX_REDRAWS = 20  # rounds of position redraws for samples short of min_keep
Size = tuple[int, int]


@attrs.frozen
class MaskDrawStats:
    """What happened inside one call (for `jepa masks` and tests).

    context_sizes: [B] int64, context patches per sample before equalisation.
    target_size / context_size: (h, w) of the target blocks / of each context block.
    redraw_rounds: rounds of position redraws; fallbacks: samples that kept overlap.
    """

    context_sizes: torch.Tensor
    target_size: Size
    context_size: Size
    redraw_rounds: int
    fallbacks: int


def block_size(scale: float, aspect: float, grid: Size, cap: Size, *,
               floor_area: bool = False) -> Size:
    """(h, w) in patches of a block covering `scale` of the grid with h / w ~ `aspect`.

    floor_area: round the area down to whole patches first, as the official sampler does.
    """
    area = scale * grid[0] * grid[1]
    area = math.floor(area) if floor_area else area
    h = round(math.sqrt(area * aspect))
    w = round(math.sqrt(area / aspect))
    return min(h, cap[0]), min(w, cap[1])


class MultiBlockMasker:
    """Samples I-JEPA multi-block masks on a fixed grid; see the module docstring.

    grid: (gh, gw) patches. __call__(B, generator) -> MaskBatch with context [B, Nc] int64
    (sorted, raster order), targets [B, M, h*w] int64 (raster order inside each block),
    context_valid [B, Nc] bool only with context_equalize="pad" in the corrected style.
    """

    def __init__(self, config: MultiBlockConfig, grid: Size):
        self.config = config
        self.grid = (int(grid[0]), int(grid[1]))
        self.reference = config.style == "reference"
        self.cap = (self.grid[0] - 1, self.grid[1] - 1) if self.reference else self.grid

    # -- sizes ---------------------------------------------------------------------------
    def size_for(self, u_scale: float, u_aspect: float, scale: tuple[float, float],
                 aspect: tuple[float, float]) -> Size:
        """(h, w) for uniform draws in [0, 1]; the reference style passes u_aspect = u_scale."""
        s = scale[0] + u_scale * (scale[1] - scale[0])
        if self.reference:
            ar = aspect[0] + u_aspect * (aspect[1] - aspect[0])
        else:
            ar = math.exp(math.log(aspect[0]) + u_aspect * math.log(aspect[1] / aspect[0]))
        return block_size(s, ar, self.grid, self.cap, floor_area=self.reference)

    def draw_sizes(self, generator: torch.Generator) -> tuple[Size, Size]:
        """(target (h, w), context (h, w)) for one batch: the first draws of every call."""
        c = self.config
        sizes = []
        for scale, aspect in ((c.target_scale, c.target_aspect), (c.context_scale, c.context_aspect)):
            u = torch.rand(2, generator=generator).tolist()
            sizes.append(self.size_for(u[0], u[0] if self.reference else u[1], scale, aspect))
        return sizes[0], sizes[1]

    # -- positions -----------------------------------------------------------------------
    def draw_corners(self, n: int, k: int, size: Size,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-left corners of k blocks for n samples: (tops [n, k], lefts [n, k]) int64."""
        slack = 0 if self.reference else 1  # reference: corners in [0, grid - size) exclusive
        tops = torch.randint(0, self.grid[0] - size[0] + slack, (n, k), generator=generator)
        lefts = torch.randint(0, self.grid[1] - size[1] + slack, (n, k), generator=generator)
        return tops, lefts

    def cover(self, tops: torch.Tensor, lefts: torch.Tensor, size: Size) -> torch.Tensor:
        """[n, k, N] bool: which patches each block covers (corners [n, k])."""
        rows = torch.arange(self.grid[0])
        cols = torch.arange(self.grid[1])
        in_rows = (rows >= tops[..., None]) & (rows < tops[..., None] + size[0])
        in_cols = (cols >= lefts[..., None]) & (cols < lefts[..., None] + size[1])
        return (in_rows[..., :, None] & in_cols[..., None, :]).flatten(-2)

    def place(self, n: int, tsize: Size, csize: Size, generator: torch.Generator):
        """Draw positions for n samples: (target corners, target cover [n, M, N],
        context cover [n, N], kept context [n, N])."""
        c = self.config
        tops, lefts = self.draw_corners(n, c.num_targets, tsize, generator)
        ctops, clefts = self.draw_corners(n, c.num_context, csize, generator)
        tcover = self.cover(tops, lefts, tsize)
        ccover = self.cover(ctops, clefts, csize).any(1)
        keep = ccover if c.allow_overlap else ccover & ~tcover.any(1)
        return (tops, lefts), tcover, ccover, keep

    def place_with_redraws(self, batch_size: int, tsize: Size, csize: Size,
                           generator: torch.Generator):
        """Positions for the batch, redrawing short samples: (tops, lefts [B, M], keep [B, N],
        rounds, fallbacks)."""
        (tops, lefts), tcover, ccover, keep = self.place(batch_size, tsize, csize, generator)
        rounds = 0
        short = keep.sum(1) < self.config.min_keep
        while bool(short.any()) and rounds < MAX_REDRAWS:
            rows = short.nonzero().squeeze(1)
            (t2, l2), tc2, cc2, k2 = self.place(len(rows), tsize, csize, generator)
            tops[rows], lefts[rows], tcover[rows], ccover[rows], keep[rows] = t2, l2, tc2, cc2, k2
            short = keep.sum(1) < self.config.min_keep
            rounds += 1
        fallbacks = int(short.sum())
        if fallbacks:
            keep[short] = self.partial_carve(ccover[short], tcover[short])
        return tops, lefts, keep, rounds, fallbacks

    def partial_carve(self, ccover: torch.Tensor, tcover: torch.Tensor) -> torch.Tensor:
        """[n, N] context with the longest prefix of target blocks removed that leaves at
        least min_keep patches (ccover [n, N], tcover [n, M, N])."""
        removed = tcover.to(torch.uint8).cumsum(1) > 0  # [n, M, N]: union of the first k+1
        carved = ccover[:, None, :] & ~removed
        ok = carved.sum(-1) >= self.config.min_keep  # [n, M], True on a prefix
        k = ok.sum(1)  # number of targets we can remove
        full = torch.cat([ccover[:, None, :], carved], dim=1)  # [n, M+1, N]
        return full[torch.arange(len(k)), k]

    # -- equalisation --------------------------------------------------------------------
    def equalize(self, keep: torch.Tensor, generator: torch.Generator):
        """Rows of a [B, N] bool mask -> (context [B, Nc] int64, context_valid [B, Nc] | None)."""
        counts = keep.sum(1)
        first = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)  # kept first, raster
        if self.reference:
            return first[:, : int(counts.min())], None
        if self.config.context_equalize == "pad":
            length = int(counts.max())
            idx = first[:, :length]
            valid = torch.arange(length) < counts[:, None]
            return torch.where(valid, idx, idx[:, :1]), valid
        key = torch.where(keep, torch.rand(keep.shape, generator=generator), 2.0)
        chosen = torch.argsort(key, dim=1)[:, : int(counts.min())]
        return chosen.sort(dim=1).values, None

    # -- the call ------------------------------------------------------------------------
    def sample_with_stats(self, batch_size: int,
                          generator: torch.Generator) -> tuple[MaskBatch, MaskDrawStats]:
        """One batch of masks and what happened while drawing it."""
        tsize, csize = self.draw_sizes(generator)
        tops, lefts, keep, rounds, fallbacks = self.place_with_redraws(
            batch_size, tsize, csize, generator)
        gw = self.grid[1]
        offsets = (torch.arange(tsize[0])[:, None] * gw + torch.arange(tsize[1])).flatten()
        targets = (tops * gw + lefts)[..., None] + offsets  # [B, M, h*w]
        context, valid = self.equalize(keep, generator)
        stats = MaskDrawStats(keep.sum(1), tsize, csize, rounds, fallbacks)
        return MaskBatch(context, targets, valid), stats

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskBatch:
        return self.sample_with_stats(batch_size, generator)[0]

    def __repr__(self) -> str:
        return f"MultiBlockMasker(grid={self.grid}, config={self.config})"


# -- build-time checks -------------------------------------------------------------------
def _size_extremes(masker: MultiBlockMasker, scale, aspect) -> list[Size]:
    """Sizes at the ends of the ranges plus a dense sweep (areas are not monotone)."""
    us = [i / 64 for i in range(65)]
    if masker.reference:
        return [masker.size_for(u, u, scale, aspect) for u in us]
    return [masker.size_for(a, b, scale, aspect) for a in us for b in us]


def _fail(field: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"masker multiblock: {field}: {problem}. {fix}")


def check_config(config: MultiBlockConfig, grid: Size) -> None:
    """Raise ConfigError for a config that cannot produce valid masks on `grid`."""
    gh, gw = grid
    smallest = 2 if config.style == "reference" else 1
    if gh < smallest or gw < smallest:
        raise _fail("grid", f"a {gh}x{gw} patch grid is too small for style "
                    f"{config.style!r} (needs at least {smallest} patches per side)",
                    "Use a larger image or a smaller patch size" +
                    (", or style 'corrected'." if config.style == "reference" else "."))
    masker = MultiBlockMasker(config, grid)
    targets = _size_extremes(masker, config.target_scale, config.target_aspect)
    if min(min(s) for s in targets) < 1:
        raise _fail("target_scale", f"target blocks of scale {list(config.target_scale)} and "
                    f"aspect {list(config.target_aspect)} round to 0 patches on a {gh}x{gw} "
                    f"grid", "Raise target_scale, narrow target_aspect, or use a larger grid.")
    contexts = _size_extremes(masker, config.context_scale, config.context_aspect)
    smallest_context = min(h * w for h, w in contexts)
    if smallest_context < config.min_keep:
        raise _fail("min_keep", f"min_keep={config.min_keep} but the context block can be as "
                    f"small as {smallest_context} patches on a {gh}x{gw} grid (context_scale "
                    f"{list(config.context_scale)})",
                    f"Lower min_keep to at most {smallest_context} or raise context_scale.")


def build_masker(config: MultiBlockConfig, grid: Size) -> MultiBlockMasker:
    """The factory registered as masker "multiblock": checks the config against the grid."""
    check_config(config, grid)
    return MultiBlockMasker(config, grid)
