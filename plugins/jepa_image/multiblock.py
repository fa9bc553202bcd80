"""The I-JEPA multi-block masker, vectorised over the batch.

One call draws, for a batch of B images on a (gh, gw) patch grid:

1. block sizes, once per batch (so index tensors stack): one (h, w) shared by all M target
   blocks, one (h, w) for the context block(s);
2. block positions, per sample: M target blocks and `num_context` context blocks (the context
   is the union of its blocks; 1 in I-JEPA);
3. the context minus every target patch (unless `allow_overlap`), redrawing the positions of
   the samples left with fewer than `min_keep` context patches (at most `MAX_REDRAWS` rounds);
4. one [B, Nc] context tensor out of rows of unequal length.

Every random draw is a torch call on the caller's generator, in the order above; the set
operations in between are numpy on bit rows (one bit per patch, a few 64-bit words per grid
row), so a batch costs O(B * gh) word operations until the patches are listed once at the
end, and no call uses torch's intra-op thread pool.

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


# -- bit rows (shared by the styles) -------------------------------------------------------
# A set of patches is held as one bit per column in little-endian uint64 words, `words` per
# grid row: [n, gh, words]. Blocks are rectangles, so unions, differences and counts are a few
# operations on [n, k, gh, words] words instead of on [n, k, gh * gw] patches; the patches are
# expanded once, at the end (`bits_to_patches`).
WORD = 64
_LOW_BITS = np.array([(1 << k) - 1 for k in range(WORD + 1)], dtype="<u8")  # k low bits set


def column_bits(lefts: np.ndarray, width: int, gw: int) -> np.ndarray:
    """[..., words] uint64: bits lefts .. lefts + width - 1 of a row of gw columns."""
    base = lefts[..., None] - WORD * np.arange(-(-gw // WORD))
    lo = np.minimum(np.maximum(base, 0), WORD)
    hi = np.minimum(np.maximum(base + width, 0), WORD)
    return _LOW_BITS[hi] ^ _LOW_BITS[lo]


class BlockTables:
    """Memoised tables of one grid (a grid has few block sizes): for a block height h, the
    rows it spans from each top ([tops, gh] uint64, all ones or zero); for a width w, its
    column bits from each left ([lefts, words] uint64)."""

    def __init__(self, grid: Size):
        self.grid = grid
        self._rows: dict[int, np.ndarray] = {}
        self._cols: dict[int, np.ndarray] = {}

    def rows(self, height: int) -> np.ndarray:
        if height not in self._rows:
            gh = self.grid[0]
            offset = np.arange(gh)[None, :] - np.arange(gh - height + 1)[:, None]
            spans = (offset >= 0) & (offset < height)
            self._rows[height] = np.where(spans, np.uint64(_LOW_BITS[WORD]), np.uint64(0))
        return self._rows[height]

    def cols(self, width: int) -> np.ndarray:
        if width not in self._cols:
            gw = self.grid[1]
            self._cols[width] = column_bits(np.arange(gw - width + 1), width, gw)
        return self._cols[width]

    def blocks(self, tops: np.ndarray, lefts: np.ndarray, size: Size) -> np.ndarray:
        """[n, k, gh, words] uint64: each of k blocks of `size` (corners [n, k])."""
        return self.rows(size[0])[tops][..., None] & self.cols(size[1])[lefts][:, :, None, :]

    def union(self, tops: np.ndarray, lefts: np.ndarray, size: Size) -> np.ndarray:
        """[n, gh, words] uint64: the patches covered by any of the k blocks."""
        blocks = self.blocks(tops, lefts, size)
        out = blocks[:, 0]
        for k in range(1, blocks.shape[1]):
            out |= blocks[:, k]
        return out


def bit_counts(bits: np.ndarray) -> np.ndarray:
    """[...] int64: patches in each [..., gh, words] set."""
    return np.bitwise_count(bits).sum((-2, -1), dtype=np.int64)


def bits_to_patches(bits: np.ndarray, gw: int) -> np.ndarray:
    """[n, gh, words] uint64 -> [n, gh * gw] uint8 0/1 in raster order."""
    n, gh, words = bits.shape
    octets = bits.astype("<u8", copy=False).view(np.uint8).reshape(n, gh, 8 * words)
    return np.unpackbits(octets, axis=-1, count=gw, bitorder="little").reshape(n, gh * gw)


def first_of_rows(flat: np.ndarray, counts: np.ndarray, lengths: np.ndarray,
                  n_patches: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of `lengths[i]` entries of the raster-ordered patch indices `flat` (the
    np.flatnonzero of a [B, N] mask whose rows hold `counts`): the first lengths[i] of row i,
    padded to the longest with the row's first index. -> ([B, width] int64, valid [B, width]
    bool, or None when every row is full)."""
    width = int(lengths.max())
    if int(counts.min()) == width == int(counts.max()):  # rows of `width` each: no gather
        rows = flat.reshape(len(counts), width)
        rows -= n_patches * np.arange(len(counts))[:, None]
        return rows, None
    starts = np.cumsum(counts) - counts
    columns = np.arange(width)
    valid = None
    if int(lengths.min()) < width:  # padding: back to the row's start (branch-free)
        valid = columns < lengths[:, None]
        index = starts[:, None] + columns * valid
    else:
        index = starts[:, None] + columns
    rows = flat[index]
    rows -= n_patches * np.arange(len(counts))[:, None]
    return rows, valid


