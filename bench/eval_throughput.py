"""Feature extraction against the bare forward pass and against decoding alone.

    .venv/bin/python bench/eval_throughput.py [recipes/quickstart.yaml] [key=value ...]
        [--images 2000] [--threads 1] [--repeats 3] [--folder]

Three loops over the same images of the recipe's data source, in one process at a fixed
thread count, each timed `--repeats` times (the best is kept: a disturbance only slows):
- decode: the evaluation's image loader alone (read, decode, transform, collate);
- bare: the encoder's forward over the same images already decoded in memory, the same call
  the extraction makes (`layer_tokens(x, 4)` when the recipe's protocols want the last four
  layers, else `model(x)`), nothing kept;
- ours: `extract_split`, what `jepa eval` runs for one encoder: decoding, the forward, the
  feature kinds the protocols want, written as shards into a cache in a temporary folder.
It prints images/s of each and the ratios ours / bare (the goal: >= 0.9) and ours / decode,
and names the bottleneck. `--folder` times a generated folder of 32x32 PNGs
(`image_folder`) instead of the recipe's source, so file decoding is part of it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def best_of(repeats: int, run: Callable[[], None]) -> float:
    """The shortest of `repeats` timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def setup(recipe_path: str, overrides: list[str], folder: Path | None) -> tuple:
    """(recipe, encoder, source, kinds) for the recipe's evaluation."""
    from jepa_core.evaluation.features import encoder_kinds
    from jepa_core.evaluation.runner import build_protocols
    from jepa_core.plugins import make_plugin_manager
    from jepa_core.recipe import load_recipe
    from jepa_core.runtime.build import build, build_encoder

    registry = make_plugin_manager()
    if folder is not None:
        overrides = [*overrides, f"data={{name: image_folder, root: {folder}, "
                                 f"val_fraction: 0.1}}"]
    recipe = load_recipe(recipe_path, registry, overrides)
    encoder = build_encoder(recipe, registry).eval()
    source = build("data_source", recipe, registry, "data",
                   image_size=tuple(encoder.image_size), train=True)
    wanted = {k for *_, p in build_protocols(recipe, registry) for k in p.feature_kinds}
    return recipe, encoder, source, encoder_kinds(encoder, wanted)


def measure(recipe_path: str, overrides: list[str], images: int, repeats: int,
            folder: Path | None) -> dict:
    """images/s of decode, bare and ours (see the module docstring)."""
    import torch

    from jepa_core.evaluation.features import encoder_extract, extract_split, image_batches

    recipe, encoder, source, kinds = setup(recipe_path, overrides, folder)
    indices = list(range(min(images, len(source))))
    cfg, workers = recipe.eval, recipe.train.num_workers

    def decode() -> list:
        return [x for x, _, _ in image_batches(source, indices, cfg.batch_size, workers)
                if x is not None]

    decoded = decode()

    @torch.no_grad()
    def bare() -> None:
        for x in decoded:
            encoder.layer_tokens(x, 4) if "last4" in kinds else encoder(x)

    def ours() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            extract = encoder_extract(encoder, kinds, torch.device("cpu"))
            extract_split({"trained": (extract, kinds, Path(tmp))}, source, indices,
                          cfg.shard_size, cfg.batch_size, workers)

    n = len(indices)
    seconds = {"decode": best_of(repeats, decode), "bare": best_of(repeats, bare),
               "ours": best_of(repeats, ours)}
    return {"images": n, "kinds": kinds, "batch": cfg.batch_size, "workers": workers,
            **{k: n / s for k, s in seconds.items()}}


def report(r: dict) -> str:
    """The table, the two ratios and the bottleneck, as text."""
    lines = [f"{r['images']} images, batch {r['batch']}, {r['workers']} loader workers, "
             f"kinds {', '.join(r['kinds'])}, {r['threads']} torch thread(s), "
             f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
             f"{'loop':<8} {'images/s':>10}"]
    for key in ("decode", "bare", "ours"):
        lines.append(f"{key:<8} {r[key]:>10.0f}")
    ratio = r["ours"] / r["bare"]
    lines.append(f"ours / bare:   {ratio:.2f} (goal >= 0.9)")
    lines.append(f"ours / decode: {r['ours'] / r['decode']:.2f}")
    # Serial decode + forward: the slower of the two bounds ours
    slow = "decoding" if r["decode"] < r["bare"] else "the forward pass"
    lines.append(f"bottleneck: {slow} (decode alone {r['decode']:.0f} images/s, forward "
                 f"alone {r['bare']:.0f} images/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "quickstart.yaml"))
    p.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--folder", action="store_true",
                   help="a generated folder of 32x32 PNGs instead of the recipe's source")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = None
        if args.folder:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from eval_memory import make_folder

            folder = Path(tmp) / "images"
            make_folder(folder, args.images)
        r = measure(args.recipe, args.overrides, args.images, args.repeats, folder)
    print(report({**r, "threads": args.threads}))


if __name__ == "__main__":
    main()
