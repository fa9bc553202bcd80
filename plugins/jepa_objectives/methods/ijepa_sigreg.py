"""I-JEPA with SIGReg instead of an EMA teacher: the multi-block masks and the predictor of
I-JEPA, targets from the same encoder on the whole image (with gradients, no stop-gradient),
and SIGReg on that encoder's pooled embeddings to keep them from collapsing.

    encoder(all patches) → layer norm → gather target blocks → targets
    encoder(context) → predictor → prediction loss against the targets
    loss = (1 − lam) · prediction + lam · SIGReg(average-pooled full-image embeddings)
"""

from __future__ import annotations

from typing import Any

from jepa_core.interfaces import MethodOutput
from jepa_core.runtime.build import MethodParts
from jepa_objectives.methods.ijepa import MaskedPrediction
from jepa_objectives.methods.lejepa import sigreg_arguments
from jepa_objectives.regularizers import sigreg
from jepa_objectives.tokens import gather_tokens, normalised_targets


class IJEPASIGReg(MaskedPrediction):
    trainable = ("encoder", "predictor")
    eval_module = "encoder"

    def __init__(self, config: Any, parts: MethodParts):
        super().__init__(parts)
        self.config, self.seed = config, parts.recipe.seed

    def loss(self, modules: dict, batch: Any) -> MethodOutput:
        masks = batch.mask
        h = modules["encoder"](batch.images)  # [B, N, D], with gradients
        targets = gather_tokens(normalised_targets(h), masks.targets)
        pred, _ = self.predict(modules, batch.images, masks)
        prediction = self.prediction_term(pred, targets, masks)
        embeddings = h.float().mean(dim=1)  # [B, D]
        sig = sigreg(embeddings, **sigreg_arguments(self.config.sigreg, self.seed, batch.step))
        lam = self.config.lam
        return MethodOutput((1 - lam) * prediction + lam * sig,
                            {"prediction": prediction, "sigreg": sig},
                            features=embeddings.detach())


def build_ijepa_sigreg(config: Any, parts: MethodParts) -> IJEPASIGReg:
    return IJEPASIGReg(config, parts)
