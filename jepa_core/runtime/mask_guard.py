"""The masker's output, checked on the first steps of every run before anything trains.

A masker that leaks targets into the context, repeats indices, returns int32 or float indices
or draws from the global RNG would otherwise train silently (or fail deep inside an encoder
with a traceback that never names it). `MaskGuard`, in the main process of every rank:

1. draws the global batch of the first `CHECK_STEPS` steps exactly as the data loader will
   (`mask_generator(seed, step)`), and checks each with the rules of `jepa_core.maskcheck`
   (the ones `jepa_core.testing.check_masker` runs): types, shapes, int64, ranges, validity
   masks, unique indices per row / block, and context and targets disjoint unless the masker
   has `allow_overlap = True` (a `MaskerWithStats` may overlap in as many samples as it reports
   fallbacks);
2. draws the first step a second time from the same generator state with the global RNGs of
   torch, numpy and random set to other states, and requires the same masks and untouched
   global RNGs (every global RNG state is restored afterwards: the run's numbers do not change);
3. compares the collated micro-batches of those steps, drawn wherever the loader draws them
   (DataLoader workers included), with the rows of its own draws.

A broken rule raises `MaskerOutputError` (exit 2) naming the masker, its plugin, the step, the
sample and the fix; a masker that raises while drawing is a `PluginFailed` naming it.
"""

from __future__ import annotations

import functools
from typing import Any, NoReturn

from jepa_core.errors import JepaError, MaskerOutputError, PluginFailed
from jepa_core.interfaces import MaskBatch, Masker, MaskerWithStats
from jepa_core.maskcheck import (
    RNG_FIX,
    MaskProblem,
    differing_field,
    global_rng_states,
    overlap_problem,
    redraw_problem,
    same_global_rng_states,
    set_global_rng_states,
    structure_problem,
)
from jepa_core.plugins import Registry, _describe, code_roots, raised_at
from jepa_core.runtime.data import DEFAULT_MASKS, BatchLayout, _take_rows, draw_masks

CHECK_STEPS = 3  # steps whose masks are checked at the start of a run
GUIDE = ("Test the masker with jepa_core.testing.check_masker (see docs/writing_a_masker.md), "
         "which runs the same checks.")


def describe_masker(masker: Masker, recipe: Any, registry: Registry) -> str:
    """'masker NAME (class, plugin P, distribution D V)' for messages."""
    kind = type(masker)
    where = f"{kind.__module__}.{kind.__qualname__}"
    name = recipe.masker.name
    try:
        spec = registry.get("masker", name)
    except JepaError:
        return f"masker {name!r} ({where})"
    dist = (f"{spec.distribution} {spec.version or ''}".strip() if spec.distribution
            else "no distribution")
    return f"masker {name!r} ({where}, plugin {spec.plugin!r}, {dist})"


