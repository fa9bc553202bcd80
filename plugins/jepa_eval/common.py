"""What the protocols share: held-out rows, seeded minibatches streamed from the cache, and
classifier accuracy over a stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from jepa_core.errors import ConfigError
from jepa_core.seeding import generator

MORE_IMAGES = ("or evaluate on more images (eval.max_images, if set, higher; a data.root with "
               "more readable images)")


def need_images(train: Any, least: int, what: str, fix: str) -> None:
    """ConfigError unless the probe-training split holds at least `least` images: `what`
    needs them, `fix` is the setting to change instead of adding images."""
    if len(train) < least:
        raise ConfigError(f"{what} needs at least {least} probe-training images, and the "
                          f"split has {len(train)} readable: {fix}, {MORE_IMAGES}.")


def held_out(n: int, fraction: float, seed: int, name: str) -> torch.Tensor:
    """[n] bool, True for a seeded `fraction` of the rows (at least one, and one left over):
    the part of the training split that picks a protocol's hyper-parameters."""
    cut = min(max(1, round(n * fraction)), max(n - 1, 1))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator(seed, name, "held-out"))[:cut]] = True
    return mask


def minibatches(features: Any, skip: torch.Tensor, batch_size: int, seed: int, name: str,
                epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (x, y) minibatches over the shards of `features`, leaving out the
    rows where `skip` is True: shards in a seeded order, rows shuffled within each shard
    (one shard in memory at a time)."""
    g = generator(seed, name, "epoch", epoch)
    sizes = features.shard_sizes
    starts = [sum(sizes[:s]) for s in range(len(sizes))]
    for s in torch.randperm(len(sizes), generator=g).tolist():
        x, y = features.shard(s)
        keep = (~skip[starts[s]:starts[s] + len(x)]).nonzero().squeeze(1)
        order = keep[torch.randperm(len(keep), generator=g)]
        for i in range(0, len(order), batch_size):
            rows = order[i:i + batch_size]
            yield x[rows], y[rows]
        del x, y  # before the next shard is read: one shard in memory at a time


def rows_of(features: Any, select: torch.Tensor | None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) per shard, only the rows where `select` is True (all rows for None)."""
    start = 0
    for x, y in features.shards():
        if select is None:
            yield x, y
        else:
            part = select[start:start + len(x)]
            if part.any():
                yield x[part], y[part]
        start += len(x)
        del x, y


def count_correct(predict: Callable[[torch.Tensor], list[torch.Tensor]], stream: Any,
                  heads: int, device: Any, batch_size: int = 1024) -> torch.Tensor:
    """[heads] accuracy of each head of `predict(x) -> [logits per head]` over a stream."""
    correct, total = torch.zeros(heads, dtype=torch.long), 0
    with torch.no_grad():
        for x, y in stream:
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
                for h, logits in enumerate(predict(xb)):
                    correct[h] += int((logits.argmax(1) == yb).sum())
                total += len(yb)
            del x, y
    return correct.double() / max(total, 1)


def cosine_factor(step: int, total: int, warmup: int = 0) -> float:
    """Learning-rate factor: linear warmup, then cosine from 1 to 0."""
    import math

    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
