"""V-JEPA (Bardes et al., 2024): I-JEPA's teacher and predictor over several mask sets per
sample (clips [B, C, T, H, W] or images alike: nothing here depends on the sample's rank).

    target_encoder(all patches) → layer norm                     (no grad, once per batch)
    for each mask set i: encoder(its context) → predictor(…, mask_index=i) → L1 to its targets
    loss = mean over the sets;  after the optimizer step: target_encoder ← EMA(encoder)

The official recipe: L1 (its loss_exp 1.0), EMA momentum 0.998 → 1.0 (the recipe's
`target_updater: {name: ema, momentum: [0.998, 1.0]}`), two mask sets (`multiblock3d`).
"""

from __future__ import annotations

from typing import Any

import torch

from jepa_core.errors import ConfigError
from jepa_core.interfaces import MethodOutput
from jepa_core.runtime.build import MethodParts
from jepa_objectives.methods.ijepa import IJEPA, teacher_targets
from jepa_objectives.tokens import gather_tokens


class VJEPA(IJEPA):
    """IJEPA's modules, teacher and EMA update; one context and predictor pass per mask set."""

    def __init__(self, config: Any, parts: MethodParts):
        super().__init__(config, parts)
        self.check_mask_tokens(parts)

    def check_mask_tokens(self, parts: MethodParts) -> None:
        """ConfigError unless the predictor has one mask token shared by every set, or one per
        set of a masker that names its sets (`masker.sets`, as `multiblock3d`)."""
        tokens = int(getattr(self.modules["predictor"], "num_mask_tokens", 1))
        masker = parts.recipe.masker
        sets = getattr(masker.config, "sets", None) if masker is not None else None
        if tokens == 1 or masker is None or sets is None or tokens == len(sets):
            return
        raise ConfigError(
            f"recipe {parts.recipe.name!r}: predictor.num_mask_tokens is {tokens} but the "
            f"masker {masker.name!r} draws {len(sets)} mask set(s) "
            f"({', '.join(s.name for s in sets)}); V-JEPA gives each set its own mask token, "
            f"so set predictor.num_mask_tokens to {len(sets)} (or to 1 for one token shared "
            f"by every set).")

    def mask_token_options(self, i: int) -> dict[str, int]:
        """The predictor's keywords for mask set i: `mask_index=i` when the predictor has a
        mask token per set (`num_mask_tokens > 1`), none otherwise."""
        tokens = int(getattr(self.modules["predictor"], "num_mask_tokens", 1))
        return {"mask_index": i} if tokens > 1 else {}

    def loss(self, modules: dict, batch: Any) -> MethodOutput:
        sets = list(batch.masks.items())
        if not sets:
            raise ValueError("vjepa needs at least one mask set; the batch has none")
        terms: dict[str, torch.Tensor] = {}
        h: torch.Tensor | None = None
        for i, (name, masks) in enumerate(sets):
            if h is None:  # the teacher sees the whole sample once, for every set
                targets, h = teacher_targets(modules["target_encoder"], batch.images, masks)
            else:
                targets = gather_tokens(h, masks.targets)
            pred, _ = self.predict(modules, batch.images, masks, **self.mask_token_options(i))
            terms[f"prediction_{name}"] = self.prediction_term(pred, targets, masks)
        total = torch.stack(list(terms.values())).mean()
        assert h is not None
        return MethodOutput(total, terms, features=h.mean(dim=1))


def build_vjepa(config: Any, parts: MethodParts) -> VJEPA:
    """The registered factory of the "vjepa" method."""
    return VJEPA(config, parts)
