"""`check_masker`: the contract every `Masker` must honour, as one call.

    from jepa_core.testing import check_masker
    check_masker(masker, batch_size=8, seed=0, allow_overlap=False, min_keep=10)

Always checked: output types and shapes, int64 indices in [0, N), unique indices per target
block and per context row (among valid positions), a `context_valid` / `targets_valid`
consistent with the context / targets (bool, same shape, at least one valid index per row /
block), termination within `time_limit_s`, and determinism: the same generator seed gives the
same masks even when the global RNGs are in other states, and torch's, Python's and numpy's
global RNGs are left untouched. The checks themselves live in `jepa_core.maskcheck`; the
trainer runs the same ones on the first steps of every run.

Checked when declared: `min_keep` (valid context patches per row), `allow_overlap=False`
(context and targets disjoint), `scale_range` / `aspect_range` (each target block is a
rectangle whose size can come from a scale and an aspect ratio in the ranges, up to rounding),
`claims_reachable` (every patch lands in some context and in some target over many draws).

Each failure raises AssertionError with a message naming the masker, the check, the sample.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from jepa_core.interfaces import MaskBatch
from jepa_core.maskcheck import (overlap_problem, redraw_problem, structure_problem,
                                 target_membership, target_sizes, valid_counts)

__all__ = ["check_masker", "check_structure", "check_disjoint", "check_block_ranges",
           "check_deterministic", "check_reachable", "draw_in_time", "valid_counts",
           "target_membership"]


def _fail(masker: Any, check: str, detail: str) -> AssertionError:
    return AssertionError(f"{masker!r} fails '{check}': {detail}")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def draw_in_time(masker: Any, batch_size: int, seed: int, time_limit_s: float) -> MaskBatch:
    """masker(batch_size, generator(seed)), or AssertionError if it runs past the limit (the
    call is left running in a daemon thread: Python cannot stop it)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["masks"] = masker(batch_size, _generator(seed))
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="check_masker")
    thread.start()
    thread.join(time_limit_s)
    if thread.is_alive():
        raise _fail(masker, "terminates", f"batch of {batch_size} (seed {seed}) took longer "
                    f"than {time_limit_s} s; a sampler must never loop unboundedly")
    if "error" in result:
        raise result["error"]
    return result["masks"]


def _raise(masker: Any, problem: Any) -> None:
    if problem:
        raise _fail(masker, problem.check, problem.detail)


def check_structure(masker: Any, masks: Any, batch_size: int) -> None:
    """Types, shapes, dtypes, ranges, validity masks (`context_valid`, `targets_valid`) and
    uniqueness of one MaskBatch (`jepa_core.maskcheck.structure_problem`)."""
    _raise(masker, structure_problem(masks, tuple(masker.grid), batch_size))


def check_disjoint(masker: Any, masks: MaskBatch) -> None:
    _raise(masker, overlap_problem(masks, tuple(masker.grid)))


def block_shapes(masker: Any, masks: MaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, w) [B, M] of each target block's bounding box (over its valid indices);
    AssertionError unless every block is exactly its bounding box (a filled rectangle)."""
    gw = masker.grid[1]
    targets, valid = masks.targets, masks.targets_valid
    rows, cols = targets // gw, targets % gw
    if valid is None:
        h = rows.amax(-1) - rows.amin(-1) + 1
        w = cols.amax(-1) - cols.amin(-1) + 1
    else:
        big = torch.iinfo(torch.int64).max
        h = (torch.where(valid, rows, -1).amax(-1) - torch.where(valid, rows, big).amin(-1) + 1)
        w = (torch.where(valid, cols, -1).amax(-1) - torch.where(valid, cols, big).amin(-1) + 1)
    sizes = target_sizes(masks)
    holed = h * w != sizes
    if bool(holed.any()):
        b, m = (int(i) for i in holed.nonzero()[0])
        raise _fail(masker, "target blocks are rectangles", f"sample {b} block {m} has "
                    f"{int(sizes[b, m])} patches in a {int(h[b, m])}x{int(w[b, m])} box")
    return h, w


def check_block_ranges(masker: Any, masks: MaskBatch, scale_range: Any,
                       aspect_range: Any) -> None:
    """Each block's (h, w) must come from some scale and aspect in the ranges, given
    h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)): half a patch of rounding
    per side, one patch of area (for samplers that floor the area), no upper bound on a side
    that reaches grid - 1 (it may have been capped)."""
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


def check_deterministic(masker: Any, batch_size: int, seed: int, first: MaskBatch) -> None:
    """Same seed -> same masks, even with torch's, Python's and numpy's global RNGs set to
    other states before the second draw; and those global RNGs left untouched."""
    _raise(masker, redraw_problem(first, lambda: masker(batch_size, _generator(seed))))


def check_reachable(masker: Any, batch_size: int, seed: int, samples: int) -> None:
    """Every patch is in some valid context position and in some target over `samples`."""
    gh, gw = masker.grid
    n = gh * gw
    in_context = torch.zeros(n, dtype=torch.bool)
    in_target = torch.zeros(n, dtype=torch.bool)
    for i in range(max(1, samples // batch_size)):
        masks = masker(batch_size, _generator(seed + 1 + i))
        ctx = masks.context if masks.context_valid is None else masks.context[masks.context_valid]
        in_context[ctx.flatten()] = True
        in_target |= target_membership(masks, n).any(0)
        if bool(in_context.all()) and bool(in_target.all()):
            return
    for name, seen in (("context", in_context), ("target", in_target)):
        missing = (~seen).nonzero().squeeze(1)[:10].tolist()
        if missing:
            cells = ", ".join(f"({p // gw}, {p % gw})" for p in missing)
            raise _fail(masker, "every patch reachable", f"never in a {name} after {samples} "
                        f"samples: (row, col) {cells}{' ...' if (~seen).sum() > 10 else ''}")


def check_masker(masker: Any, batch_size: int = 8, seed: int = 0, *,
                 claims_reachable: bool = False, scale_range: Any = None,
                 aspect_range: Any = None, min_keep: int | None = None,
                 allow_overlap: bool | None = None, rectangular_targets: bool | None = None,
                 time_limit_s: float = 10.0, reach_samples: int = 4096) -> MaskBatch:
    """Run the masker contract (see the module docstring); returns the first batch drawn.

    rectangular_targets: require target blocks to be filled rectangles (implied by a scale or
    aspect range). reach_samples: samples drawn for `claims_reachable`.
    """
    if not (isinstance(masker.grid, tuple) and len(masker.grid) == 2 and min(masker.grid) >= 1):
        raise _fail(masker, "grid", f"grid must be a (gh, gw) tuple, got {masker.grid!r}")
    masks = draw_in_time(masker, batch_size, seed, time_limit_s)
    check_structure(masker, masks, batch_size)
    if min_keep is not None and int(valid_counts(masks).min()) < min_keep:
        raise _fail(masker, f"min_keep={min_keep}",
                    f"a row keeps {int(valid_counts(masks).min())} valid context patches")
    if allow_overlap is False:
        check_disjoint(masker, masks)
    if rectangular_targets or scale_range is not None or aspect_range is not None:
        check_block_ranges(masker, masks, scale_range, aspect_range)  # rectangles first
    check_deterministic(masker, batch_size, seed, masks)
    if claims_reachable:
        check_reachable(masker, max(batch_size, 64), seed, reach_samples)
    return masks
