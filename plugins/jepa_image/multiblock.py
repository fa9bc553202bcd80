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
  a uniformly random subset of each row ("subset").

In either style, context_equalize "pad" keeps every sample's whole context (rows padded to
the longest, `context_valid` marks the padding) and "pack" returns the same masks with
`MaskBatch.packed` set, so the models run the valid tokens only (no compute on padding).

Fallback: a sample still short of `min_keep` after the redraws removes the target blocks from
its context one by one, in order, and stops before the one that would leave fewer than
`min_keep` patches (the official sampler also gives up targets after repeated failures); its
context then overlaps the targets it kept. `sample_with_stats` counts such samples. The
build-time check guarantees that the uncarved context block holds `min_keep` patches, so a
call never loops for long and never fails.

The factory (`build_masker`) refuses, with a ConfigError naming the field, a config whose
target blocks can round to 0 patches or whose context block can hold fewer than `min_keep`.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch

from jepa_core.errors import ConfigError
from jepa_core.interfaces import MaskBatch
from jepa_image.configs import MultiBlockConfig

MAX_REDRAWS = 20  # rounds of position redraws for samples short of min_keep
Size = tuple[int, int]


@attrs.frozen(eq=False)
class MaskDrawStats:
    """What happened inside one call (for `jepa masks` and tests): a
    `jepa_core.interfaces.MaskStats`, so the masker is a `MaskerWithStats`.

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


# -- index helpers (shared by the styles) --------------------------------------------------
def ranked_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the ones of each row of `mask` [B, N] (float 0/1), in raster order:
    ([B, max count] int64, padded with 0 after a row's count; counts [B] int64).

    A scatter by running count, because torch's CPU sort costs ~5 us per row on short rows;
    float32 because it is the fastest CPU dtype here (counts stay exact below 2**24).
    """
    rank = mask.cumsum(1)
    counts = rank[:, -1].long()
    rank.mul_(mask)  # j-th one -> j (1-based); zeros -> 0, a scratch column
    out = torch.zeros(mask.shape[0], int(counts.max()) + 1, dtype=torch.int64)
    out.scatter_(1, rank.long(), torch.arange(mask.shape[1]).expand_as(mask))
    return out[:, 1:], counts


def select_smallest(keys: torch.Tensor, length: int) -> torch.Tensor:
    """[B, N] float 0/1 marking the `length` smallest keys of each row of `keys` [B, N];
    equal keys at a row's threshold are taken in raster order.

    numpy finds the thresholds and compares: torch's CPU sort and selection are ~10x slower
    on short rows, and its bool-to-float conversion several times slower than numpy's.
    """
    values = keys.numpy()
    threshold = np.partition(values, length - 1, axis=1)[:, length - 1:length]
    chosen = torch.from_numpy((values <= threshold).astype(np.float32))
    if int(chosen.sum()) == keys.shape[0] * length:
        return chosen
    threshold = torch.from_numpy(threshold)  # rare with float32 keys (~1e-5 per row): ties
    below = keys < threshold
    ties = keys == threshold
    missing = length - below.sum(1, keepdim=True)
    return (below | (ties & (ties.cumsum(1) <= missing))).float()


