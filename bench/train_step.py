"""Median training-step time of a recipe, with and without the speed features, in one run.

    .venv/bin/python bench/train_step.py recipes/bench_vit_tiny.yaml [key=value ...]
        [--iters 10] [--warmup 3] [--compile]

"fast" is the recipe as written (fused SDPA attention, foreach EMA, fused/foreach AdamW; with
--compile also torch.compile); "baseline" is the same step with those features off: explicit
softmax attention ("math"), a per-tensor EMA loop, eager mode. Both use the real trainer's
`train_step` on the same batches. Prints median ms per step, img/s and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from jepa_core.runtime.data import train_loader
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import load_recipe
from jepa_core.runtime.trainer import setup, train_step

SLOW = ["encoder.attention=math", "predictor.attention=math",
        "target_updater.implementation=loop", "train.compile=false"]


def time_steps(recipe, registry, iters: int, warmup: int) -> list[float]:
    from jepa_core.runtime.distributed import DistEnv

    run = setup(recipe, registry, DistEnv())
    loader = train_loader(run.parts.source, run.parts.masker, run.layout, seed=recipe.seed,
                          steps_per_epoch=run.parts.steps_per_epoch, start_step=0,
                          stop_step=iters + warmup, num_workers=0)
    batches = list(loader)  # data loading is not what this measures
    times = []
    for i in range(0, len(batches), run.layout.accum_steps):
        micro = batches[i:i + run.layout.accum_steps]
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(run, micro)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the fast variant")
    args = p.parse_args(argv)
    registry = make_plugin_manager()
    fast_overrides = [*args.overrides, *(["train.compile=true"] if args.compile else [])]
    variants = {
        "fast": load_recipe(args.recipe, registry, fast_overrides),
        "baseline": load_recipe(args.recipe, registry, [*args.overrides, *SLOW]),
    }
    batch = variants["fast"].train.global_batch_size
    print(f"recipe {args.recipe}  batch {batch}  threads {torch.get_num_threads()}  "
          f"torch {torch.__version__}")
    results = {}
    for name, recipe in variants.items():
        times = time_steps(recipe, registry, args.iters, args.warmup)
        med = statistics.median(times)
        results[name] = med
        print(f"{name:>9}: median {1000 * med:8.1f} ms/step  {batch / med:8.1f} img/s  "
              f"(min {1000 * min(times):.1f}, max {1000 * max(times):.1f}, n={len(times)})")
    print(f"speed-up fast vs baseline: {results['baseline'] / results['fast']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
