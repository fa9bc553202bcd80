"""How far a recipe's trained target encoder beats random init, over several seeds.

    .venv/bin/python bench/probe_margin.py recipes/quickstart.yaml [key=value ...]
        [--seeds 0 1 2] [--out-dir DIR] [--nproc N]

One probe on one seed is a noisy figure: the quickstart's test split holds 359 digits, so one
image is 0.28 points, and the random-init baseline moves with the seed as much as the trained
encoder does. This trains the recipe once per seed (`jepa run RECIPE seed=S`, a real
subprocess each), reads the probes the run writes (`eval.json`), and prints per seed and as
mean ± sample std: linear-probe and kNN accuracy of the trained target encoder, of the same
architecture at random init, and the margins between them; then every probe the runs wrote
(each protocol and feature kind, for every row: trained, random init, raw pixels, ...) as
mean ± std over the seeds. --nproc N trains each seed with `jepa run --nproc N`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RANDOM, PIXELS = "random init", "raw pixels"
METRICS = ("linear_probe", "knn")


def trained_key(result: dict) -> str:
    """The evaluated module's row ("trained target encoder", "trained encoder", ...)."""
    return next(k for k in result if k.startswith("trained"))


def run_seed(recipe: str, overrides: list[str], seed: int, out_dir: Path,
             prefix: str = "margin", launch: tuple[str, ...] = ()) -> dict:
    """Train and probe one seed; {features: {metric: accuracy}} from the run's eval.json.
    launch: extra `jepa run` options (e.g. ("--nproc", "2"))."""
    name = f"{prefix}-seed{seed}"
    cmd = [sys.executable, "-m", "jepa_core", "run", recipe, *launch, *overrides,
           f"seed={seed}", f"name={name}", f"out_dir={out_dir}", "eval.after_train=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed}: `{' '.join(cmd)}` failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:] or proc.stdout[-3000:]}")
    from jepa_core.evaluation.runner import headline

    return headline(json.loads((out_dir / name / "eval.json").read_text()))


def margins(results: list[dict]) -> dict[str, list[float]]:
    """Per metric, trained minus random-init accuracy of each seed (in points)."""
    return {m: [100 * (r[trained_key(r)][m] - r[RANDOM][m]) for r in results] for m in METRICS}


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):+.1f} ± {spread:.1f}"


def report(seeds: list[int], results: list[dict]) -> str:
    lines = [f"{'seed':>6} | {'linear trained':>14} {'random':>7} {'margin':>7} | "
             f"{'kNN trained':>11} {'random':>7} {'margin':>7}"]
    for seed, r in zip(seeds, results, strict=True):
        cells = []
        for m in METRICS:
            t, b = 100 * r[trained_key(r)][m], 100 * r[RANDOM][m]
            cells.append(f"{t:>{14 if m == 'linear_probe' else 11}.1f} {b:>7.1f} {t - b:>+7.1f}")
        lines.append(f"{seed:>6} | {cells[0]} | {cells[1]}")
    gaps = margins(results)
    lines.append(f"margin over {len(seeds)} seed(s), mean ± std (points): "
                 f"linear {summary(gaps['linear_probe'])}, kNN {summary(gaps['knn'])}")
    return "\n".join(lines)


def every_probe(evals: list[dict]) -> str:
    """One line per (protocol, feature kind, features row) of the runs' eval.json results:
    test accuracy (points) or the protocol's value, mean ± std over the runs."""
    values: dict[tuple[str, str, str], list[float]] = {}
    for ev in evals:
        for r in ev.get("results", []):
            key = (r["protocol"], r.get("feature_kind", ""), r["features"])
            value = 100 * r["accuracy"]["test"] if "accuracy" in r else r.get("value")
            if isinstance(value, (int, float)):
                values.setdefault(key, []).append(float(value))
    width = max((len(f) for _, _, f in values), default=8)
    lines = [f"every probe over {len(evals)} run(s), mean ± std (accuracy in points):"]
    for (protocol, kind, features), vals in values.items():
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"  {protocol:<10} {kind:<7} {features:<{width}} "
                     f"{statistics.fmean(vals):6.1f} ± {spread:4.1f}  (n={len(vals)})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. train.epochs=10")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where the runs go (default: a temporary folder, removed at the end)")
    p.add_argument("--nproc", type=int, default=None,
                   help="train each seed with `jepa run --nproc N` (CPU: N gloo processes)")
    args = p.parse_args(argv)
    launch = ("--nproc", str(args.nproc)) if args.nproc else ()
    with tempfile.TemporaryDirectory(prefix="probe-margin-") as tmp:
        out_dir = args.out_dir or Path(tmp)
        results = []
        for seed in args.seeds:
            results.append(run_seed(args.recipe, args.overrides, seed, out_dir,
                                    launch=launch))
            print(f"seed {seed} done", file=sys.stderr, flush=True)
        print(report(args.seeds, results))
        print(every_probe([json.loads((out_dir / f"margin-seed{s}" / "eval.json").read_text())
                           for s in args.seeds]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
