"""The V-JEPA multi-block masker on a (t, h, w) patch grid, vectorised over the batch.

For each mask set of the config, in order, one call draws from the caller's generator:

1. one block size (t, h, w) for the whole batch, from three separate uniform draws: the
   temporal scale (t = max(1, floor(T * scale))), the spatial scale (a frame area of
   floor(H * W * scale) patches) and the aspect ratio a = h / w; h = round(sqrt(area * a)),
   w = round(sqrt(area / a)), each capped at the grid;
2. `num_blocks` corners per clip, each coordinate uniform in [0, size - block] (every patch
   reachable), as one [B, K] draw per axis;
3. new corners for the clips whose blocks cover the whole clip (no context left), at most
   `MAX_REDRAWS` rounds; a clip still covered then drops its last blocks until some context
   is left (a fallback, counted by `sample_with_details`; the factory makes sure one block
   never covers the grid, so this always ends).

The target of a clip is the union of its blocks (one target "block" [B, 1, Nt] in the
`MaskBatch` sense) and its context is the complement: the opposite of I-JEPA, whose context is
the large block. Membership is computed for the whole batch at once by broadcasting the blocks'
extent along each axis ([B, K, T, H, W] booleans), and the patches are listed with one stable
sort, so no Python loop runs over the samples.

Styles:
- "reference": as the official sampler (facebookresearch/jepa, `src/masks/multiblock3d.py`),
  every context row and every target row is cut to the batch minimum, keeping its first
  indices in raster order. The official sampler redraws until the context is non-empty
  without bound and draws positions from the global RNG; neither is reproduced here.
- "whole": nothing is cut: context rows are padded to the longest with `context_valid`, target
  rows likewise with `targets_valid`, repeating the row's first index at the padding.

A call returns {set name: MaskBatch}, in the order of `config.sets`.
"""

from __future__ import annotations

import math

import attrs
import torch

from jepa_core.errors import ConfigError
from jepa_core.interfaces import MaskBatch
from jepa_video.configs import MaskSetConfig, MultiBlock3DConfig

MAX_REDRAWS = 20  # rounds of corner redraws for clips left without context
Grid = tuple[int, ...]


@attrs.frozen(eq=False)
class SetDraw:
    """The blocks drawn for one mask set of one batch.

    block: (t, h, w) size shared by all blocks of the batch. corners: [B, K, 3]
    int64 first corner (t, h, w) of each block. kept: [B] int64 blocks each clip keeps (K but
    for fallbacks). target: [B, N] bool union of the kept blocks (raster order).
    """

    block: tuple[int, ...]
    corners: torch.Tensor
    kept: torch.Tensor
    target: torch.Tensor

    @property
    def fallbacks(self) -> int:
        """Clips that dropped blocks to keep some context."""
        return int((self.kept < self.corners.shape[1]).sum())


@attrs.frozen(eq=False)
class SetStats:
    """What one mask set's draw came to before rows were cut or padded: context_sizes and
    target_sizes [B] int64 patches per clip; block (t, h, w); fallbacks: clips that dropped
    blocks (see the module docstring)."""

    context_sizes: torch.Tensor
    target_sizes: torch.Tensor
    block: tuple[int, ...]
    fallbacks: int


def block_size(spec: MaskSetConfig, grid: Grid, u: torch.Tensor) -> tuple[int, int, int]:
    """(t, h, w) of a block from three uniforms u in [0, 1): temporal scale, spatial scale,
    aspect ratio, each lo + u * (hi - lo)."""
    (lo_t, hi_t), (lo_s, hi_s), (lo_a, hi_a) = (spec.temporal_scale, spec.spatial_scale,
                                                spec.aspect_ratio)
    ut, us, ua = (float(x) for x in u)
    return _size(grid, lo_t + ut * (hi_t - lo_t), lo_s + us * (hi_s - lo_s),
                 lo_a + ua * (hi_a - lo_a))


def _size(grid: Grid, temporal: float, spatial: float, aspect: float) -> tuple[int, int, int]:
    gt, gh, gw = grid
    area = int(gh * gw * spatial)
    h = min(gh, int(round(math.sqrt(area * aspect))))
    w = min(gw, int(round(math.sqrt(area / aspect))))
    return max(1, int(gt * temporal)), h, w


def block_membership(corners: torch.Tensor, block: tuple[int, ...], grid: Grid) -> torch.Tensor:
    """[B, K, N] bool: the patches (raster order) inside each block of size `block` whose
    first corners are `corners` [B, K, R], on a grid of any rank R."""
    b, k, rank = corners.shape
    inside = torch.ones((b, k) + (1,) * rank, dtype=torch.bool)
    for d, (size, extent) in enumerate(zip(grid, block, strict=True)):
        x = torch.arange(size)
        start = corners[:, :, d, None]
        along = (x >= start) & (x < start + extent)  # [B, K, size]
        shape = [b, k] + [1] * rank
        shape[2 + d] = size
        inside = inside & along.view(shape)
    return inside.flatten(2)


