"""Median training-step time of a recipe, with and without the speed features, in one run.

    .venv/bin/python bench/train_step.py recipes/bench_vit_tiny.yaml [key=value ...]
        [--iters 10] [--warmup 3] [--compile]

"fast" is the recipe as written (fused SDPA attention, foreach EMA, fused/foreach AdamW; with
--compile also torch.compile); "baseline" is the same step with those features off: explicit
softmax attention ("math"), a per-tensor EMA loop, eager mode. Both use the real trainer's
`train_step` on the same batches, their steps interleaved (bench/timing.py). Prints median,
IQR and min-max ms per step, img/s, the ratio, the machine's load, and a warning when the
spread makes the ratio meaningless.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import load_recipe
from jepa_core.runtime.data import train_loader
from jepa_core.runtime.trainer import setup, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleave, report  # noqa: E402  (bench/ is not a package)

SLOW = ["encoder.attention=math", "predictor.attention=math",
        "target_updater.implementation=loop", "train.compile=false"]


def step_function(recipe, registry, iters: int, warmup: int):
    """A callable running training step i of the recipe (batches drawn beforehand: data
    loading is not what this measures)."""
    from jepa_core.runtime.distributed import DistEnv

    run = setup(recipe, registry, DistEnv())
    loader = train_loader(run.parts.source, run.parts.masker, run.layout, seed=recipe.seed,
                          steps_per_epoch=run.parts.steps_per_epoch, start_step=0,
                          stop_step=iters + warmup, num_workers=0)
    batches = list(loader)
    accum = run.layout.accum_steps

    def step(i: int) -> None:
        train_step(run, batches[i * accum:(i + 1) * accum])
        if run.device.type == "cuda":
            torch.cuda.synchronize()

    return step


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
    steps = {name: step_function(recipe, registry, args.iters, args.warmup)
             for name, recipe in variants.items()}
    times = interleave(steps, args.iters, args.warmup)
    print(report(times, "fast", "baseline", items=batch))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
