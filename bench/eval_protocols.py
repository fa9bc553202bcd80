"""Time each evaluation protocol on a run's cached features, and compare against older code.

    jepa run recipes/quickstart.yaml train.max_steps=20 out_dir=/tmp/evs   # features once
    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_protocols.py /tmp/evs/quickstart \
        [--baseline-src /tmp/old] [--iters 3] [--only linear attentive]

Each round runs, in a fresh process, every protocol of the run's recipe on every feature set
of its cache (trained target encoder, random init, raw pixels), and times each
(protocol, feature set). With --baseline-src (a folder holding an older `jepa_core/` and
`plugins/jepa_eval/`, e.g. `git archive OLD jepa_core plugins | tar -x -C /tmp/old`), the
rounds alternate between that code and this checkout (bench/timing.py's interleaving, so a
load spike hits both), and the script prints per protocol the median seconds of each, the
ratio with its verdict, and whether every result (chosen hyper-parameters, held-out and test
accuracy) is identical between the two.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def feature_sets(run: Path) -> dict[str, dict[str, tuple[Path, Path, int, int]]]:
    """{feature set: {kind: (train folder, test folder, train shards, test shards)}}."""
    out: dict[str, dict[str, tuple[Path, Path, int, int]]] = {}
    for fdir in sorted((run / "features").iterdir()):
        train = next(fdir.glob("train-*"))
        test = next(fdir.glob("test-*"))
        kinds = sorted({p.name.rsplit("-", 1)[0] for p in train.glob("*.pt")})
        out[fdir.name] = {k: (train, test, len(list(train.glob(f"{k}-*.pt"))),
                              len(list(test.glob(f"{k}-*.pt")))) for k in kinds}
    return out


def child(run: Path, only: list[str] | None) -> None:
    """Run the protocols once and print {"times": ..., "results": ...} as JSON."""
    import torch

    from jepa_core.evaluation.cache import CachedFeatures
    from jepa_core.evaluation.runner import build_protocols
    from jepa_core.interfaces import EvalContext
    from jepa_core.plugins import make_plugin_manager
    from jepa_core.recipe import load_recipe

    registry = make_plugin_manager()
    recipe = load_recipe(run / "recipe.yaml", registry)
    protocols = [(n, p) for n, p in build_protocols(recipe, registry)
                 if only is None or n in only]
    times, results = {}, []
    for fname, kinds in feature_sets(run).items():
        features = {k: (CachedFeatures(a, k, m), CachedFeatures(b, k, n))
                    for k, (a, b, m, n) in kinds.items()}
        classes = int(features["pooled"][0].labels.max()) + 1
        context = EvalContext(num_classes=classes, seed=recipe.seed,
                              device=torch.device("cpu"))
        for pname, protocol in protocols:
            t0 = time.perf_counter()
            out = protocol.run({k: v for k, v in features.items()
                                if k in protocol.feature_kinds}, context)
            times[f"{pname} / {fname}"] = time.perf_counter() - t0
            results += [{"features": fname, **r} for r in out]
    print(json.dumps({"times": times, "results": results}))


def once(run: Path, src: Path | None, only: list[str] | None) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), str(src / "plugins")])
    args = [sys.executable, __file__, str(run), "--child"] + (["--only", *only] if only else [])
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if done.returncode:
        sys.exit(f"the child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(new: list[dict], old: list[dict]) -> list[str]:
    """Lines naming each result that differs between the two codes (none: identical)."""
    key = lambda r: (r["features"], r["protocol"], r.get("feature_kind"), json.dumps(  # noqa: E731
        {k: v for k, v in r.get("params", {}).items() if k in ("per_class", "fraction")}))
    olds = {key(r): r for r in old}
    lines = []
    for r in new:
        o = olds.get(key(r))
        if o != r:
            lines.append(f"DIFFERENT {key(r)[:3]}: new {r.get('params')} {r.get('accuracy')}"
                         f" | old {o and o.get('params')} {o and o.get('accuracy')}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run directory with features/ and recipe.yaml")
    parser.add_argument("--baseline-src", type=Path, help="a folder with older code")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--only", nargs="+", help="protocol names (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.run, args.only)
        return
    from timing import load, quartiles, verdict

    variants = {"new": None} | ({"old": args.baseline_src} if args.baseline_src else {})
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.iters):  # in turns: new, old, new, old, ...
        for name, src in variants.items():
            runs[name].append(once(args.run, src, args.only))
    print(f"{args.iters} rounds per variant, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, {load()}")
    keys = list(runs["new"][0]["times"])
    totals = {v: [sum(r["times"].values()) for r in rs] for v, rs in runs.items()}
    for k in [*keys, "all"]:
        series = {v: ([r["times"][k] for r in rs] if k != "all" else totals[v])
                  for v, rs in runs.items()}
        line = "  ".join(f"{v} {quartiles(ts)[1]:7.2f} s" for v, ts in series.items())
        if "old" in series:
            ratio, doubt = verdict(series["new"], series["old"])
            line += f"  old/new {ratio:5.2f}x" + (" (not told apart)" if doubt else "")
        print(f"{k:>40}: {line}")
    if "old" in runs:
        diffs = compare(runs["new"][0]["results"], runs["old"][0]["results"])
        print("\n".join(diffs) if diffs else
              f"results identical: all {len(runs['new'][0]['results'])} (chosen "
              "hyper-parameters, held-out and test accuracy)")


if __name__ == "__main__":
    main()