def block_union(corners: torch.Tensor, block: tuple[int, ...], grid: Grid) -> torch.Tensor:
    """[B, N] bool: the union of each clip's blocks, as `block_membership(...).any(1)`, but
    without the [B, K, N] tensor: the per-axis extents ([B, K, size] each) are multiplied out
    over the leading axes and contracted with the last one over the blocks in one batched
    matmul (block counts per patch, exact in float32)."""
    along = []
    for d, (size, extent) in enumerate(zip(grid, block, strict=True)):
        start = corners[:, :, d, None]
        x = torch.arange(size)
        along.append(((x >= start) & (x < start + extent)).float())  # [B, K, size]
    if len(along) == 1:
        return along[0].bool().any(1)
    lead = along[0]
    for axis in along[1:-1]:
        lead = (lead[..., :, None] * axis[..., None, :]).flatten(2)
    return torch.bmm(lead.transpose(1, 2), along[-1]).flatten(1) > 0


def raster_rows(mask: torch.Tensor, length: int | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, L] int64 the first `length` True positions of each row of `mask` [B, N], in
    raster order, the row's first index repeated where it has fewer; [B, L] bool valid).
    `length`: one for every row, or [B] one per row (L their maximum). Every row must hold
    a True."""
    b, n = mask.shape
    per_row = torch.as_tensor(length, dtype=torch.int64).expand(b)
    width = int(per_row.max()) if b else 0
    rank = mask.cumsum(1)  # [B, N]: True positions up to here, so 1.. at each True one
    take = torch.minimum(per_row, rank[:, -1])[:, None]
    slot = torch.where(mask & (rank <= take), rank - 1, width)  # column `width`: scratch
    first = mask.to(torch.uint8).argmax(1, keepdim=True)  # the row's first True position
    out = first.repeat(1, width + 1)
    out.scatter_(1, slot, torch.arange(n).expand(b, n))
    return out[:, :width], torch.arange(width) < take


def group_minimum(counts: torch.Tensor, group: int) -> torch.Tensor:
    """[B] the minimum of `counts` [B] over each row's group of `group` consecutive rows."""
    of = torch.arange(len(counts)) // group
    mins = torch.full((int(of[-1]) + 1,), int(counts.max()), dtype=counts.dtype)
    return mins.scatter_reduce(0, of, counts, "amin")[of]


class MultiBlock3DMasker:
    """V-JEPA multi-block masks (see the module docstring). grid: (t, h, w)."""

    allow_overlap = False

    def __init__(self, config: MultiBlock3DConfig, grid: Grid):
        self.config = config
        self.grid = tuple(int(g) for g in grid)
        self.num_patches = math.prod(self.grid)

    def __repr__(self) -> str:
        sets = ", ".join(f"{s.name}: {s.num_blocks}x{list(s.spatial_scale)}"
                         for s in self.config.sets)
        return (f"MultiBlock3DMasker(grid={'x'.join(map(str, self.grid))}, "
                f"style={self.config.style!r}, sets={{{sets}}})")

    def draw_set(self, spec: MaskSetConfig, batch_size: int,
                 generator: torch.Generator) -> SetDraw:
        """The blocks of one mask set for a batch (steps 1-3 of the module docstring)."""
        block = block_size(spec, self.grid, torch.rand(3, generator=generator))
        k = spec.num_blocks
        corners = self._corners(block, batch_size, k, generator)
        union = block_union(corners, block, self.grid)
        covered = union.all(1)
        for _ in range(MAX_REDRAWS):
            if not bool(covered.any()):
                return SetDraw(block, corners, torch.full((batch_size,), k), union)
            rows = covered.nonzero().squeeze(1)
            corners[rows] = self._corners(block, len(rows), k, generator)
            union[rows] = block_union(corners[rows], block, self.grid)
            covered = union.all(1)
        if not bool(covered.any()):
            return SetDraw(block, corners, torch.full((batch_size,), k), union)
        # fallback: the most leading blocks that leave some context (block 0 alone always does)
        unions = block_membership(corners, block, self.grid).cumsum(1).bool()  # blocks 0..k
        kept = (~unions.all(2)).sum(1)
        target = unions[torch.arange(batch_size), kept - 1]
        return SetDraw(block, corners, kept, target)

    def _corners(self, block: tuple[int, ...], rows: int, k: int,
                 generator: torch.Generator) -> torch.Tensor:
        return torch.stack([torch.randint(0, size - extent + 1, (rows, k), generator=generator)
                            for size, extent in zip(self.grid, block, strict=True)], dim=-1)

    def masks_of(self, draw: SetDraw) -> MaskBatch:
        """The MaskBatch of one set's blocks: cut to the batch minimum ("reference"; with
        equalize_group, to each group's minimum, groups padded with validity masks) or padded
        to the maximum with validity masks ("whole")."""
        target, context = draw.target, ~draw.target
        reference = self.config.style == "reference"
        group = self.config.equalize_group
        if reference and group is not None and group < len(target):  # cut per group
            ctx, ctx_valid = raster_rows(context, group_minimum(context.sum(1), group))
            tgt, tgt_valid = raster_rows(target, group_minimum(target.sum(1), group))
        else:
            pick = (lambda c: int(c.min())) if reference else (lambda c: int(c.max()))
            ctx, ctx_valid = raster_rows(context, pick(context.sum(1)))
            tgt, tgt_valid = raster_rows(target, pick(target.sum(1)))
            if reference:
                return MaskBatch(ctx, tgt[:, None])
        return MaskBatch(ctx, tgt[:, None], None if bool(ctx_valid.all()) else ctx_valid,
                         None if bool(tgt_valid.all()) else tgt_valid[:, None])

    def sample_with_details(self, batch_size: int, generator: torch.Generator
                            ) -> tuple[dict[str, MaskBatch], dict[str, SetStats]]:
        """({set name: MaskBatch}, {set name: SetStats}): the masks `__call__` gives for this
        generator state, and the sizes before cutting or padding."""
        masks, stats = {}, {}
        for spec in self.config.sets:
            draw = self.draw_set(spec, batch_size, generator)
            masks[spec.name] = self.masks_of(draw)
            stats[spec.name] = SetStats((~draw.target).sum(1), draw.target.sum(1), draw.block,
                                        draw.fallbacks)
        return masks, stats

    def __call__(self, batch_size: int, generator: torch.Generator) -> dict[str, MaskBatch]:
        """{set name: MaskBatch} for a batch of `batch_size` clips; every draw from
        `generator`."""
        return self.sample_with_details(batch_size, generator)[0]


