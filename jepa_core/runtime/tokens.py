"""Token counts of a recipe's masks: one function, one definition, for `jepa check` (the plan
and its cost model) and `jepa masks` (the masker's statistics).

    counts = draw_token_counts(masker, seed=recipe.seed, batch_size=recipe.train.global_batch_size)
    counts.context, counts.definition()
"""

from __future__ import annotations

from typing import Any

import attrs

from jepa_core.interfaces import Masker
from jepa_core.runtime.data import MaskingCollate

TOKEN_BATCHES = 8  # steps whose masks are drawn


@attrs.frozen
class TokenCounts:
    """Mean tokens per sample of the masks of `batches` steps of `batch_size` samples."""

    context: float  # valid context tokens per sample (padding not counted)
    target: float  # valid tokens per target block (padding not counted)
    num_targets: int  # target blocks per sample
    batches: int
    batch_size: int
    seed: int

    def definition(self) -> str:
        """What `context` is, in words, with the draws it is the mean of."""
        return (f"context tokens per sample as fed to the encoder (valid context patches after "
                f"the masker's collation, padding not counted), mean over {self.batches} "
                f"batches of size {self.batch_size}: the masks of steps 0-{self.batches - 1} "
                f"with seed {self.seed}, drawn as training draws them")


def draw_token_counts(masker: Masker, seed: int, batch_size: int,
                      batches: int = TOKEN_BATCHES) -> TokenCounts:
    """Token counts of the masks training would draw for steps 0..batches-1 (the global batch
    of each, generator (seed, "masks", step)); for a masker of several mask sets, the first."""
    return next(iter(draw_set_token_counts(masker, seed, batch_size, batches).values()))


def draw_set_token_counts(masker: Masker, seed: int, batch_size: int,
                          batches: int = TOKEN_BATCHES) -> dict[str, TokenCounts]:
    """{set name: TokenCounts} of the masks training would draw for steps 0..batches-1, one
    entry per mask set (a masker returning one MaskBatch gives one entry, named as the trainer
    names it)."""
    collate = MaskingCollate(masker, seed, batch_size)
    steps = [collate.step_masks(step) for step in range(batches)]
    return {name: _counts([s[name] for s in steps], seed, batch_size) for name in steps[0]}


def _counts(draws: list, seed: int, batch_size: int) -> TokenCounts:
    batches = len(draws)
    context = sum(float(d.context_valid.sum(1).float().mean()) if d.context_valid is not None
                  else float(d.context.shape[1]) for d in draws) / batches
    target = sum(float(d.targets_valid.sum(-1).float().mean()) if d.targets_valid is not None
                 else float(d.targets.shape[2]) for d in draws) / batches  # valid only
    return TokenCounts(context, target, int(draws[0].targets.shape[1]), batches, batch_size,
                       seed)


# -- context tokens processed per step under each layout --------------------------------------
LAYOUTS = ("truncate", "pad", "pack")


@attrs.frozen
class ContextLayouts:
    """Context tokens the context encoder processes per step, mean over `batches` steps: the
    global batch of `batch_size` rows, in micro-batches of `micro_batch` consecutive rows as
    the trainer splits it (each trimmed of the padding columns none of its rows needs).

    layout: what the recipe's masks come to in its micro-batches: "pack" (MaskBatch.packed),
    "pad" (some micro-batch keeps padding after trimming) or "truncate" (none does).
    processed: tokens computed per step in that layout (padding included unless packed).
    valid: valid context tokens per step (the context the samples keep).
    by_layout: {truncate, pad, pack: tokens per step} from the context sizes before
    equalisation (a MaskerWithStats): every micro-batch cut to its shortest row, padded to its
    longest, or packed; None for a masker that does not report those sizes.
    """

    layout: str
    processed: float
    valid: float
    by_layout: dict[str, float] | None
    batch_size: int
    micro_batch: int
    batches: int


def context_layouts(masker: Any, seed: int, batch_size: int, micro_batch: int,
                    batches: int = TOKEN_BATCHES) -> ContextLayouts:
    """`ContextLayouts` of the masks training draws for steps 0..batches-1 (for a masker of
    several mask sets, the first; the layout alternatives only for a `MaskerWithStats`)."""
    from jepa_core.interfaces import MaskBatch, MaskerWithStats
    from jepa_core.runtime.data import _take_rows, mask_generator

    micro_batch = max(1, min(micro_batch, batch_size))
    with_sizes = isinstance(masker, MaskerWithStats)
    processed = valid = 0.0
    by_layout = dict.fromkeys(LAYOUTS, 0.0)
    padded = packed = False
    for step in range(batches):
        drawn = (masker.sample_with_stats(batch_size, mask_generator(seed, step)) if with_sizes
                 else (masker(batch_size, mask_generator(seed, step)), None))
        masks, stats = drawn
        if not isinstance(masks, MaskBatch):  # several mask sets: the first
            masks, stats = next(iter(dict(masks).values())), None
            with_sizes = False
        packed |= masks.packed
        for start in range(0, batch_size, micro_batch):
            part = _take_rows(masks, slice(start, start + micro_batch))
            full = float(part.context.numel())
            kept = full if part.context_valid is None else float(part.context_valid.sum())
            padded |= part.context_valid is not None
            processed += kept if masks.packed else full
            valid += kept
            if stats is not None:
                sizes = stats.context_sizes[start:start + micro_batch].double()
                by_layout["truncate"] += float(sizes.min()) * len(sizes)
                by_layout["pad"] += float(sizes.max()) * len(sizes)
                by_layout["pack"] += float(sizes.sum())
    mean = {k: v / batches for k, v in by_layout.items()} if with_sizes else None
    layout = "pack" if packed else "pad" if padded else "truncate"
    return ContextLayouts(layout, processed / batches, valid / batches, mean, batch_size,
                          micro_batch, batches)
