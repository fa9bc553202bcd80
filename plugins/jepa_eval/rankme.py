"""RankMe: exp(entropy) of the normalised singular values of the feature matrix (Garrido et
al., 2023). A rank near 1 is a collapse; it needs no labels."""

from __future__ import annotations

import torch

from jepa_core.interfaces import EvalContext
from jepa_core.seeding import generator
from jepa_eval.common import need_images
from jepa_eval.configs import RankMeConfig

EPS = 1e-7


def rankme(x: torch.Tensor) -> float:
    """Effective rank of x [n, D]: p = s / sum(s) + eps over its singular values s."""
    s = torch.linalg.svdvals(x.double())
    p = s / s.sum().clamp_min(1e-300) + EPS
    return float(torch.exp(-(p * p.log()).sum()))


class RankMe:
    """The `rankme` protocol (a diagnostic: a value, no accuracy)."""

    def __init__(self, config: RankMeConfig):
        self.config = config
        self.feature_kinds = (config.feature,)

    def run(self, features: dict, context: EvalContext) -> list[dict]:
        """One result: the effective rank of (a seeded subset of) the training features."""
        c = self.config
        if c.feature not in features:
            return []
        train, _ = features[c.feature]
        need_images(train, 2, "rankme (the effective rank of the training features)",
                    "leave the rankme protocol out")
        n = len(train)
        if c.max_rows is not None and n > c.max_rows:
            rows = torch.randperm(n, generator=generator(context.seed, "rankme"))[:c.max_rows]
            x = train.take(rows.sort().values)
        else:
            x = train.load()
        if c.center:
            x = x - x.mean(0, keepdim=True)
        return [{"protocol": "rankme", "feature_kind": c.feature,
                 "params": {"rows": len(x), "dim": int(x.shape[1]), "center": c.center},
                 "value": rankme(x)}]


def build_rankme(config: RankMeConfig) -> RankMe:
    """Factory of the `rankme` protocol."""
    return RankMe(config)
