"""Token counts of a recipe's masks: one function, one definition, for `jepa check` (the plan
and its cost model) and `jepa masks` (the masker's statistics).

    counts = draw_token_counts(masker, seed=recipe.seed, batch_size=recipe.train.global_batch_size)
    counts.context, counts.definition()
"""

from __future__ import annotations

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
    collate = MaskingCollate(masker, seed, batch_size)
    draws = [next(iter(collate.step_masks(step).values())) for step in range(batches)]
    context = sum(float(d.context_valid.sum(1).float().mean()) if d.context_valid is not None
                  else float(d.context.shape[1]) for d in draws) / batches
    target = sum(float(d.targets_valid.sum(-1).float().mean()) if d.targets_valid is not None
                 else float(d.targets.shape[2]) for d in draws) / batches  # valid only
    return TokenCounts(context, target, int(draws[0].targets.shape[1]), batches, batch_size,
                       seed)
