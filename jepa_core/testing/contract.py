"""`check_masker`: the contract every `Masker` must honour, as one call.

    from jepa_core.testing import check_masker
    check_masker(masker, batch_size=8, seed=0, allow_overlap=False, min_keep=10)

Always checked: output types and shapes, int64 indices in [0, N), unique indices per target
block and per context row (among valid positions), a `context_valid` / `targets_valid`
consistent with the context / targets (bool, same shape, at least one valid index per row /
block), and:

- termination: every call returns within `time_limit_s` (5 s by default). A call that runs
  past it is stopped where it is (nothing is left running) and `MaskerTimeout` is raised;
- repeatability: repeated calls with identically seeded generators, in different orders and
  interleaved with other seeds, give identical masks (no state kept between calls), the same
  generator seed gives the same masks even when the global RNGs are in other states, and
  torch's, Python's and numpy's global RNGs are left untouched;
- generator dependence: different generator seeds give different masks (a masker that
  re-seeds a generator of its own gives the same masks at every step). A masker that is
  deterministic by design passes `deterministic=True`, and must then ignore the seed.

The structural checks live in `jepa_core.maskcheck`; the trainer runs the same ones on the
first steps of every run.

Grids of any rank are accepted ((gh, gw), (t, gh, gw), ...; raster order). A masker that
returns several mask sets ({name: MaskBatch}) gets the whole contract for each set.

Checked when declared: `min_keep` (valid context patches per row), `allow_overlap=False`
(context and targets disjoint), `scale_range` / `aspect_range` (each target block is a
rectangle whose size can come from a scale and an aspect ratio in the ranges, up to rounding;
2-D grids only: on another rank these two are skipped with a `ContractSkipped` warning saying
why, while `rectangular_targets` (a filled box on any rank) is still checked),
`claims_reachable` (every patch lands in some context and in some target over many draws).

Each failure raises AssertionError with a message naming the masker, the check, the sample;
a call past the time limit raises `MaskerTimeout` (a BaseException, see there).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from jepa_core.interfaces import MaskBatch
from jepa_core.maskcheck import (
    differing_field,
    global_rng_states,
    overlap_problem,
    redraw_problem,
    same_global_rng_states,
    structure_problem,
    target_membership,
    target_sizes,
    valid_counts,
)
from jepa_core.testing.deadline import Expired, deadline

DEFAULT_TIME_LIMIT_S = 5.0
# Seeds drawn before "the masks never change with the seed" is believed: a masker with two
# equally likely outcomes passes this many with probability 1 - 2**-31.
SEEDS_FOR_VARIETY = 32


class ContractSkipped(UserWarning):
    """A declared check that does not apply to this masker's grid (e.g. `scale_range` on a
    3-D grid) and was skipped; the message says which and why."""


class MaskerTimeout(BaseException):
    """A masker call ran past `time_limit_s` and was stopped.

    A BaseException, not an AssertionError, on purpose: hypothesis shrinks a failing example
    by re-running smaller ones, and each of those would hang for the whole limit again. An
    exception it does not treat as a test failure stops it at once; pytest still reports the
    test as failed, with this message.
    """


__all__ = ["check_masker", "MaskerTimeout", "ContractSkipped", "check_structure", "check_disjoint",
           "check_block_ranges", "check_deterministic", "check_uses_generator",
           "check_reachable", "call_in_time", "draw_in_time", "valid_counts",
           "target_membership"]


def _fail(masker: Any, check: str, detail: str) -> AssertionError:
    return AssertionError(f"{masker!r} fails '{check}': {detail}")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def call_in_time(masker: Any, batch_size: int, generator: torch.Generator, seed: int,
                 time_limit_s: float) -> MaskBatch:
    """masker(batch_size, generator), stopped after `time_limit_s` seconds with
    `MaskerTimeout` naming the masker (see `jepa_core.testing.deadline`: nothing is left
    running). `seed` is the generator's seed, for the message."""
    try:
        with deadline(time_limit_s):
            return masker(batch_size, generator)
    except Expired as exc:
        raise MaskerTimeout(
            f"{masker!r} fails 'terminates': a batch of {batch_size} (generator seed {seed}) "
            f"ran past time_limit_s={time_limit_s} s and was stopped (the traceback above "
            f"shows where). A sampler must never loop unboundedly: bound its redraws, and "
            f"have the factory raise ConfigError for a config that cannot produce masks on the "
            f"grid. If the masker is merely slow, pass a larger time_limit_s.") from exc


