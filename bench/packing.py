"""Context tokens processed and training-step time for truncate / pad / pack, in one run.

    .venv/bin/python bench/packing.py [--iters 10] [--warmup 2] [--only quickstart|vith14]

Two mask settings, each trained with the three context layouts of the multiblock masker
(`context_equalize`: subset = truncate, pad, pack) on the same images and the same block
draws, their steps interleaved (bench/timing.py):

- quickstart: recipes/quickstart.yaml as it is (8x8 grid, batch 64, its 48-wide encoder);
- vith14: the masker of recipes/ijepa_vith14.yaml (the official sampler's distribution, the
  paper's scales, cut per 128 rows) on a 16x16 grid at batch 128, with a small encoder
  (64 wide, depth 2) and predictor (32 wide, depth 2) so that it runs on a laptop CPU.

A step is the real trainer's `train_step` (forward, backward, AdamW, EMA). Printed per layout:
context tokens the context encoder computes per step and the valid ones among them, predictor
tokens per step, and the step time (median, IQR, min-max); then pack against pad.
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

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"truncate": "subset", "pad": "pad", "pack": "pack"}
SETTINGS = {
    "quickstart": ("recipes/quickstart.yaml", []),
    "vith14": ("recipes/ijepa_vith14.yaml", [
        "data.name=synthetic", "data.num_images=256", "encoder.img_size=64",
        "encoder.patch_size=4", "encoder.embed_dim=64", "encoder.depth=2",
        "encoder.num_heads=4", "predictor.embed_dim=32", "predictor.depth=2",
        "train.global_batch_size=128", "train.num_workers=0", "train.precision=fp32",
        "eval.after_train=false",
    ]),
}


def tokens(batches) -> dict[str, float]:
    """Mean per step: context tokens computed (padding included unless packed), valid context
    tokens, and predictor tokens computed (M sequences of context + target queries per image)."""
    out = {"context": 0.0, "valid": 0.0, "predictor": 0.0}
    for batch in batches:
        m = batch.mask
        rows, width = m.context.shape
        valid = m.context_valid.sum(1) if m.context_valid is not None else torch.full(
            (rows,), width)
        per_row = valid if m.packed else torch.full((rows,), width)
        out["context"] += float(per_row.sum())
        out["valid"] += float(valid.sum())
        out["predictor"] += float(((per_row + m.targets.shape[2]) * m.targets.shape[1]).sum())
    return {k: v / len(batches) for k, v in out.items()}


def prepared(recipe, registry, steps: int):
    """(a callable running training step i, token counts per step) on pre-drawn batches."""
    from jepa_core.runtime.distributed import DistEnv

    run = setup(recipe, registry, DistEnv())
    loader = train_loader(run.parts.source, run.parts.masker, run.layout, seed=recipe.seed,
                          steps_per_epoch=run.parts.steps_per_epoch, start_step=0,
                          stop_step=steps, num_workers=0)
    batches = list(loader)
    accum = run.layout.accum_steps

    def step(i: int) -> None:
        train_step(run, batches[i * accum:(i + 1) * accum])

    return step, tokens(batches)


def bench(name: str, iters: int, warmup: int, out_dir: str) -> None:
    path, overrides = SETTINGS[name]
    registry = make_plugin_manager()
    steps, counts = {}, {}
    for layout, equalize in LAYOUTS.items():
        recipe = load_recipe(ROOT / path, registry, [
            *overrides, f"masker.context_equalize={equalize}", "train.device=cpu",
            f"out_dir={out_dir}", f"name=bench_packing_{name}_{layout}"])
        steps[layout], counts[layout] = prepared(recipe, registry, iters + warmup)
    batch = recipe.train.global_batch_size
    masker = recipe.masker.config
    print(f"\n== {name}: {path} masks (style {masker.style}, target_scale "
          f"{list(masker.target_scale)}, context_scale {list(masker.context_scale)}), batch "
          f"{batch}, encoder {recipe.encoder.config.embed_dim} wide x "
          f"{recipe.encoder.config.depth}, threads {torch.get_num_threads()}")
    pad = counts["pad"]["context"]
    for layout, c in counts.items():
        print(f"{layout:>9}: context tokens/step {c['context']:8.0f} ({c['context'] / pad:4.0%} "
              f"of pad)  valid {c['valid']:8.0f} ({c['valid'] / batch:5.1f}/image)  "
              f"predictor tokens/step {c['predictor']:9.0f}")
    times = interleave(steps, iters, warmup)
    print(report(times, "pack", "pad", items=batch))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", choices=sorted(SETTINGS))
    p.add_argument("--out-dir", default="runs/bench_packing")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in [args.only] if args.only else list(SETTINGS):
        bench(name, args.iters, args.warmup, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
