"""The linear probe of I-JEPA on cached features: per feature kind, a grid of linear heads
(learning rate x weight decay, each with and without a BatchNorm before it) trained at once.

Ours, where the paper's ImageNet setting does not carry over: AdamW with a cosine schedule
instead of LARS at batch 16,384 (the same role, at batch sizes a small set allows). The solver
is written here rather than taken from scikit-learn because it streams shards from the cache
(bounded memory), trains the whole grid in one pass, and runs on the GPU.
"""

from __future__ import annotations

from typing import Any

import torch

from jepa_core.interfaces import EvalContext
from jepa_core.seeding import generator
from jepa_eval.common import need_images
from jepa_eval.configs import LinearConfig
from jepa_eval.heads import grid, pick_best, train_heads, validation_rows


class LinearProbe:
    """The `linear` protocol."""

    def __init__(self, config: LinearConfig):
        self.config = config
        self.feature_kinds = tuple(dict.fromkeys(config.features))

    def run(self, features: dict, context: EvalContext) -> list[dict]:
        """One result per feature kind: the head best on the held-out rows."""
        c = self.config
        kinds = [k for k in self.feature_kinds if k in features]
        results = []
        with context.progress(f"linear probe ({c.epochs} epoch{'s' * (c.epochs != 1)} per kind)",
                              c.epochs * len(kinds), "epochs") as ticker:
            for kind in kinds:
                results.append(self.run_kind(kind, *features[kind], context, ticker))
        return results

    def run_kind(self, kind: str, train: Any, test: Any, context: EvalContext,
                 ticker: Any) -> dict:
        """Train the grid on one kind of features and report its best head."""
        c, device = self.config, context.device
        need_images(train, 2, "the linear probe (heads trained on one part, the best picked "
                    "on the held-out rest)", "leave the linear protocol out")
        dim = train.item_shape[0]
        pairs = grid(c.lrs, c.weight_decays)
        layout = [(bn, lr, wd) for bn in dict.fromkeys(c.batchnorm) for lr, wd in pairs]
        g = generator(context.seed, "linear-init", kind)
        heads = torch.nn.ModuleList()
        for _ in layout:
            head = torch.nn.Linear(dim, context.num_classes)
            with torch.no_grad():
                head.weight.normal_(0.0, 0.01, generator=g)
                head.bias.zero_()
            heads.append(head)
        heads.to(device)
        # One BatchNorm without affine parameters serves every BN head: its statistics are
        # the same for all of them, and an affine map before a linear head adds nothing.
        bn = torch.nn.BatchNorm1d(dim, affine=False).to(device)

        def forward(x: torch.Tensor, training: bool) -> list[torch.Tensor]:
            # A minibatch of one row (a shard's last) has no batch statistics: it is
            # normalised with the running ones (train mode would raise).
            bn.train(training and len(x) > 1)
            normed = bn(x) if any(b for b, _, _ in layout) else None
            return [head(normed if b else x) for head, (b, _, _) in zip(heads, layout, strict=True)]

        name = f"linear-{kind}"
        val = validation_rows(train, c.val_fraction, context.seed, name)
        train_heads(heads, [(lr, wd) for _, lr, wd in layout], forward, train, val, c.epochs,
                    c.batch_size, context.seed, name, device, ticker)
        best, val_acc, test_acc = pick_best(forward, train, test, val, len(layout), device)
        bn_used, lr, wd = layout[best]
        return {"protocol": "linear", "feature_kind": kind,
                "params": {"lr": lr, "weight_decay": wd, "batchnorm": bn_used,
                           "epochs": c.epochs, "batch_size": c.batch_size,
                           "heads_in_grid": len(layout), "held_out": int(val.sum())},
                "accuracy": {"val": val_acc, "test": test_acc}}


def build_linear(config: LinearConfig) -> LinearProbe:
    """Factory of the `linear` protocol."""
    return LinearProbe(config)