def draw_in_time(masker: Any, batch_size: int, seed: int,
                 time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> MaskBatch:
    """masker(batch_size, generator(seed)) under `call_in_time`'s time limit."""
    return call_in_time(masker, batch_size, _generator(seed), seed, time_limit_s)


def _raise(masker: Any, problem: Any) -> None:
    if problem:
        raise _fail(masker, problem.check, problem.detail)


def check_structure(masker: Any, masks: Any, batch_size: int) -> None:
    """Types, shapes, dtypes, ranges, validity masks (`context_valid`, `targets_valid`) and
    uniqueness of one MaskBatch (`jepa_core.maskcheck.structure_problem`)."""
    _raise(masker, structure_problem(masks, tuple(masker.grid), batch_size))


def check_disjoint(masker: Any, masks: MaskBatch) -> None:
    """AssertionError naming the masker if a target index is also a valid context index."""
    _raise(masker, overlap_problem(masks, tuple(masker.grid)))


def coordinates(index: torch.Tensor, grid: tuple[int, ...]) -> list[torch.Tensor]:
    """The per-axis coordinates of raster-order patch indices on a grid of any rank:
    [row, col] on (gh, gw), [t, row, col] on (t, gh, gw); each of `index`'s shape."""
    out, rest = [], index
    for size in reversed(grid):
        out.append(rest % size)
        rest = rest // size
    return out[::-1]


def box_extents(masker: Any, masks: MaskBatch) -> list[torch.Tensor]:
    """The extent along each grid axis ([B, M] each) of each target block's bounding box (over
    its valid indices); AssertionError unless every block is exactly its bounding box (a
    filled box: a rectangle on a 2-D grid, a cuboid on a 3-D one)."""
    grid = tuple(masker.grid)
    valid = masks.targets_valid
    big = torch.iinfo(torch.int64).max
    extents = []
    for axis in coordinates(masks.targets, grid):
        if valid is None:
            extents.append(axis.amax(-1) - axis.amin(-1) + 1)
        else:
            extents.append(torch.where(valid, axis, -1).amax(-1)
                           - torch.where(valid, axis, big).amin(-1) + 1)
    sizes = target_sizes(masks)
    volume = extents[0]
    for e in extents[1:]:
        volume = volume * e
    holed = volume != sizes
    if bool(holed.any()):
        b, m = (int(i) for i in holed.nonzero()[0])
        box = "x".join(str(int(e[b, m])) for e in extents)
        shape = "rectangles" if len(grid) == 2 else "boxes"
        raise _fail(masker, f"target blocks are {shape}", f"sample {b} block {m} has "
                    f"{int(sizes[b, m])} patches in a {box} box")
    return extents


def block_shapes(masker: Any, masks: MaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, w) [B, M] of each target block's bounding box on a 2-D grid (the last two axes on
    another rank); AssertionError unless every block is exactly its bounding box."""
    extents = box_extents(masker, masks)
    return extents[-2], extents[-1]


def check_block_ranges(masker: Any, masks: MaskBatch, scale_range: Any,
                       aspect_range: Any) -> None:
    """Each block's (h, w) must come from some scale and aspect in the ranges, given
    h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)): half a patch of rounding
    per side, one patch of area (for samplers that floor the area), no upper bound on a side
    that reaches grid - 1 (it may have been capped). 2-D grids only: on another rank the
    check is skipped with a `ContractSkipped` warning (the ranges describe an h x w block)."""
    if len(masker.grid) != 2:
        warnings.warn(ContractSkipped(
            f"{masker!r}: scale_range / aspect_range are checks of h x w blocks on a 2-D grid; "
            f"skipped on the {len(masker.grid)}-D grid {tuple(masker.grid)} (check the "
            f"masker's own block sizes in its tests; rectangular_targets still checks boxes)"),
            stacklevel=2)
        return
    gh, gw = masker.grid
    h, w = (x.double() for x in block_shapes(masker, masks))
    capped_h, capped_w = h >= gh - 1, w >= gw - 1
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    if scale_range is not None:
        lo = (h - 0.5) * (w - 0.5) / (gh * gw)
        hi = torch.where(capped_h | capped_w, inf, ((h + 0.5) * (w + 0.5) + 1) / (gh * gw))
        _check_interval(masker, "target scale within scale_range", lo, hi, scale_range, h, w)
    if aspect_range is not None:
        lo = torch.where(capped_w, torch.zeros_like(h), (h - 0.5) / (w + 0.5))
        hi = torch.where(capped_h, inf, (h + 0.5) / (w - 0.5))
        _check_interval(masker, "target aspect within aspect_range", lo, hi, aspect_range, h, w)


def _check_interval(masker, check, lo, hi, declared, h, w) -> None:
    bad = (hi < declared[0] - 1e-9) | (lo > declared[1] + 1e-9)
    if bool(bad.any()):
        b, m = (int(i) for i in bad.nonzero()[0])
        raise _fail(masker, check, f"sample {b} block {m} is {int(h[b, m])}x{int(w[b, m])} "
                    f"patches, which no value in {list(declared)} gives")


# The order of the calls after the first (0: the seed under test, 1-3: other seeds): the seed
# comes back after another seed, after itself, and late, four more times in all.
REPEAT_ORDER = (1, 0, 2, 0, 0, 1, 3, 0, 2)


def _other_seed(seed: int, i: int) -> int:
    """The i-th seed besides `seed` (i >= 1): distinct for every i < 2**63, below 2**63."""
    return (seed + i * 0x9E3779B97F4A7C15) % 2**63


def check_deterministic(masker: Any, batch_size: int, seed: int, first: MaskBatch,
                        time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> dict[int, MaskBatch]:
    """Same seed -> same masks, over four more calls with that seed in different orders,
    interleaved with three other seeds (so state kept between calls shows); torch's, Python's
    and numpy's global RNGs left untouched. Returns {seed: masks} of the seeds drawn."""
    seeds = [seed] + [_other_seed(seed, i) for i in (1, 2, 3)]
    drawn, seen = {seed: first}, {seed: 1}
    before = global_rng_states()
    for call, k in enumerate(REPEAT_ORDER, start=2):
        s = seeds[k]
        masks = call_in_time(masker, batch_size, _generator(s), s, time_limit_s)
        seen[s] = seen.get(s, 0) + 1
        if s not in drawn:
            drawn[s] = masks
            continue
        name = differing_field(drawn[s], masks)
        if name is not None:
            order = ", ".join("s" if seeds[j] == seed else f"o{j}" for j in REPEAT_ORDER)
            raise _fail(masker, "same masks for the same generator seed", (
                f"call {call} (call number {seen[s]} with generator seed {s}) gave a different "
                f"`{name}` from the first call with that seed (calls: s, {order}; s = seed "
                f"{seed}, o1-o3 = other seeds). The masks depend on something besides the "
                f"generator, such as state kept from one call to the next: draw every random "
                f"number from the generator argument and keep the masker's state fixed after "
                f"construction"))
    if not same_global_rng_states(before, global_rng_states()):
        raise _fail(masker, "never touches the global RNG", "torch's, Python's or numpy's "
                    "global RNG state changed; draw only from the generator argument")
    # global-RNG use that restores the state it found: redraw with the global RNGs elsewhere
    _raise(masker, redraw_problem(first, lambda: call_in_time(
        masker, batch_size, _generator(seed), seed, time_limit_s)))
    return drawn


