"""Every first-party method on the quickstart data, over several seeds: linear probe and kNN
of the evaluated encoder, mean ± std, next to random init and raw pixels.

    .venv/bin/python bench/methods.py [--seeds 0 1 2] [--recipes recipes/quickstart*.yaml]
        [--out-dir DIR] [key=value ...]

Each (recipe, seed) is a real `jepa run RECIPE seed=S` subprocess that trains and then probes
(its `eval.json`); the overrides apply to every recipe. The table says, per method, how far
the trained encoder is from random init and from raw pixels, and the mean ± sample std of
each figure over the seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_margin import METRICS, PIXELS, RANDOM, run_seed, trained_key  # noqa: E402

RECIPES = ["recipes/quickstart.yaml", "recipes/quickstart_cjepa.yaml",
           "recipes/quickstart_ijepa_sigreg.yaml", "recipes/quickstart_lejepa.yaml"]


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):5.1f} ± {spread:3.1f}"


def rows(recipe: str, results: list[dict], seconds: float) -> list[str]:
    """Table rows of one recipe: the trained encoder, random init, raw pixels, margins."""
    name = Path(recipe).stem
    out = []
    for label, key in (("trained", None), ("random init", RANDOM), ("raw pixels", PIXELS)):
        cells = [mean_std([100 * r[key or trained_key(r)][m] for r in results]) for m in METRICS]
        out.append(f"{name:<26} {label:<12} {cells[0]:>13} {cells[1]:>13}")
    gaps = [mean_std([100 * (r[trained_key(r)][m] - r[RANDOM][m]) for r in results])
            for m in METRICS]
    out.append(f"{name:<26} {'− random':<12} {gaps[0]:>13} {gaps[1]:>13}   "
               f"({seconds / len(results):.0f} s per run)")
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="dotted overrides for every recipe")
    p.add_argument("--recipes", nargs="+", default=RECIPES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the runs go (default: a temporary folder, removed at the end)")
    args = p.parse_args(argv)
    table = [f"{'recipe':<26} {'features':<12} {'linear %':>13} {'kNN %':>13}"]
    with tempfile.TemporaryDirectory(prefix="methods-") as tmp:
        out_dir = args.out_dir or Path(tmp)
        for recipe in args.recipes:
            t0, results = time.perf_counter(), []
            for seed in args.seeds:
                results.append(run_seed(recipe, args.overrides, seed, out_dir,
                                        prefix=Path(recipe).stem))
                print(f"{recipe} seed {seed} done", file=sys.stderr, flush=True)
            table += rows(recipe, results, time.perf_counter() - t0)
    print(f"mean ± std over seeds {' '.join(map(str, args.seeds))}")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
