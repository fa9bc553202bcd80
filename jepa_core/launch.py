"""`jepa run`: pick the launch mode, resume if asked, train, then evaluate.

- already a distributed worker (torchrun / SLURM srun variables): join the group and train;
- `--nproc N|gpu`: start N local processes through torch's elastic launcher, each running
  `python -m jepa_core.worker` with the same arguments;
- otherwise one plain process (CPU or one GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from jepa_core import checkpoint as ckpt
from jepa_core import rundir
from jepa_core.distributed import DistEnv, destroy, detect, init_process_group
from jepa_core.errors import ConfigError, RunError
from jepa_core.recipe import Recipe, recipe_to_dict

# Recipe keys that may change between a checkpoint and its resumption.
SAFE_TO_CHANGE = ("train.max_steps", "train.num_workers", "train.log_every",
                  "train.checkpoint_every", "train.keep_last", "train.epochs", "eval.",
                  "train.compile", "dist.per_device_batch_cap", "out_dir")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def recipe_differences(saved: dict, current: dict) -> list[str]:
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k, '(unset)')!r} → {b.get(k, '(unset)')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def find_resume(recipe: Recipe, resume: str | None, force: bool) -> dict | None:
    """The checkpoint state to resume from, or None; falls back past unreadable files."""
    if resume is None:
        return None
    if resume == "auto":
        candidates = list(reversed(ckpt.list_checkpoints(recipe.run_dir / "checkpoints")))
        if not candidates:
            return None  # a fresh start: nothing to resume yet (first run of a requeued job)
    else:
        candidates = [Path(resume)]
    errors = []
    for path in candidates:
        try:
            state = ckpt.load(path)
        except RunError as exc:
            errors.append(str(exc))
            print(f"warning: {exc} Trying the previous checkpoint.", file=sys.stderr)
            continue
        _check_recipe(state, recipe, path, force)
        return state
    raise RunError("no readable checkpoint to resume from: " + " ".join(errors))


def _check_recipe(state: dict, recipe: Recipe, path: Path, force: bool) -> None:
    diffs = recipe_differences(state.get("recipe", {}), recipe_to_dict(recipe))
    unsafe = [d for d in diffs if not d.startswith(SAFE_TO_CHANGE)]
    if unsafe and not force:
        raise ConfigError(
            f"the recipe differs from the one checkpoint {path} was trained with: "
            + "; ".join(unsafe) + ". Resume with the original recipe, or pass --force to "
            "resume anyway (the run is then no longer one consistent run).")


def run_worker(recipe: Recipe, registry: Any, resume: str | None, force: bool,
               dist: DistEnv) -> int:
    from jepa_core.trainer import train

    backend = recipe.dist.backend
    if backend == "auto":
        import torch

        backend = "nccl" if torch.cuda.is_available() and recipe.train.device != "cpu" else "gloo"
    added = init_process_group(dist, backend)
    try:
        # checked and locked before any model is built; held through the evaluation
        with rundir.claim(recipe, resume, dist) as claimed:
            state = find_resume(recipe, resume, force)
            claimed.start_at(state)
            run = train(recipe, registry, dist, resume=state)
            destroy(added)  # the evaluation runs on rank 0 alone
            if dist.is_main and recipe.eval.after_train:
                from jepa_core.evaluate import evaluate_run

                evaluate_run(run)
    finally:
        destroy(added)
    return 0


def _spawn(recipe: Recipe, registry: Any, args: argparse.Namespace) -> int:
    """Re-run this command in N local processes through torch's elastic launcher."""
    from torch.distributed.run import main as torchrun_main

    if args.nproc == "gpu":
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise RunError("--nproc gpu asks for one process per GPU, but no GPU is visible.")
    else:
        try:
            n = int(args.nproc)
        except ValueError:
            raise ConfigError(f"--nproc must be a number or 'gpu' (got {args.nproc!r}).") from None
    from jepa_core.build import build_data

    build_data(recipe, registry)  # missing data: one clear error here, not one per process
    argv = [f"--nproc-per-node={n}", "--standalone", "-m", "jepa_core.worker"]
    for module in args.plugin:
        argv += ["-p", module]
    argv += [args.recipe, *args.overrides]
    if args.resume:
        argv += ["--resume", args.resume]
    if args.force:
        argv += ["--force"]
    try:
        torchrun_main(argv)
    except Exception as exc:  # the launcher raises ChildFailedError with each rank's error
        raise RunError(f"a worker process failed: {exc}") from exc
    return 0


def launch(recipe: Recipe, registry: Any, args: argparse.Namespace) -> int:
    dist = detect()
    if dist.distributed:
        return run_worker(recipe, registry, args.resume, args.force, dist)
    if getattr(args, "nproc", None):
        with rundir.claim(recipe, args.resume, dist):  # refuse here, not in every worker
            pass
        return _spawn(recipe, registry, args)
    return run_worker(recipe, registry, args.resume, args.force, dist)