def check_uses_generator(masker: Any, batch_size: int, seed: int, drawn: dict[int, MaskBatch],
                         time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                         deterministic: bool = False) -> None:
    """Different generator seeds give different masks (drawing up to SEEDS_FOR_VARIETY
    seeds), unless `deterministic`, which requires the opposite. Identical masks for every
    seed pass only while the masker does draw from the generator it is given (its state
    moves, differently for each seed): a config with a single possible outcome on this grid.
    `drawn`: {seed: masks} already drawn (see check_deterministic), extended here."""
    first = drawn[seed]
    varied = next((s for s, m in drawn.items() if differing_field(first, m) is not None), None)
    if deterministic:
        if varied is not None:
            raise _fail(masker, "deterministic=True", (
                f"generator seeds {seed} and {varied} give different masks, so the masker is "
                f"random; leave out deterministic=True"))
        return
    while varied is None and len(drawn) < SEEDS_FOR_VARIETY:
        s = _other_seed(seed, len(drawn))
        drawn[s] = call_in_time(masker, batch_size, _generator(s), s, time_limit_s)
        varied = s if differing_field(first, drawn[s]) is not None else None
    if varied is not None:
        return
    untouched, ends = [], []
    for s in (seed, _other_seed(seed, 1)):
        generator = _generator(s)
        start = generator.get_state()
        call_in_time(masker, batch_size, generator, s, time_limit_s)
        untouched.append(torch.equal(start, generator.get_state()))
        ends.append(generator.get_state())
    if all(untouched):
        how = "and it never draws from the generator it is given"
    elif torch.equal(ends[0], ends[1]):
        how = "and it re-seeds the generator it is given (every seed ends in the same state)"
    else:
        return
    raise _fail(masker, "masks depend on the generator", (
        f"the same masks for {len(drawn)} different generator seeds (batch {batch_size}), {how}: "
        f"every training step would get the same masks. Draw every random number from the "
        f"generator argument (the trainer seeds it from the recipe's seed and the step), not "
        f"from a generator the masker makes or re-seeds itself. For a masker deterministic by "
        f"design, pass deterministic=True"))