class MultiBlockMasker:
    """Samples I-JEPA multi-block masks on a fixed grid; see the module docstring.

    grid: (gh, gw) patches. __call__(B, generator) -> MaskBatch with context [B, Nc] int64
    (sorted, raster order), targets [B, M, h*w] int64 (raster order inside each block),
    context_valid [B, Nc] bool only with context_equalize "pad" or "pack" (the latter also
    sets `packed`).
    """

    def __init__(self, config: MultiBlockConfig, grid: Size):
        self.config = config
        self.grid = (int(grid[0]), int(grid[1]))
        self.reference = config.style == "reference"
        self.allow_overlap = config.allow_overlap  # the trainer's mask guard reads it
        self.cap = (self.grid[0] - 1, self.grid[1] - 1) if self.reference else self.grid
        self.padded = config.context_equalize in ("pad", "pack")  # whole contexts, padded
        self.packed = config.context_equalize == "pack"
        self._spans: dict[tuple[int, int], torch.Tensor] = {}  # memo of span_table
        self._offsets: dict[Size, torch.Tensor] = {}  # memo of block_offsets

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
        u = torch.rand(4, generator=generator).tolist()  # the reference style uses u[0], u[2]
        target = self.size_for(u[0], u[0] if self.reference else u[1], c.target_scale,
                               c.target_aspect)
        context = self.size_for(u[2], u[2] if self.reference else u[3], c.context_scale,
                                c.context_aspect)
        return target, context

    # -- positions -----------------------------------------------------------------------
    def draw_corners(self, n: int, k: int, size: Size,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-left corners of k blocks for n samples: (tops [n, k], lefts [n, k]) int64."""
        slack = 0 if self.reference else 1  # reference: corners in [0, grid - size) exclusive
        tops = torch.randint(0, self.grid[0] - size[0] + slack, (n, k), generator=generator)
        lefts = torch.randint(0, self.grid[1] - size[1] + slack, (n, k), generator=generator)
        return tops, lefts

    def span_table(self, axis: int, size: int) -> torch.Tensor:
        """[starts, g] float: row t marks the cells t .. t+size-1 of an axis of g cells
        (memoised: a grid has few block sizes)."""
        key = (axis, size)
        if key not in self._spans:
            g = self.grid[axis]
            starts = g - size + (0 if self.reference else 1)
            offset = torch.arange(g)[None, :] - torch.arange(starts)[:, None]
            self._spans[key] = ((offset >= 0) & (offset < size)).float()
        return self._spans[key]

    def block_offsets(self, size: Size) -> torch.Tensor:
        """[h*w] int64: patch indices of an (h, w) block at the top-left corner (memoised)."""
        if size not in self._offsets:
            rows, cols = torch.arange(size[0]), torch.arange(size[1])
            self._offsets[size] = (rows[:, None] * self.grid[1] + cols).flatten()
        return self._offsets[size]

    def axis_cover(self, tops: torch.Tensor, lefts: torch.Tensor,
                   size: Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [n, k, gh] and columns [n, k, gw] (float 0/1) that each block spans."""
        return self.span_table(0, size[0])[tops], self.span_table(1, size[1])[lefts]

    def cover(self, tops: torch.Tensor, lefts: torch.Tensor, size: Size) -> torch.Tensor:
        """[n, k, N] bool: which patches each of k blocks covers (corners [n, k])."""
        in_rows, in_cols = self.axis_cover(tops, lefts, size)
        return (in_rows[..., :, None] * in_cols[..., None, :]).flatten(-2).bool()

    def coverage(self, tops: torch.Tensor, lefts: torch.Tensor, size: Size) -> torch.Tensor:
        """[n, N] float: how many of the k blocks (corners [n, k]) cover each patch.

        A batched product of row and column indicators ([n, gh, k] @ [n, k, gw]), which
        does not materialise the [n, k, N] covers.
        """
        in_rows, in_cols = self.axis_cover(tops, lefts, size)
        return torch.bmm(in_rows.transpose(1, 2), in_cols).flatten(1)

    def place(self, n: int, tsize: Size, csize: Size, generator: torch.Generator):
        """Draw positions for n samples: (target tops, lefts [n, M], context tops, lefts
        [n, num_context], kept context [n, N] float 0/1)."""
        c = self.config
        tops, lefts = self.draw_corners(n, c.num_targets, tsize, generator)
        ctops, clefts = self.draw_corners(n, c.num_context, csize, generator)
        keep = self.coverage(ctops, clefts, csize).clamp_(max=1)
        if not c.allow_overlap:  # keep *= 1 - [covered by a target]
            keep.mul_(self.coverage(tops, lefts, tsize).clamp_(max=1).neg_().add_(1))
        return [tops, lefts, ctops, clefts, keep]

    def place_with_redraws(self, batch_size: int, tsize: Size, csize: Size,
                           generator: torch.Generator):
        """Positions for the batch, redrawing short samples: (target tops, lefts [B, M],
        kept context [B, N] float 0/1, redraw rounds, fallbacks)."""
        drawn = self.place(batch_size, tsize, csize, generator)
        rounds = 0
        counts = drawn[-1].sum(1)
        while float(counts.min()) < self.config.min_keep and rounds < MAX_REDRAWS:
            rows = (counts < self.config.min_keep).nonzero().squeeze(1)
            for old, new in zip(drawn, self.place(len(rows), tsize, csize, generator)):
                old[rows] = new
            counts = drawn[-1].sum(1)
            rounds += 1
        tops, lefts, ctops, clefts, keep = drawn
        short = counts < self.config.min_keep
        fallbacks = int(short.sum())
        if fallbacks:
            ccover = self.coverage(ctops[short], clefts[short], csize).bool()
            tcover = self.cover(tops[short], lefts[short], tsize)
            keep[short] = self.partial_carve(ccover, tcover).float()
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
        """Rows of a [B, N] float 0/1 mask -> (context [B, Nc] int64 in raster order,
        context_valid [B, Nc] bool | None, row counts [B] int64 before equalisation)."""
        group = self.config.equalize_group
        if group is None or group >= keep.shape[0] or self.padded:
            return self.equalize_rows(keep, generator)
        parts = [self.equalize_rows(keep[i:i + group], generator)
                 for i in range(0, keep.shape[0], group)]
        width = max(p[0].shape[1] for p in parts)
        lengths = torch.cat([torch.full((p[0].shape[0],), p[0].shape[1]) for p in parts])
        context = torch.cat([torch.cat([c, c[:, :1].expand(-1, width - c.shape[1])], dim=1)
                             for c, _, _ in parts])  # padding repeats a real index
        valid = torch.arange(width) < lengths[:, None]
        return context, (None if bool(valid.all()) else valid), torch.cat([p[2] for p in parts])

    def equalize_rows(self, keep: torch.Tensor, generator: torch.Generator):
        """`equalize` for one group of rows: all cut (or padded) to one length."""
        if self.reference or self.padded:
            positions, counts = ranked_positions(keep)  # [B, max count], padded with 0
            if not self.padded:  # reference: the first indices in raster order
                return positions[:, : int(counts.min())], None, counts
            valid = torch.arange(positions.shape[1]) < counts[:, None]
            return torch.where(valid, positions, positions[:, :1]), valid, counts
        counts = keep.sum(1).long()
        keys = torch.rand(keep.shape, generator=generator).sub_(keep)  # kept < 0 <= dropped
        context, _ = ranked_positions(select_smallest(keys, int(counts.min())))
        return context, None, counts

    # -- the call ------------------------------------------------------------------------
    def sample_with_stats(self, batch_size: int,
                          generator: torch.Generator) -> tuple[MaskBatch, MaskDrawStats]:
        """One batch of masks and what happened while drawing it."""
        tsize, csize = self.draw_sizes(generator)
        tops, lefts, keep, rounds, fallbacks = self.place_with_redraws(
            batch_size, tsize, csize, generator)
        targets = (tops * self.grid[1] + lefts)[..., None] + self.block_offsets(tsize)
        context, valid, counts = self.equalize(keep, generator)
        stats = MaskDrawStats(counts, tsize, csize, rounds, fallbacks)
        return MaskBatch(context, targets, valid, packed=self.packed), stats

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskBatch:
        return self.sample_with_stats(batch_size, generator)[0]

    def __repr__(self) -> str:
        return f"MultiBlockMasker(grid={self.grid}, config={self.config})"


# -- build-time checks -------------------------------------------------------------------
def _breaks(area: float, longest: int) -> list[float]:
    """Aspect ratios at which round(sqrt(area * a)) or round(sqrt(area / a)) changes."""
    halves = [(k + 0.5) ** 2 for k in range(longest + 1)]
    return [h / area for h in halves] + [area / h for h in halves]


def _draws_between(cuts: set[float]) -> list[float]:
    """The cuts inside [0, 1] and the midpoints between consecutive ones."""
    points = sorted(u for u in cuts if 0.0 <= u <= 1.0)
    return points + [(a + b) / 2 for a, b in zip(points, points[1:])]


def _smallest_sizes(masker: MultiBlockMasker, scale, aspect) -> list[Size]:
    """Every (h, w) a config gives at its smallest areas, for the build-time checks.

    Sizes are piecewise constant in the draws, so evaluating them at each breakpoint (where
    the floored area, h or w changes) and between consecutive ones reaches all of them. h and
    w never shrink as the scale grows, so the corrected style needs its smallest scale only;
    the reference style ties scale and aspect to one draw u.
    """
    n, longest = masker.grid[0] * masker.grid[1], max(masker.grid)
    if not masker.reference:
        span = math.log(aspect[1] / aspect[0])
        cuts = {0.0, 1.0} | ({math.log(a / aspect[0]) / span
                              for a in _breaks(scale[0] * n, longest)} if span > 0 else set())
        return [masker.size_for(0.0, u, scale, aspect) for u in _draws_between(cuts)]
    ds, da = scale[1] - scale[0], aspect[1] - aspect[0]
    cuts = {0.0, 1.0}
    if ds > 0:  # where n * scale crosses an integer (the area is floored)
        cuts |= {(k / n - scale[0]) / ds
                 for k in range(math.ceil(scale[0] * n), math.floor(scale[1] * n) + 1)}
    for u0, u1 in zip(sorted(cuts), sorted(cuts)[1:]):
        area = math.floor(n * (scale[0] + (u0 + u1) / 2 * ds))
        if da > 0 and area > 0:
            cuts |= {(a - aspect[0]) / da for a in _breaks(area, longest)}
    return [masker.size_for(u, u, scale, aspect) for u in _draws_between(cuts)]


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
    targets = _smallest_sizes(masker, config.target_scale, config.target_aspect)
    if min(min(s) for s in targets) < 1:
        raise _fail("target_scale", f"target blocks of scale {list(config.target_scale)} and "
                    f"aspect {list(config.target_aspect)} round to 0 patches on a {gh}x{gw} "
                    f"grid", "Raise target_scale, narrow target_aspect, or use a larger grid.")
    contexts = _smallest_sizes(masker, config.context_scale, config.context_aspect)
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
