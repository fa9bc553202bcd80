"""Multi-block masker: the vectorised sampler against a per-sample loop of the same draws.

    .venv/bin/python bench/masks.py

Prints the time per batch of both implementations, measured in the same run on one thread, for
batch 16 / 64 / 128 on 14x14, 16x16 and 28x28 grids and both styles, then the mask statistics
of each style on 14x14 at batch 128 (the official sampler's, for comparison: target blocks
30-40 patches, mean ~33; context ~84 before truncation, ~54 after).

`loop_masks` is the baseline: the straightforward way to write the sampler (one sample, one
block at a time, like the official code), drawing from the same distribution with the same
generator. Block sizes come from the masker's own `draw_sizes`, so both see the same sizes.
"""

from __future__ import annotations

import statistics
import time

import torch

from jepa_core.interfaces import MaskBatch
from jepa_image.configs import MultiBlockConfig
from jepa_image.multiblock import MAX_REDRAWS, MultiBlockMasker, build_masker


def _loop_block(masker: MultiBlockMasker, size, g: torch.Generator) -> torch.Tensor:
    """[gh, gw] bool mask of one block at a random position."""
    gh, gw = masker.grid
    slack = 0 if masker.reference else 1
    top = int(torch.randint(0, gh - size[0] + slack, (1,), generator=g))
    left = int(torch.randint(0, gw - size[1] + slack, (1,), generator=g))
    mask = torch.zeros(gh, gw, dtype=torch.bool)
    mask[top:top + size[0], left:left + size[1]] = True
    return mask


def _loop_sample(masker: MultiBlockMasker, tsize, csize, g: torch.Generator):
    """One sample: (list of M target masks [gh, gw], context mask [gh, gw], fell back)."""
    c = masker.config
    for _ in range(MAX_REDRAWS + 1):
        blocks = [_loop_block(masker, tsize, g) for _ in range(c.num_targets)]
        context = torch.zeros(masker.grid, dtype=torch.bool)
        for _ in range(c.num_context):
            context |= _loop_block(masker, csize, g)
        keep = context.clone()
        if not c.allow_overlap:
            for block in blocks:
                keep &= ~block
        if int(keep.sum()) >= c.min_keep:
            return blocks, keep, False
    keep = context.clone()  # fallback: remove targets while min_keep still holds
    for block in blocks:
        if int((keep & ~block).sum()) < c.min_keep:
            break
        keep &= ~block
    return blocks, keep, True


def _loop_equalize(masker: MultiBlockMasker, rows: list[torch.Tensor], g: torch.Generator):
    counts = [len(r) for r in rows]
    if masker.reference:
        return torch.stack([r[: min(counts)] for r in rows]), None
    if masker.config.context_equalize == "pad":
        length = max(counts)
        padded, valid = [], []
        for r in rows:
            padded.append(torch.cat([r, r[:1].repeat(length - len(r))]))
            valid.append(torch.arange(length) < len(r))
        return torch.stack(padded), torch.stack(valid)
    chosen = [r[torch.randperm(len(r), generator=g)[: min(counts)]].sort().values for r in rows]
    return torch.stack(chosen), None


def loop_masks(masker: MultiBlockMasker, batch_size: int, g: torch.Generator) -> MaskBatch:
    """The per-sample loop implementation of `masker`'s draws (the benchmark's baseline)."""
    tsize, csize = masker.draw_sizes(g)
    targets, contexts = [], []
    for _ in range(batch_size):
        blocks, keep, _ = _loop_sample(masker, tsize, csize, g)
        targets.append(torch.stack([b.flatten().nonzero().squeeze(1) for b in blocks]))
        contexts.append(keep.flatten().nonzero().squeeze(1))
    context, valid = _loop_equalize(masker, contexts, g)
    return MaskBatch(context, torch.stack(targets), valid)


def per_batch_seconds(fn, batch_size: int, budget_s: float = 0.25) -> float:
    """Seconds per call of fn(batch_size, generator): the best of 5 rounds of calls, each
    round about budget_s / 5 (the minimum is the figure least disturbed by other load)."""
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    fn(batch_size, g)
    calls = max(1, int(budget_s / 5 / max(time.perf_counter() - t0, 1e-6)))
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(batch_size, g)
        rounds.append((time.perf_counter() - t0) / calls)
    return min(rounds)


def timing_table() -> None:
    print(f"{'grid':>6} {'style':>9} {'batch':>5} {'vectorised':>11} {'loop':>10} {'speed-up':>8}")
    for side in (14, 16, 28):
        for style in ("reference", "corrected"):
            masker = build_masker(MultiBlockConfig(style=style), (side, side))
            for batch in (16, 64, 128):
                fast = per_batch_seconds(masker, batch, 0.15)
                slow = per_batch_seconds(lambda b, g, masker=masker: loop_masks(masker, b, g),
                                         batch, 0.3)
                print(f"{side:>3}x{side:<2} {style:>9} {batch:>5} {fast * 1e3:>8.3f} ms "
                      f"{slow * 1e3:>7.2f} ms {slow / fast:>7.1f}x")


def statistics_table(batches: int = 50) -> None:
    print(f"\nstatistics on 14x14, batch 128, {batches} batches "
          "(official sampler: targets 30-40, mean ~33; context ~84 before, ~54 after)")
    for style in ("reference", "corrected"):
        masker = build_masker(MultiBlockConfig(style=style), (14, 14))
        g = torch.Generator().manual_seed(0)
        sizes, before, after, aspects, fallbacks = [], [], [], [], 0
        for _ in range(batches):
            masks, stats = masker.sample_with_stats(128, g)
            sizes.append(masks.targets.shape[2])
            aspects.append(stats.target_size[0] / stats.target_size[1])
            before.extend(stats.context_sizes.tolist())
            after.append(masks.context.shape[1])
            fallbacks += stats.fallbacks
        print(f"  {style:>9}: target blocks min {min(sizes)} mean {statistics.mean(sizes):.1f} "
              f"max {max(sizes)} (aspect {min(aspects):.2f}-{max(aspects):.2f}); context "
              f"before {statistics.mean(before):.1f} (min {min(before)}), after "
              f"{statistics.mean(after):.1f}; fallbacks {fallbacks}")


def main() -> None:
    torch.set_num_threads(1)  # both implementations on one core, as in a DataLoader worker
    start = time.perf_counter()
    timing_table()
    statistics_table()
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
