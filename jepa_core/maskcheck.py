"""The rules a masker's output must follow, as plain checks shared by the contract kit
(`jepa_core.testing.contract`, which turns a problem into an AssertionError) and the trainer
(`jepa_core.runtime.mask_guard`, which turns it into a `MaskerOutputError` at run time).

Each check returns None or a `MaskProblem`: the rule broken, what was found (naming the sample
and block) and how to fix it. Sample numbers are rows of the batch that was checked.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch

from jepa_core.interfaces import MaskBatch

FIELDS = ("context", "targets", "context_valid", "targets_valid")


@attrs.frozen
class MaskProblem:
    """check: the rule that is broken; detail: what was found, where; fix: what to change."""

    check: str
    detail: str
    fix: str = ""


def _first(flags: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in flags.nonzero()[0])


def _where(index: tuple[int, ...]) -> str:
    names = ("sample", "block", "position")
    return ", ".join(f"{n} {i}" for n, i in zip(names, index, strict=False))


def _tensor_problem(name: str, t: Any, dims: int, batch_size: int, n: int,
                    grid: tuple[int, ...]) -> MaskProblem | None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != dims:
        shape = "[B, Nc]" if dims == 2 else "[B, M, Nt]"
        return MaskProblem(f"{name} is a {dims}-D int64 tensor",
                           f"got {getattr(t, 'dtype', type(t).__name__)} of shape "
                           f"{tuple(getattr(t, 'shape', ())) or '?'}",
                           f"return {name} as a {shape} torch.int64 tensor (convert with "
                           f".long(); index tensors must not be int32 or float)")
    if t.shape[0] != batch_size or 0 in t.shape:
        return MaskProblem(f"{name} shape", f"{tuple(t.shape)} for a batch of {batch_size}",
                           f"return one row per sample ({batch_size}) and no empty dimension")
    out = (t < 0) | (t >= n)
    if bool(out.any()):
        at = _first(out)
        return MaskProblem(f"{name} indices in [0, {n})",
                           f"{_where(at)} holds {int(t[at])} on a {grid_text(grid)} grid",
                           f"use row-major patch indices {_raster(grid)} in [0, {n}), "
                           f"also at padded positions (repeat a real index there)")
    return None


def grid_text(grid: tuple[int, ...]) -> str:
    """A patch grid as text: "14x14", "8x14x14"."""
    return "x".join(str(int(g)) for g in grid)


def _raster(grid: tuple[int, ...]) -> str:
    """The raster-order index of a patch in words: "row * 14 + col" on a 2-D grid,
    "(t * 14 + row) * 14 + col" on (t, h, w) and likewise for any rank."""
    if len(grid) == 2:
        return f"row * {grid[1]} + col"
    names = [f"i{d}" for d in range(len(grid) - 2)] + ["row", "col"]
    if len(grid) == 3:
        names[0] = "t"
    text = names[0]
    for name, size in zip(names[1:], grid[1:], strict=True):
        text = f"({text}) * {size} + {name}" if "+" in text else f"{text} * {size} + {name}"
    return text


def _valid_problem(name: str, valid: Any, like: torch.Tensor) -> MaskProblem | None:
    of = name.replace("_valid", "")
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or \
            valid.shape != like.shape:
        return MaskProblem(f"{name} is bool like {of}",
                           f"{getattr(valid, 'dtype', type(valid).__name__)} "
                           f"{tuple(getattr(valid, 'shape', ()))} vs {tuple(like.shape)}",
                           f"return {name} as a torch.bool tensor of the shape of {of}, "
                           f"or None when nothing is padding")
    empty = ~valid.any(-1)
    if bool(empty.any()):
        what = "row" if valid.dim() == 2 else "block"
        return MaskProblem(name, f"{_where(_first(empty))}: a {what} has no valid index",
                           f"give every {what} at least one valid index")
    return None


def duplicate_problem(check: str, idx: torch.Tensor,
                      valid: torch.Tensor | None = None) -> MaskProblem | None:
    """A repeated index in a row of `idx` (last dimension), among `valid` positions."""
    if valid is not None:  # padding gets distinct negative keys, so it never repeats
        idx = torch.where(valid, idx, -1 - torch.arange(idx.shape[-1]))
    ordered = idx.sort(dim=-1).values
    repeated = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
    flags = repeated.any(-1)
    if not bool(flags.any()):
        return None
    at = _first(flags)
    row = ordered[at]
    value = int(row[1:][(row[1:] == row[:-1]) & (row[1:] >= 0)][0])
    return MaskProblem(check, f"{_where(at)}: index {value} appears more than once",
                       "draw each index once per row (sample without replacement); padding "
                       "that repeats an index must be marked False in the validity mask")


def structure_problem(masks: Any, grid: tuple[int, ...], batch_size: int) -> MaskProblem | None:
    """Types, shapes, int64 dtypes, ranges, validity masks and uniqueness (per context row and
    per target block, among valid positions) of one MaskBatch."""
    n = math.prod(grid)
    if not isinstance(masks, MaskBatch):
        return MaskProblem("returns MaskBatch", f"got {type(masks).__name__}",
                           "return jepa_core.interfaces.MaskBatch(context, targets, ...)")
    ctx, tgt = masks.context, masks.targets
    for name, t, dims in (("context", ctx, 2), ("targets", tgt, 3)):
        problem = _tensor_problem(name, t, dims, batch_size, n, grid)
        if problem:
            return problem
    for name, like in (("context_valid", ctx), ("targets_valid", tgt)):
        valid = getattr(masks, name)
        problem = None if valid is None else _valid_problem(name, valid, like)
        if problem:
            return problem
    if not isinstance(masks.packed, bool):
        return MaskProblem("packed is a bool", f"got {type(masks.packed).__name__}",
                           "pass packed=True or False (the default) to MaskBatch")
    return (duplicate_problem("unique indices per target block", tgt, masks.targets_valid)
            or duplicate_problem("unique indices per context row", ctx, masks.context_valid))


def valid_counts(masks: MaskBatch) -> torch.Tensor:
    """[B] int64: valid context indices per row."""
    if masks.context_valid is None:
        return torch.full((masks.batch_size,), masks.context.shape[1], dtype=torch.int64)
    return masks.context_valid.sum(1)


def target_sizes(masks: MaskBatch) -> torch.Tensor:
    """[B, M] int64: valid indices of each target block."""
    if masks.targets_valid is None:
        return torch.full(masks.targets.shape[:2], masks.targets.shape[2], dtype=torch.int64)
    return masks.targets_valid.sum(-1)


def membership(idx: torch.Tensor, valid: torch.Tensor | None, n: int) -> torch.Tensor:
    """[B, N] bool: the patches at the valid positions of indices `idx` [B, K] (`valid`
    [B, K] bool, None: all valid). Padding entries point at real patches (often 0): they go
    to a scratch column n, dropped, so they can neither add a patch nor clear one."""
    if valid is not None:
        idx = torch.where(valid, idx, n)
    member = torch.zeros(idx.shape[0], n + 1, dtype=torch.bool)
    return member.scatter_(1, idx, True)[:, :n]


def target_membership(masks: MaskBatch, n: int) -> torch.Tensor:
    """[B, N] bool: patches at a valid position of some target block of each sample."""
    valid = masks.targets_valid.flatten(1) if masks.targets_valid is not None else None
    return membership(masks.targets.flatten(1), valid, n)


def context_membership(masks: MaskBatch, n: int) -> torch.Tensor:
    """[B, N] bool: patches at a valid position of each sample's context."""
    return membership(masks.context, masks.context_valid, n)