def smallest_keys(keys: np.ndarray, dropped: np.ndarray, length: int) -> np.ndarray:
    """[B, N] bool marking, in each row, the `length` smallest `keys` where `dropped` is 0
    (each row holds at least `length` such); equal keys at a row's threshold are taken in
    raster order. keys: [B, N] non-negative int32; dropped: [B, N] uint8 0/1."""
    keyed = keys | (dropped.astype(np.int32) << 30)  # dropped: above every kept key
    threshold = np.partition(keyed, length - 1, axis=1)[:, length - 1:length]
    chosen = keyed <= threshold
    if int(np.count_nonzero(chosen)) == keys.shape[0] * length:
        return chosen
    below = keyed < threshold  # ties at a threshold: rare (~1e-4 per row on 28x28)
    ties = keyed == threshold
    missing = length - below.sum(1, keepdims=True)
    return below | (ties & (np.cumsum(ties, axis=1) <= missing))


class MultiBlockMasker:
    """Samples I-JEPA multi-block masks on a fixed grid; see the module docstring.

    grid: (gh, gw) patches. __call__(B, generator) -> MaskBatch with context [B, Nc] int64
    (sorted, raster order), targets [B, M, h*w] int64 (raster order inside each block),
    context_valid [B, Nc] bool only with context_equalize "pad" or "pack" (the latter also
    sets `packed`).

    Every random draw is a torch call on `generator` (sizes, corners, subset keys); the rest
    is numpy on bit rows (above), which uses no thread pool, so a call costs the same in a
    DataLoader worker and in the trainer's own process.
    """

    def __init__(self, config: MultiBlockConfig, grid: Size):
        self.config = config
        self.grid = (int(grid[0]), int(grid[1]))
        self.reference = config.style == "reference"
        self.allow_overlap = config.allow_overlap  # the trainer's mask guard reads it
        self.cap = (self.grid[0] - 1, self.grid[1] - 1) if self.reference else self.grid
        self.padded = config.context_equalize in ("pad", "pack")  # whole contexts, padded
        self.packed = config.context_equalize == "pack"
        self._offsets: dict[Size, np.ndarray] = {}  # memo of block_offsets
        self.tables = BlockTables(self.grid)

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
                     generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Top-left corners of k blocks for n samples: (tops [n, k], lefts [n, k]) int64."""
        slack = 0 if self.reference else 1  # reference: corners in [0, grid - size) exclusive
        tops = torch.randint(0, self.grid[0] - size[0] + slack, (n, k), generator=generator)
        lefts = torch.randint(0, self.grid[1] - size[1] + slack, (n, k), generator=generator)
        return tops.numpy(), lefts.numpy()

    def block_offsets(self, size: Size) -> np.ndarray:
        """[h*w] int64: patch indices of an (h, w) block at the top-left corner (memoised)."""
        if size not in self._offsets:
            rows, cols = np.arange(size[0]), np.arange(size[1])
            self._offsets[size] = (rows[:, None] * self.grid[1] + cols).ravel()
        return self._offsets[size]

    def place(self, n: int, tsize: Size, csize: Size, generator: torch.Generator):
        """Draw positions for n samples: [target tops, lefts [n, M], context tops, lefts
        [n, num_context], kept context [n, gh, words] bit rows]."""
        c = self.config
        tops, lefts = self.draw_corners(n, c.num_targets, tsize, generator)
        ctops, clefts = self.draw_corners(n, c.num_context, csize, generator)
        keep = self.tables.union(ctops, clefts, csize)
        if not c.allow_overlap:
            keep &= ~self.tables.union(tops, lefts, tsize)
        return [tops, lefts, ctops, clefts, keep]

    def place_with_redraws(self, batch_size: int, tsize: Size, csize: Size,
                           generator: torch.Generator):
        """Positions for the batch, redrawing short samples: (target tops, lefts [B, M],
        kept context [B, gh, words] bit rows, counts [B], redraw rounds, fallbacks)."""
        min_keep = self.config.min_keep
        drawn = self.place(batch_size, tsize, csize, generator)
        rounds = 0
        counts = bit_counts(drawn[-1])
        while int(counts.min()) < min_keep and rounds < MAX_REDRAWS:
            rows = np.flatnonzero(counts < min_keep)
            for old, new in zip(drawn, self.place(len(rows), tsize, csize, generator), strict=True):
                old[rows] = new
            counts = bit_counts(drawn[-1])
            rounds += 1
        tops, lefts, ctops, clefts, keep = drawn
        short = counts < min_keep
        fallbacks = int(short.sum())
        if fallbacks:
            ccover = self.tables.union(ctops[short], clefts[short], csize)
            tcover = self.tables.blocks(tops[short], lefts[short], tsize)
            keep[short] = self.partial_carve(ccover, tcover)
            counts = bit_counts(keep)
        return tops, lefts, keep, counts, rounds, fallbacks

    def partial_carve(self, ccover: np.ndarray, tcover: np.ndarray) -> np.ndarray:
        """[n, gh, words] context with the longest prefix of target blocks removed that leaves
        at least min_keep patches (ccover [n, gh, words], tcover [n, M, gh, words])."""
        removed = np.bitwise_or.accumulate(tcover, axis=1)  # [n, M, ...]: the first k+1
        carved = ccover[:, None] & ~removed
        ok = bit_counts(carved) >= self.config.min_keep  # [n, M], True on a prefix
        k = ok.sum(1)  # number of targets we can remove
        full = np.concatenate([ccover[:, None], carved], axis=1)  # [n, M+1, ...]
        return full[np.arange(len(k)), k]

    # -- equalisation --------------------------------------------------------------------
    def equalize(self, keep: np.ndarray, counts: np.ndarray, generator: torch.Generator):
        """Rows of kept patches (bit rows [B, gh, words], counts [B]) -> (context [B, Nc]
        int64 in raster order, context_valid [B, Nc] bool | None).

        Rows are cut to the shortest of their group (`equalize_group`, else the batch) and
        groups padded to the longest with a row's first index; "pad" and "pack" pad every
        row to the longest instead and always return context_valid."""
        batch, gw = keep.shape[0], self.grid[1]
        n_patches = self.grid[0] * gw
        padded = self.padded
        group = self.config.equalize_group
        group = batch if group is None or padded else min(group, batch)
        lengths = counts if padded else np.repeat(np.minimum.reduceat(
            counts, np.arange(0, batch, group)), group)[:batch]
        if self.reference or padded:
            mask = bits_to_patches(keep, gw).view(bool)
        else:
            # A uniform subset: the kept patches with the smallest torch.rand keys, drawn for
            # the whole batch at once (the same stream as one draw per group in turn). The
            # bits of a float32 in [0, 1) as int32 sort like the float.
            keys = torch.rand((batch, n_patches), generator=generator).numpy().view(np.int32)
            dropped = bits_to_patches(~keep, gw)
            parts = [smallest_keys(keys[i:i + group], dropped[i:i + group], int(lengths[i]))
                     for i in range(0, batch, group)]
            mask = parts[0] if len(parts) == 1 else np.concatenate(parts)
            counts = lengths
        context, valid = first_of_rows(np.flatnonzero(mask), counts, lengths, n_patches)
        if padded and valid is None:
            valid = np.ones(context.shape, dtype=bool)
        return torch.from_numpy(context), None if valid is None else torch.from_numpy(valid)

    # -- the call ------------------------------------------------------------------------
    def sample_with_stats(self, batch_size: int,
                          generator: torch.Generator) -> tuple[MaskBatch, MaskDrawStats]:
        """One batch of masks and what happened while drawing it."""
        tsize, csize = self.draw_sizes(generator)
        tops, lefts, keep, counts, rounds, fallbacks = self.place_with_redraws(
            batch_size, tsize, csize, generator)
        targets = (tops * self.grid[1] + lefts)[..., None] + self.block_offsets(tsize)
        context, valid = self.equalize(keep, counts, generator)
        stats = MaskDrawStats(torch.from_numpy(counts), tsize, csize, rounds, fallbacks)
        return MaskBatch(context, torch.from_numpy(targets), valid, packed=self.packed), stats

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
    return points + [(a + b) / 2 for a, b in zip(points, points[1:], strict=False)]


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
    for u0, u1 in zip(sorted(cuts), sorted(cuts)[1:], strict=False):
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