def check_reachable(masker: Any, batch_size: int, seed: int, samples: int,
                    time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> None:
    """Every patch is in some valid context position and in some target over `samples`."""
    grid = tuple(masker.grid)
    n = math.prod(grid)
    in_context = torch.zeros(n, dtype=torch.bool)
    in_target = torch.zeros(n, dtype=torch.bool)
    for i in range(max(1, samples // batch_size)):
        masks = call_in_time(masker, batch_size, _generator(seed + 1 + i), seed + 1 + i,
                             time_limit_s)
        ctx = masks.context if masks.context_valid is None else masks.context[masks.context_valid]
        in_context[ctx.flatten()] = True
        in_target |= target_membership(masks, n).any(0)
        if bool(in_context.all()) and bool(in_target.all()):
            return
    for name, seen in (("context", in_context), ("target", in_target)):
        missing = (~seen).nonzero().squeeze(1)[:10].tolist()
        if missing:
            at = coordinates(torch.tensor(missing), grid)
            cells = ", ".join(str(tuple(int(a[i]) for a in at)) for i in range(len(missing)))
            axes = "(row, col)" if len(grid) == 2 else "(t, row, col)" if len(grid) == 3 else \
                "(coordinates)"
            raise _fail(masker, "every patch reachable", f"never in a {name} after {samples} "
                        f"samples: {axes} {cells}{' ...' if (~seen).sum() > 10 else ''}")


class OneSet:
    """One mask set of a masker that returns {name: MaskBatch}, seen as a masker of its own
    (the contract checks each set through it)."""

    def __init__(self, masker: Any, name: str):
        self.masker, self.name, self.grid = masker, name, masker.grid
        self.allow_overlap = bool(getattr(masker, "allow_overlap", False))

    def __repr__(self) -> str:
        return f"{self.masker!r}[{self.name!r}]"

    def __call__(self, batch_size: int, generator: torch.Generator) -> MaskBatch:
        out = self.masker(batch_size, generator)
        if not isinstance(out, dict) or self.name not in out:
            raise _fail(self.masker, "same mask sets at every call",
                        f"set {self.name!r} is missing from a later call's output")
        return out[self.name]


def check_masker(masker: Any, batch_size: int = 8, seed: int = 0, *,
                 claims_reachable: bool = False, scale_range: Any = None,
                 aspect_range: Any = None, min_keep: int | None = None,
                 allow_overlap: bool | None = None, rectangular_targets: bool | None = None,
                 deterministic: bool = False, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                 reach_samples: int = 4096) -> Any:
    """Run the masker contract (see `jepa_core.testing.contract`); returns the first batch
    (the first {name: MaskBatch} for a masker of several mask sets, each set checked alone).

    deterministic: the masker draws nothing at random (its masks must not depend on the
    seed). time_limit_s: the most any one call may take; past it the call is stopped and
    `MaskerTimeout` raised. rectangular_targets: require target blocks to be filled
    rectangles (implied by a scale or aspect range). reach_samples: samples drawn for
    `claims_reachable`.
    """
    grid = masker.grid
    if not (isinstance(grid, tuple) and len(grid) >= 1
            and all(isinstance(g, int) and g >= 1 for g in grid)):
        raise _fail(masker, "grid", f"grid must be a tuple of positive ints ((gh, gw), "
                                    f"(t, gh, gw), ...), got {grid!r}")
    masks = draw_in_time(masker, batch_size, seed, time_limit_s)
    if isinstance(masks, dict) and masks and all(isinstance(k, str) for k in masks):
        for name in masks:  # several mask sets: the whole contract for each
            check_masker(OneSet(masker, name), batch_size, seed,
                         claims_reachable=claims_reachable, scale_range=scale_range,
                         aspect_range=aspect_range, min_keep=min_keep,
                         allow_overlap=allow_overlap, rectangular_targets=rectangular_targets,
                         deterministic=deterministic, time_limit_s=time_limit_s,
                         reach_samples=reach_samples)
        return masks
    check_structure(masker, masks, batch_size)
    if min_keep is not None and int(valid_counts(masks).min()) < min_keep:
        raise _fail(masker, f"min_keep={min_keep}",
                    f"a row keeps {int(valid_counts(masks).min())} valid context patches")
    if allow_overlap is False:
        check_disjoint(masker, masks)
    if rectangular_targets or scale_range is not None or aspect_range is not None:
        check_block_ranges(masker, masks, scale_range, aspect_range)  # rectangles first
    drawn = check_deterministic(masker, batch_size, seed, masks, time_limit_s)
    check_uses_generator(masker, batch_size, seed, drawn, time_limit_s, deterministic)
    if claims_reachable:
        check_reachable(masker, max(batch_size, 64), seed, reach_samples, time_limit_s)
    return masks