# -- the factory's checks --------------------------------------------------------------------
def _aspects(spec: MaskSetConfig, area: int, gh: int, gw: int) -> list[float]:
    """Aspect ratios to try in the set's range: a fine sweep and the values where h reaches gh
    and w reaches gw (rounding changes there)."""
    lo, hi = spec.aspect_ratio
    values = [lo + (hi - lo) * i / 1000 for i in range(1001)]
    for edge in ((gh - 0.5) ** 2 / area, area / (gw - 0.5) ** 2):
        values += [math.nextafter(edge, -math.inf), edge, math.nextafter(edge, math.inf)]
    return [a for a in values if lo <= a <= hi]


def check_config(config: MultiBlock3DConfig, grid: Grid) -> None:
    """ConfigError, naming the field, for a grid that is not (t, h, w) or a set whose blocks
    can be empty or cover the whole clip (leaving no context)."""
    if len(grid) != 3 or min(grid) < 1:
        raise ConfigError(
            f"masker multiblock3d needs a (t, h, w) patch grid from a video encoder, but the "
            f"encoder gives {tuple(grid)!r}. Use a video encoder (e.g. vit_video), or the "
            f"image masker `multiblock` for a 2-D grid.")
    gt, gh, gw = grid
    for i, spec in enumerate(config.sets):
        where = f"masker.sets[{i}] ({spec.name!r})"
        smallest = int(gh * gw * spec.spatial_scale[0])
        lo_a, hi_a = spec.aspect_ratio
        if smallest * lo_a <= 0.25 or smallest / hi_a <= 0.25:  # round(sqrt(x)) is 0 there
            raise ConfigError(
                f"{where}: a block at spatial_scale {spec.spatial_scale[0]} and aspect_ratio "
                f"{list(spec.aspect_ratio)} rounds to 0 patches on the {gh}x{gw} frame grid. "
                f"Raise spatial_scale[0] or narrow aspect_ratio.")
        largest = int(gh * gw * spec.spatial_scale[1])
        whole_time = max(1, int(gt * spec.temporal_scale[1])) >= gt
        if whole_time and any(_size(grid, spec.temporal_scale[1], spec.spatial_scale[1], a)
                              == (gt, gh, gw) for a in _aspects(spec, largest, gh, gw)):
            raise ConfigError(
                f"{where}: one block at spatial_scale {spec.spatial_scale[1]} can cover the "
                f"whole {gt}x{gh}x{gw} grid, which leaves a clip no context. Lower "
                f"spatial_scale[1] (or temporal_scale[1]), or narrow aspect_ratio.")


def build_masker(config: MultiBlock3DConfig, grid: Grid) -> MultiBlock3DMasker:
    """The factory registered as masker "multiblock3d": checks the config against the grid."""
    grid = tuple(int(g) for g in grid)
    check_config(config, grid)
    return MultiBlock3DMasker(config, grid)