def leaking_samples(masks: MaskBatch, n: int) -> torch.Tensor:
    """[B] bool: samples whose valid context holds a patch of one of their target blocks."""
    hit = target_membership(masks, n).gather(1, masks.context)
    if masks.context_valid is not None:
        hit &= masks.context_valid
    return hit.any(1)


def overlap_problem(masks: MaskBatch, grid: tuple[int, ...],
                    tolerated: int = 0) -> MaskProblem | None:
    """Context and targets disjoint, but for at most `tolerated` samples (the fallbacks a
    `MaskerWithStats` reported for this draw)."""
    n = math.prod(grid)
    leaks = leaking_samples(masks, n)
    if int(leaks.sum()) <= tolerated:
        return None
    b = int(leaks.nonzero()[0])
    hit = target_membership(masks, n)[b].gather(0, masks.context[b])
    if masks.context_valid is not None:
        hit &= masks.context_valid[b]
    patch = int(masks.context[b][hit][0])
    extra = f" (more than the {tolerated} fallbacks the masker reported)" if tolerated else ""
    return MaskProblem(
        "context and targets disjoint (allow_overlap=False)",
        f"sample {b}: patch {patch} is in the context and in a target block; "
        f"{int(leaks.sum())} of {masks.batch_size} samples leak targets into the context"
        f"{extra}",
        "remove every target patch from the context (the predictor could otherwise copy the "
        "answer), or, if the overlap is intended, declare it with an attribute "
        "`allow_overlap = True` on the masker")


