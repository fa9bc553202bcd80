"""V-JEPA multiblock3d masker: the vectorised sampler against a per-sample loop of the same
distribution.

    .venv/bin/python bench/masks3d.py [--iters 15] [--batch 24]

Batch 24 (the ViT-L recipe's per-GPU batch) on the 8x14x14 grid with the ViT-L mask sets
(8 blocks at spatial scale 0.15, 2 at 0.7, temporal 1.0, aspect 0.75-1.5), reference style
(rows cut to the batch minimum in raster order), on one thread as in a DataLoader worker. The
variants run in turns (bench/timing.py) and each reports ms per batch (both sets).

`loop_masks` is the baseline: the straightforward per-sample, per-block loop (as the official
collator is written): one block size per set from the same three draws, then for each clip
each block's corner with scalar draws, a [t, h, w] mask filled slice by slice, a redraw while
the blocks cover the whole clip, `nonzero` to list the patches, and the cut to the batch
minimum. It draws from the same distribution, not the same random stream, so the check below
compares the mean token counts of both, not the masks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from jepa_video.configs import MultiBlock3DConfig
from jepa_video.masker import MAX_REDRAWS, block_size, build_masker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleave, report  # noqa: E402  (bench/ is not a package)

GRID = (8, 14, 14)


def loop_masks(config: MultiBlock3DConfig, grid: tuple[int, int, int], batch_size: int,
               generator: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{set name: (context [B, Nc], targets [B, 1, Nt])}, one clip and one block at a time."""
    out = {}
    gt, gh, gw = grid
    for spec in config.sets:
        t, h, w = block_size(spec, grid, torch.rand(3, generator=generator))
        contexts, targets = [], []
        for _ in range(batch_size):
            for _ in range(MAX_REDRAWS + 1):
                mask = torch.zeros(gt, gh, gw, dtype=torch.bool)
                for _ in range(spec.num_blocks):
                    t0 = int(torch.randint(0, gt - t + 1, (1,), generator=generator))
                    h0 = int(torch.randint(0, gh - h + 1, (1,), generator=generator))
                    w0 = int(torch.randint(0, gw - w + 1, (1,), generator=generator))
                    mask[t0:t0 + t, h0:h0 + h, w0:w0 + w] = True
                if not bool(mask.all()):
                    break
            flat = mask.flatten()
            targets.append(flat.nonzero().squeeze(1))
            contexts.append((~flat).nonzero().squeeze(1))
        nc, nt = min(len(c) for c in contexts), min(len(x) for x in targets)
        out[spec.name] = (torch.stack([c[:nc] for c in contexts]),
                          torch.stack([x[:nt] for x in targets])[:, None])
    return out


def mean_counts(draw, seeds: int) -> dict[str, tuple[float, float]]:
    """{set: (mean context, mean target tokens per clip)} over `seeds` batches."""
    sums: dict[str, list[float]] = {}
    for seed in range(seeds):
        for name, (context, targets) in draw(torch.Generator().manual_seed(seed)).items():
            s = sums.setdefault(name, [0.0, 0.0])
            s[0] += context.shape[1]
            s[1] += targets.shape[2]
    return {k: (c / seeds, t / seeds) for k, (c, t) in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=15, help="timed turns per variant")
    parser.add_argument("--batch", type=int, default=24, help="clips per batch")
    parser.add_argument("--check-seeds", type=int, default=40,
                        help="batches drawn for the token-count comparison")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = MultiBlock3DConfig()
    masker = build_masker(config, GRID)
    g = {"vectorised": torch.Generator().manual_seed(0), "loop": torch.Generator().manual_seed(0)}
    steps = {"vectorised": lambda i: masker(args.batch, g["vectorised"]),
             "loop": lambda i: loop_masks(config, GRID, args.batch, g["loop"])}
    times = interleave(steps, args.iters, warmup=2)
    print(f"multiblock3d, batch {args.batch} on {'x'.join(map(str, GRID))}, ViT-L sets "
          f"(short 8 x 0.15, long 2 x 0.7), reference style, one thread, {args.iters} turns")
    print(report(times, fast="vectorised", baseline="loop", items=args.batch))
    vec = mean_counts(lambda gen: {k: (m.context, m.targets)
                                   for k, m in masker(args.batch, gen).items()}, args.check_seeds)
    loop = mean_counts(lambda gen: loop_masks(config, GRID, args.batch, gen), args.check_seeds)
    print(f"\nmean tokens per clip over {args.check_seeds} batches (REFERENCE.md: context "
          f"~366 / ~107, target ~745 / ~1102)")
    for name in vec:
        print(f"  {name:>6}: vectorised context {vec[name][0]:.1f} target {vec[name][1]:.1f}"
              f" | loop context {loop[name][0]:.1f} target {loop[name][1]:.1f}")
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"\nms per batch: vectorised {med['vectorised']:.2f}, loop {med['loop']:.2f}, "
          f"ratio loop / vectorised {med['loop'] / med['vectorised']:.1f}x")


if __name__ == "__main__":
    main()
