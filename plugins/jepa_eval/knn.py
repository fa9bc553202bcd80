"""Weighted kNN on cached features, streamed: test shards against train shards, a running
top-k per test image, one pair of shards in memory at a time."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from jepa_core.interfaces import EvalContext
from jepa_eval.common import need_images
from jepa_eval.configs import KNNConfig


def train_mean(train: Any) -> torch.Tensor:
    """Mean training feature, streamed."""
    total, n = None, 0
    for x, _ in train.shards():
        total = x.sum(0, dtype=torch.float64) if total is None else total + x.sum(0)
        n += len(x)
    return (total / max(n, 1)).float()


def knn_accuracy(train: Any, test: Any, num_classes: int, k: int, temperature: float,
                 center: bool = True, device: Any = "cpu", rows: int = 1024) -> float:
    """Accuracy of the similarity-weighted vote of the k nearest training features (cosine).
    Test features go `rows` at a time against each training shard: the similarity matrix
    is at most rows x (one shard), whatever the size of the test split or of its shards."""
    mean = train_mean(train).to(device) if center else None
    correct = total = 0
    for xt, yt in test.shards():
        for start in range(0, len(yt), rows):
            chunk = xt[start:start + rows].to(device)
            b = F.normalize(chunk - mean if center else chunk, dim=1)
            votes = vote(b, train, num_classes, k, temperature, mean, device)
            correct += int((votes.argmax(1).cpu() == yt[start:start + rows]).sum())
        total += len(yt)
    return correct / max(total, 1)


def vote(b: torch.Tensor, train: Any, num_classes: int, k: int, temperature: float,
         mean: torch.Tensor | None, device: Any) -> torch.Tensor:
    """[len(b), num_classes] votes of the k nearest training features of the normalised
    rows b: a running top-k over the training shards."""
    best_sim = torch.full((len(b), 0), -2.0, device=device)
    best_lab = torch.zeros((len(b), 0), dtype=torch.long, device=device)
    for xa, ya in train.shards():
        a = F.normalize(xa.to(device) - mean if mean is not None else xa.to(device), dim=1)
        sim = b @ a.T
        top, idx = sim.topk(min(k, sim.shape[1]), dim=1)
        del sim, a
        best_sim = torch.cat([best_sim, top], dim=1)
        best_lab = torch.cat([best_lab, ya.to(device)[idx]], dim=1)
        keep = best_sim.topk(min(k, best_sim.shape[1]), dim=1)
        best_sim, best_lab = keep.values, best_lab.gather(1, keep.indices)
    votes = torch.zeros(len(b), num_classes, device=device, dtype=torch.float64)
    votes.scatter_add_(1, best_lab, torch.exp(best_sim.double() / temperature))
    return votes


class KNN:
    """The `knn` protocol."""

    def __init__(self, config: KNNConfig):
        self.config = config
        self.feature_kinds = (config.feature,)

    def run(self, features: dict, context: EvalContext) -> list[dict]:
        """One result: test accuracy of the weighted vote."""
        c = self.config
        if c.feature not in features:
            return []
        train, test = features[c.feature]
        need_images(train, c.k, f"knn with k={c.k} (the k nearest training images vote)",
                    f"lower k (eval.protocols: [{{name: knn, k: {max(1, len(train))}}}])")
        acc = knn_accuracy(train, test, context.num_classes, c.k, c.temperature, c.center,
                           context.device)
        return [{"protocol": "knn", "feature_kind": c.feature, "setting": f"k={c.k}",
                 "params": {"k": c.k, "temperature": c.temperature, "center": c.center},
                 "accuracy": {"test": acc}}]


def build_knn(config: KNNConfig) -> KNN:
    """Factory of the `knn` protocol."""
    return KNN(config)
