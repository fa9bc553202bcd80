"""C-JEPA (Mo & Tong, 2024): I-JEPA plus VICReg's variance and covariance terms on the
context encoder's pooled features, which keeps the context representation from collapsing.

    loss = prediction + variance_weight · variance(pooled context) + covariance_weight · cov
"""

from __future__ import annotations

from typing import Any

from jepa_core.interfaces import MethodOutput
from jepa_core.runtime.build import MethodParts
from jepa_objectives.methods.ijepa import IJEPA, teacher_targets
from jepa_objectives.regularizers import vicreg_covariance, vicreg_variance
from jepa_objectives.tokens import pooled


class CJEPA(IJEPA):
    def loss(self, modules: dict, batch: Any) -> MethodOutput:
        cfg, masks = self.config, batch.mask
        targets, h = teacher_targets(modules["target_encoder"], batch.images, masks)
        pred, z = self.predict(modules, batch.images, masks)
        prediction = self.prediction_term(pred, targets, masks)
        context = pooled(z.float(), masks.context_valid)  # [B, D], padding left out
        variance = vicreg_variance(context, target_std=cfg.target_std)
        covariance = vicreg_covariance(context)
        total = (prediction + cfg.variance_weight * variance
                 + cfg.covariance_weight * covariance)
        return MethodOutput(total, {"prediction": prediction, "variance": variance,
                                    "covariance": covariance}, features=h.mean(dim=1))


def build_cjepa(config: Any, parts: MethodParts) -> CJEPA:
    return CJEPA(config, parts)