class MaskGuard:
    """See the module docstring. `check_start()` before the loader is iterated, then
    `check_batch(batch, micro)` on each collated micro-batch."""

    def __init__(self, masker: Masker, who: str, seed: int, layout: BatchLayout,
                 first_step: int, stop_step: int, roots: list[str] | None = None):
        self.masker, self.who, self.seed, self.layout = masker, who, seed, layout
        self.steps = range(first_step, min(first_step + CHECK_STEPS, stop_step))
        self.roots = roots or code_roots(type(masker))
        self.drawn: dict[int, dict[str, MaskBatch]] = {}

    # -- the masker's own draws ----------------------------------------------------------
    def draw(self, step: int) -> Any:
        """masker(global batch, generator of `step`) on one thread, as the loader draws it;
        an exception names the masker."""
        try:
            return draw_masks(self.masker, self.layout.global_batch, self.seed, step)
        except JepaError:
            raise
        except Exception as exc:
            raise PluginFailed(
                f"{self.who} raised while drawing the masks of step {step} (a batch of "
                f"{self.layout.global_batch}): {_describe(exc)} (raised at "
                f"{raised_at(exc, self.roots)}). The fault is in the masker: fix it or report "
                f"it to its authors. {GUIDE}") from exc

    def refuse(self, step: int, name: str, problem: MaskProblem, several: bool) -> NoReturn:
        """Raise the MaskerOutputError for `problem` at `step` (naming the mask set when the
        masker returns several)."""
        where = f"step {step}" + (f", mask set {name!r}" if several else "")
        fix = f" Fix: {problem.fix}." if problem.fix else ""
        raise MaskerOutputError(
            f"{self.who} returned masks that break the masker contract ({where}, checked on "
            f"the first {len(self.steps)} steps of the run): {problem.check}: "
            f"{problem.detail}.{fix} {GUIDE}")

    def mask_sets(self, step: int, out: Any) -> dict[str, Any]:
        """The masker's output as {name: masks}: a MaskBatch becomes the default set; anything but
        a non-empty dict with str keys is refused."""
        if isinstance(out, MaskBatch):
            return {DEFAULT_MASKS: out}
        if isinstance(out, dict) and out and all(isinstance(k, str) for k in out):
            return dict(out)
        self.refuse(step, "", MaskProblem(
            "returns a MaskBatch", f"got {type(out).__name__}",
            "return jepa_core.interfaces.MaskBatch(context, targets, ...) (or a non-empty "
            "dict {name: MaskBatch} for several mask sets)"), False)

    def check_step(self, step: int, out: Any) -> dict[str, MaskBatch]:
        """The mask sets of `out` after checking each one's structure and (unless the masker
        allows overlap) that targets stay out of the context; refuses the first problem."""
        sets = self.mask_sets(step, out)
        grid = tuple(int(g) for g in self.masker.grid)  # any rank: (gh, gw), (t, h, w), ...
        overlap_ok = bool(getattr(self.masker, "allow_overlap", False))
        for name, masks in sets.items():
            problem = structure_problem(masks, grid, self.layout.global_batch)
            if problem is None and not overlap_ok:
                problem = overlap_problem(masks, grid)
                if problem is not None and isinstance(self.masker, MaskerWithStats):
                    problem = overlap_problem(masks, grid, self.fallbacks(step))
            if problem is not None:
                self.refuse(step, name, problem, len(sets) > 1)
        return sets

    def fallbacks(self, step: int) -> int:
        """The fallbacks a MaskerWithStats reports for this step (0 if it reports nonsense)."""
        try:
            assert isinstance(self.masker, MaskerWithStats)
            _, stats = draw_masks(self.masker, self.layout.global_batch, self.seed, step,
                                  with_stats=True)
            return int(stats.fallbacks)
        except Exception:
            return 0

    def check_start(self) -> None:
        """Draw and check the masks of the first steps (module docstring, points 1 and 2)."""
        for i, step in enumerate(self.steps):
            before = global_rng_states()
            out = self.draw(step)
            if i == 0:
                touched = not same_global_rng_states(before, global_rng_states())
                set_global_rng_states(before)
                problem = (MaskProblem("never touches the global RNG", "torch's, Python's or "
                                       "numpy's global RNG state changed while drawing",
                                       RNG_FIX) if touched else None)
                sets = self.check_step(step, out)
                problem = problem or redraw_problem(out, functools.partial(self.draw, step))
                if problem:
                    self.refuse(step, "", problem, False)
            else:
                sets = self.check_step(step, out)
            self.drawn[step] = sets

    # -- the batches the loader collated ---------------------------------------------------
    def check_batch(self, batch: Any, micro: int) -> None:
        """Micro-batch `micro` of its step must hold the rows of the masks checked above."""
        sets = self.drawn.get(batch.step)
        if sets is None:
            return
        rows = self.layout.rows(micro)
        expected = {name: _take_rows(m, slice(rows.start, rows.stop)) for name, m in sets.items()}
        field = differing_field(expected, batch.masks)
        if field:
            raise MaskerOutputError(
                f"{self.who}: the masks of step {batch.step} that reached the trainer (rows "
                f"{rows.start}-{rows.stop - 1}, drawn by the data loader) differ in {field} "
                f"from the masks the main process drew for the same step from the same "
                f"generator state. A masker must depend on nothing but its generator: no "
                f"per-process or per-worker state, no call counters, no clock. {GUIDE}")
        if micro == self.layout.accum_steps - 1:
            del self.drawn[batch.step]
