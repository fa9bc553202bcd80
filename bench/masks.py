"""Multi-block masker: the vectorised sampler against a per-sample loop of the same draws.

    .venv/bin/python bench/masks.py [--iters 15]

1. Speed: the time per batch of both implementations on one thread (as in a DataLoader
   worker), their calls interleaved (bench/timing.py: A, B, A, B, ...), for batch 16 / 64 /
   128 on 14x14, 16x16 and 28x28 grids and both styles, then the 28x28 recipe config
   (recipes/ijepa_vith16_448.yaml: reference style, contexts cut per 16 rows). Each row gives
   the medians with their interquartile ranges, the ratio loop / vectorised of the medians
   (marked "?" where the spread makes it meaningless, summed up below the table) and the
   ratio of the fastest turns (the least disturbed on a busy machine).
2. Threads: a batch of 128 on 14x14 drawn with torch's default thread count (the trainer's own
   process, `num_workers: 0`, before the fix), on one thread (a DataLoader worker), and as the
   core draws it (`jepa_core.runtime.data.draw_masks`, which runs the masker on one thread
   wherever it is called), interleaved.
3. The mask statistics of each style on 14x14 at batch 128 (the official sampler's, for
   comparison: target blocks 30-40 patches, mean ~33; context ~84 before truncation, ~54
   after).

`loop_masks` is the baseline, standing in for the official collator: the straightforward way
to write the sampler (one sample, one block at a time, like the official code), drawing from
the same distribution with the same generator. Block sizes come from the masker's own
`draw_sizes`, so both see the same sizes. The masker's draws depend on nothing but the
generator: the figures of one seed are bit-identical before and after an optimisation
(tests/test_masker_pins.py).

On a busy machine read the medians and IQRs, not a single run's best.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import attrs
import torch

from jepa_core.interfaces import MaskBatch
from jepa_core.runtime.data import draw_masks
from jepa_image.configs import MultiBlockConfig
from jepa_image.multiblock import MAX_REDRAWS, MultiBlockMasker, build_masker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import load, quartiles, verdict  # noqa: E402  (bench/ is not a package)

DEFAULT_THREADS = torch.get_num_threads()  # before main() sets one


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


def timed_in_turns(fns: dict, batch_size: int, iters: int, min_s: float = 0.01) -> dict:
    """{name: [seconds per call]}: the variants called in turns (bench/timing.py), each turn
    of a variant as many calls as fill ~min_s (one call of a fast masker is too short to
    time alone), after one warm-up turn each."""
    g = torch.Generator().manual_seed(0)
    calls = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn(batch_size, g)
        calls[name] = max(1, int(min_s / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(iters + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn(batch_size, g)
            if i:
                times[name].append((time.perf_counter() - t0) / calls[name])
    return times


def _cell(ts: list[float]) -> str:
    q1, med, q3 = quartiles(ts)
    return f"{med * 1e3:8.3f} ({q1 * 1e3:.3f}-{q3 * 1e3:.3f})"


def speed_row(label: str, masker: MultiBlockMasker, batch: int, iters: int) -> bool:
    """Print one row; True when its ratio can be trusted."""
    times = timed_in_turns({"fast": masker, "loop": lambda b, g: loop_masks(masker, b, g)},
                           batch, iters)
    ratio, doubt = verdict(times["fast"], times["loop"])
    best = min(times["loop"]) / min(times["fast"])  # the least disturbed turns of each
    print(f"{label} {batch:>5}  {_cell(times['fast']):>24}  {_cell(times['loop']):>24}  "
          f"{ratio:6.1f}x{' ?' if doubt else '  '} {best:7.1f}x")
    return doubt is None


def timing_table(iters: int) -> None:
    print(f"1. speed, one thread, median (IQR) ms per batch, {iters} interleaved turns "
          f"({load()})")
    print(f"{'grid':>5} {'style':>16} {'batch':>5}  {'vectorised':>24}  {'loop':>24}  "
          f"{'loop/vec':>7}   {'of mins':>7}")
    doubtful = 0
    for side in (14, 16, 28):
        for style in ("reference", "corrected"):
            masker = build_masker(MultiBlockConfig(style=style), (side, side))
            for batch in (16, 64, 128):
                doubtful += not speed_row(f"{side:>2}x{side:<2} {style:>16}", masker, batch,
                                          iters)
    recipe = attrs.evolve(MultiBlockConfig(style="reference"), equalize_group=16)
    doubtful += not speed_row(f"{28:>2}x{28:<2} {'reference/16':>16}",
                              build_masker(recipe, (28, 28)), 128, iters)
    if doubtful:
        print(f"? {doubtful} ratio(s) not meaningful at this load (overlapping IQRs or a "
              "min-max spread wider than the gap): rerun on an idle machine or with more "
              "--iters")
    print(f"({load()})")


def threads_table(iters: int) -> None:
    masker = build_masker(MultiBlockConfig(), (14, 14))

    def on_threads(n):
        def draw(b, g):
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                masker(b, g)
            finally:
                torch.set_num_threads(before)
        return draw

    variants = {f"default ({DEFAULT_THREADS} threads)": on_threads(DEFAULT_THREADS),
                "one thread": on_threads(1),
                "draw_masks": lambda b, g: (torch.set_num_threads(DEFAULT_THREADS),
                                            draw_masks(masker, b, 0, 0))}
    times = timed_in_turns(variants, 128, iters)
    torch.set_num_threads(1)
    print(f"\n2. threads: a batch of 128 on 14x14 (corrected), {iters} interleaved turns")
    for name, ts in times.items():
        q1, med, q3 = quartiles(ts)
        print(f"  {name:>20}: median {med * 1e3:.3f} ms  IQR {q1 * 1e3:.3f}-{q3 * 1e3:.3f}  "
              f"min-max {min(ts) * 1e3:.3f}-{max(ts) * 1e3:.3f}")
    one = quartiles(times["one thread"])[1]
    for name in list(times)[::2]:
        print(f"  {name} / one thread: {quartiles(times[name])[1] / one:.2f}")
    print(f"  ({load()})")


def statistics_table(batches: int = 50) -> None:
    print(f"\n3. statistics on 14x14, batch 128, {batches} batches "
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=15, help="timed turns per variant")
    args = parser.parse_args()
    torch.set_num_threads(1)  # both implementations on one core, as in a DataLoader worker
    start = time.perf_counter()
    timing_table(args.iters)
    threads_table(args.iters)
    statistics_table()
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
