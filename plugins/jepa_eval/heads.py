"""Training a grid of heads at once: one pass over the cached features trains every
(learning rate, weight decay) pair, each head with its own learning rate and weight decay
under one cosine schedule; the best head is picked on held-out training rows.

Per step, the heads' losses are one cross-entropy call and their AdamW update one set of
operations on each parameter stacked across the heads: a grid of small heads otherwise spends
most of its time in the per-head overhead of those calls. Both give bit-identical weights to
one `F.cross_entropy` and one torch AdamW parameter group per head (tests/test_eval_speed.py)."""

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
    opt = GridAdamW(heads, pairs)
    steps_per_epoch = sum(-(-int((~skip[s:s + n]).sum()) // batch_size)
                          for s, n in _starts(train.shard_sizes))
    total, step = max(1, epochs * steps_per_epoch), 0
    for epoch in range(epochs):
        for x, y in minibatches(train, skip, batch_size, seed, name, epoch):
            x, y = x.to(device), y.to(device)
            loss = summed_cross_entropy(torch.stack(forward(x, True)), y)
            opt.zero_grad()
            loss.backward()
            opt.step(cosine_factor(step, total))
            step += 1
        if ticker is not None:
            ticker.advance()


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sum over heads of each head's mean cross-entropy, for logits [heads, B, C] and
    labels [B], in one call instead of one per head. Its gradient is bit-identical to that
    of the sum of separate `F.cross_entropy(logits[h], y)`: each row gets -1/B at its label
    either way (the mean's backward divides by B as the loss's own does)."""
    heads, batch = logits.shape[:2]
    per_row = F.cross_entropy(logits.flatten(0, 1), y.repeat(heads), reduction="none")
    return per_row.view(heads, batch).mean(1).sum()


class GridAdamW:
    """AdamW (torch's defaults: betas 0.9, 0.999, eps 1e-8, decoupled weight decay) over a grid
    of heads of one architecture, head i with lr, weight decay = pairs[i].

    torch.optim.AdamW with one parameter group per head costs about a dozen small operations
    per parameter tensor per step, which dominated training a grid of small heads. Here each
    parameter is stacked across the heads ([heads, ...]) and updated with those same
    operations once: element by element the same float32 arithmetic as torch's single-tensor
    AdamW (per-head scalars cast to float32 as its kernels cast them), so the trained weights
    are bit-identical to it (tests/test_eval_speed.py checks that)."""

    def __init__(self, heads: torch.nn.ModuleList, pairs: list[tuple[float, float]],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        # slots[j]: the j-th parameter of every head
        self.slots = [list(ps) for ps in zip(*(list(h.parameters()) for h in heads), strict=True)]
        self.pairs, self.betas, self.eps, self.steps = pairs, betas, eps, 0
        self.exp_avg = [torch.zeros(len(ps), *ps[0].shape, device=ps[0].device)
                        for ps in self.slots]
        self.exp_avg_sq = [torch.zeros_like(m) for m in self.exp_avg]

    def zero_grad(self) -> None:
        """Drop the gradients (set them to None)."""
        for params in self.slots:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self, factor: float) -> None:
        """One update at learning rates lr_i * factor."""
        (beta1, beta2), self.steps = self.betas, self.steps + 1
        lrs = [lr * factor for lr, _ in self.pairs]
        bias1, bias2 = 1 - beta1 ** self.steps, 1 - beta2 ** self.steps
        device = self.exp_avg[0].device
        decay = torch.tensor([1 - lr * wd for lr, (_, wd) in zip(lrs, self.pairs, strict=True)],
                             device=device)
        step_neg = torch.tensor([-(lr / bias1) for lr in lrs], device=device)
        for params, m, v in zip(self.slots, self.exp_avg, self.exp_avg_sq, strict=True):
            shape = (len(params),) + (1,) * (m.dim() - 1)
            # a head that got no gradient this step counts as a zero gradient
            grad = torch.stack([p.grad if p.grad is not None else torch.zeros_like(p)
                                for p in params])
            weights = torch.stack(params)
            weights.mul_(decay.view(shape))  # times exactly 1.0 where the decay is 0
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / bias2 ** 0.5).add_(self.eps)
            weights.add_(step_neg.view(shape) * m / denom)  # addcdiv's value * t1 / t2
            torch._foreach_copy_(params, list(weights.unbind()))


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