# -- determinism and the global RNGs --------------------------------------------------------
def global_rng_states() -> tuple:
    """The CPU states of torch's, Python's and numpy's global RNGs."""
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def set_global_rng_states(states: tuple) -> None:
    """Restore the (torch, Python, numpy) global RNG states `global_rng_states` returned."""
    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])


def same_global_rng_states(a: tuple, b: tuple) -> bool:
    """True when two `global_rng_states` tuples hold the same torch, Python and numpy
    states."""
    return (torch.equal(a[0], b[0]) and a[1] == b[1] and a[2][0] == b[2][0]
            and np.array_equal(a[2][1], b[2][1]) and a[2][2:] == b[2][2:])


def other_global_rng_states(seed: int = 12345) -> tuple:
    """Global RNG states unlike the usual ones, built without touching the current ones."""
    torch_state = torch.Generator().manual_seed(seed).get_state()
    python = random.Random(seed).getstate()
    numpy_state = np.random.RandomState(seed).get_state()
    return torch_state, python, numpy_state


RNG_FIX = ("draw every random number from the `generator` argument (torch.rand(..., "
           "generator=generator), torch.randint(..., generator=generator)); never call "
           "torch.manual_seed, torch.rand without a generator, random.* or np.random.*, and "
           "derive any numpy Generator from that generator")


def redraw_problem(first: Any, redraw: Callable[[], Any]) -> MaskProblem | None:
    """Draw again with `redraw()` (the same generator state as `first`'s) after setting the
    global RNGs to other states: the masks must be the same and the global RNGs untouched.
    The caller's global RNG states are restored in any case."""
    saved = global_rng_states()
    other = other_global_rng_states()
    try:
        set_global_rng_states(other)
        again = redraw()
        touched = not same_global_rng_states(other, global_rng_states())
    finally:
        set_global_rng_states(saved)
    if touched:
        return MaskProblem("never touches the global RNG", "torch's, Python's or numpy's "
                           "global RNG state changed while drawing", RNG_FIX)
    field = differing_field(first, again)
    if field:
        return MaskProblem("deterministic for a fixed generator state",
                           f"{field} differs between two draws from the same generator state "
                           f"(the global RNGs of torch, numpy and random were set to other "
                           f"states between them)", RNG_FIX)
    return None


def differing_field(a: Any, b: Any) -> str | None:
    """The first field (or mask set) in which two draws differ, or None."""
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or list(a) != list(b):
            return "the set of mask names"
        for name in a:
            field = differing_field(a[name], b[name])
            if field:
                return f"{name}.{field}"
        return None
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None) or (x is not None and not (
                x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y))):
            return name
    return None
