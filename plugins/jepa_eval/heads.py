"""Training a grid of heads at once: one pass over the cached features trains every
(learning rate, weight decay) pair, each head with its own AdamW parameter group and a
cosine schedule; the best head is picked on held-out training rows."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from jepa_eval.common import cosine_factor, count_correct, held_out, minibatches, rows_of


def grid(lrs: tuple[float, ...], weight_decays: tuple[float, ...]) -> list[tuple[float, float]]:
    """Every (lr, weight decay) pair, in a fixed order."""
    return list(itertools.product(lrs, weight_decays))


def train_heads(heads: torch.nn.ModuleList, pairs: list[tuple[float, float]],
                forward: Callable[[torch.Tensor, bool], list[torch.Tensor]], train: Any,
                skip: torch.Tensor, epochs: int, batch_size: int, seed: int, name: str,
                device: Any, ticker: Any = None) -> None:
    """Train every head (head i with lr, wd = pairs[i]) on the same minibatches; the loss is
    the sum of the heads' cross-entropies, so their gradients stay separate."""
    groups = [{"params": list(h.parameters()), "lr": lr, "base_lr": lr, "weight_decay": wd}
              for h, (lr, wd) in zip(heads, pairs, strict=True)]
    opt = torch.optim.AdamW(groups)
    steps_per_epoch = sum(-(-int((~skip[s:s + n]).sum()) // batch_size)
                          for s, n in _starts(train.shard_sizes))
    total, step = max(1, epochs * steps_per_epoch), 0
    for epoch in range(epochs):
        for x, y in minibatches(train, skip, batch_size, seed, name, epoch):
            factor = cosine_factor(step, total)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            x, y = x.to(device), y.to(device)
            loss = sum(F.cross_entropy(logits, y) for logits in forward(x, True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if ticker is not None:
            ticker.advance()


def _starts(sizes: list[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in sizes:
        out.append((start, n))
        start += n
    return out


def pick_best(forward: Callable[[torch.Tensor, bool], list[torch.Tensor]], train: Any,
              test: Any, val: torch.Tensor, heads: int, device: Any) -> tuple[int, float, float]:
    """(index of the head best on the held-out rows (the first among equals), its held-out
    accuracy, its test accuracy)."""
    def predict(x: torch.Tensor) -> list[torch.Tensor]:
        return forward(x, False)

    val_acc = count_correct(predict, rows_of(train, val), heads, device)
    best = int(torch.argmax(val_acc))  # argmax returns the first maximum
    test_acc = count_correct(lambda x: [predict(x)[best]], test.shards(), 1, device)
    return best, float(val_acc[best]), float(test_acc[0])


def validation_rows(train: Any, fraction: float, seed: int, name: str) -> torch.Tensor:
    """The held-out rows of the training features for one protocol."""
    return held_out(len(train), fraction, seed, name)
