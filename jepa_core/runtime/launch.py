"""`jepa run`: pick the launch mode, resume if asked, train, then evaluate.

- already a distributed worker (torchrun / SLURM srun variables): join the group and train;
- `--nproc N|gpu`: start N local processes through torch's elastic launcher, each running
  `python -m jepa_core.runtime.worker` with the same arguments;
- otherwise one plain process (CPU or one GPU).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from jepa_core.errors import ConfigError, Preempted, RunError
from jepa_core.recipe import Recipe, recipe_to_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime import rundir, threads
from jepa_core.runtime.distributed import DistEnv, destroy, detect, init_process_group
from jepa_core.structure import Component, unstructure

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry

# Recipe keys that may change between a checkpoint and its resumption.
SAFE_TO_CHANGE = ("train.max_steps", "train.num_workers", "train.log_every",
                  "train.checkpoint_every", "train.keep_last", "train.epochs", "eval.",
                  "train.compile", "train.threads", "dist.per_device_batch_cap",
                  "out_dir")


# Signals the launcher passes on to its workers (each runs in its own session, so a terminal's
# Ctrl-C or `kill -TERM -<pgid>` reaches only the launcher) before waiting for them to stop.
FORWARDED = "SIGTERM,SIGINT,SIGUSR1,SIGHUP,SIGQUIT"
SHUTDOWN_TIMEOUT_S = 600  # a signalled worker finishes its step and writes a checkpoint first
LAUNCHER_ENV = "JEPA_LAUNCHER_PID"
# The torch threads of the shell that ran `jepa run --nproc N`: its workers train on a share of
# the cores each, and rank 0 evaluates alone on all of them after the others have left, so that
# the run's eval.json equals what `jepa eval RUN` computes from that shell.
EVAL_THREADS_ENV = "JEPA_EVAL_THREADS"
STOP_SIGNALS = {int(signal.SIGTERM): "SIGTERM", int(signal.SIGUSR1): "SIGUSR1",
                int(signal.SIGINT): "SIGINT"}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


_NO_DEFAULT = object()


def field_default(recipe: Recipe, key: str) -> Any:
    """The default (as plain data) of the config field at dotted `key` of `recipe`, e.g.
    "predictor.num_mask_tokens"; a sentinel when the key is no field with a default."""
    *path, last = key.split(".")
    obj: Any = recipe
    for part in path:
        obj = getattr(obj, part, None)
        if isinstance(obj, Component):
            obj = obj.config
    if obj is None or not attrs.has(type(obj)):
        return _NO_DEFAULT
    field = attrs.fields_dict(type(obj)).get(last)
    if field is None or field.default is attrs.NOTHING:
        return _NO_DEFAULT
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        if default.takes_self:
            return _NO_DEFAULT
        default = default.factory()
    return unstructure(default)


def recipe_differences(saved: dict, current: dict, recipe: Recipe | None = None) -> list[str]:
    """'key: old -> new' for each dotted key where two recipe dicts differ, sorted. With the
    current `recipe`, a key the saved dict lacks whose value is its field's default (a config
    field added since, whose default keeps the old behaviour) is no difference."""
    a, b = _flatten(saved), _flatten(current)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if recipe is not None:
        keys = [k for k in keys if k in a or b[k] != field_default(recipe, k)]
    return [f"{k}: {a.get(k, '(unset)')!r} → {b.get(k, '(unset)')!r}" for k in keys]


def find_resume(recipe: Recipe, resume: str | None, force: bool, *,
                main: bool = True) -> dict | None:
    """The checkpoint state to resume from, or None; `auto` falls back past unusable files,
    which the main process (`main`) moves aside to `*.corrupt` and reports."""
    if resume is None:
        return None
    if resume != "auto":
        state = ckpt.load(Path(resume))
        _check_recipe(state, recipe, Path(resume), force)
        return state
    directory = recipe.run_dir / "checkpoints"
    quiet = None if main else (lambda _message: None)
    found = ckpt.newest_readable(directory, move_bad=main, warn=quiet)
    if found is None:  # a fresh start: nothing to resume yet (first run of a requeued job)
        if main:
            print(f"note: --resume auto found no checkpoint in {directory}; starting from "
                  f"step 0.", file=sys.stderr)
        return None
    path, state = found
    _check_recipe(state, recipe, path, force)
    return state


def _check_recipe(state: dict, recipe: Recipe, path: Path, force: bool) -> None:
    diffs = recipe_differences(state.get("recipe", {}), recipe_to_dict(recipe), recipe)
    unsafe = [d for d in diffs if not d.startswith(SAFE_TO_CHANGE)]
    if unsafe and not force:
        raise ConfigError(
            f"the recipe differs from the one checkpoint {path} was trained with: "
            + "; ".join(unsafe) + ". Resume with the original recipe, or pass --force to "
            "resume anyway (the run is then no longer one consistent run).")


def run_worker(recipe: Recipe, registry: Registry, resume: str | None, force: bool,
               dist: DistEnv) -> int:
    """Train in this process as one rank of `dist` (process group set up and torn down
    around it); returns the exit code."""
    from jepa_core.runtime.trainer import train

    backend = recipe.dist.backend
    if backend == "auto":
        import torch

        backend = "nccl" if torch.cuda.is_available() and recipe.train.device != "cpu" else "gloo"
    die_with_launcher()
    added = init_process_group(dist, backend)
    try:
        # checked and locked before any model is built; held through the evaluation
        with rundir.claim(recipe, resume, dist) as claimed:
            state = find_resume(recipe, resume, force, main=dist.is_main)
            claimed.start_at(state)
            started = time.perf_counter()
            run = train(recipe, registry, dist, resume=state)
            trained_s = time.perf_counter() - started
            destroy(added)  # the evaluation runs on rank 0 alone
            if dist.is_main:
                evaluate_and_report(run, recipe, trained_s)
    finally:
        destroy(added)
    return 0


def evaluate_and_report(run: Any, recipe: Recipe, trained_s: float | None = None) -> None:
    """The evaluation after training (eval.after_train), then the closing lines, which say
    what this invocation wrote and where its time went (`trained_s`: seconds of training);
    a failed protocol is raised after them."""
    from jepa_core.commands.evaluate import evaluate_run, failure_error

    evaluated = None
    started = time.perf_counter()
    try:
        if recipe.eval.after_train:
            use_launcher_threads()
            evaluated = evaluate_run(run)
    finally:  # training succeeded: its outputs are listed even when the evaluation failed
        print_outputs(recipe.run_dir, evaluated)
        if trained_s is not None:
            print(time_line(trained_s, time.perf_counter() - started if evaluated else None))
    failure = failure_error(evaluated or {}, str(recipe.run_dir / "eval.json"))
    if failure is not None:
        raise failure


def time_line(trained_s: float, evaluated_s: float | None) -> str:
    """'time: training 52 s, evaluation 31 s (37% of 83 s)' (training alone without an
    evaluation)."""
    if evaluated_s is None:
        return f"time: training {trained_s:.0f} s"
    total = trained_s + evaluated_s
    return (f"time: training {trained_s:.0f} s, evaluation {evaluated_s:.0f} s "
            f"({100 * evaluated_s / max(total, 1e-9):.0f}% of {total:.0f} s)")


def print_outputs(run_dir: Path, evaluated: dict | None = None) -> None:
    """The closing lines of `jepa run`: where the outputs went and what each holds
    (`evaluated`: the eval.json this invocation wrote, if any)."""
    from rich.console import Console

    from jepa_core.runtime.runlog import describe_outputs

    console = Console(highlight=False)
    for line in describe_outputs(run_dir, evaluated):
        console.print(line, soft_wrap=True, markup=False)


def _spawn(recipe: Recipe, registry: Registry, args: argparse.Namespace) -> int:
    """Re-run this command in N local processes through torch's elastic launcher."""
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
    from jepa_core.runtime.build import build_data

    build_data(recipe, registry)  # missing data: one clear error here, not one per process
    argv = [f"--nproc-per-node={n}", "--standalone", f"--signals-to-handle={FORWARDED}",
            f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}", "-m", "jepa_core.runtime.worker"]
    for module in args.plugin:
        argv += ["-p", module]
    argv += [args.recipe, *args.overrides]
    if args.resume:
        argv += ["--resume", args.resume]
    if args.force:
        argv += ["--force"]
    return _run_launcher(argv, n)


def _run_launcher(argv: list[str], n: int) -> int:
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    os.environ[LAUNCHER_ENV] = str(os.getpid())  # workers stop when this process dies
    os.environ[EVAL_THREADS_ENV] = str(torch.get_num_threads())
    # ours unless the user set it (then torchrun sets none and prints no banner about it)
    threads.set_default("OMP_NUM_THREADS", str(worker_threads(n, os.cpu_count())))
    try:
        torchrun_main(argv)
    except SignalException as exc:  # the workers got the signal too and have exited by now
        raise Preempted(f"the launcher got {exc.sigval.name}; it passed it on to its {n} "
                        f"worker processes and waited for them to stop (a worker finishes its "
                        f"step and writes a checkpoint first). Resume with `jepa run RECIPE "
                        f"--nproc {n} --resume auto`.", int(exc.sigval)) from None
    except ChildFailedError as exc:
        codes = {f.exitcode for f in exc.failures.values()}
        if len(codes) == 1 and (code := codes.pop()) - 128 in STOP_SIGNALS:
            raise Preempted(f"the {n} worker processes were stopped by "
                            f"{STOP_SIGNALS[code - 128]} and checkpointed. Resume with `jepa "
                            f"run RECIPE --nproc {n} --resume auto`.", code - 128) from None
        raise RunError(f"a worker process failed: {exc}") from exc
    except Exception as exc:
        raise RunError(f"a worker process failed: {exc}") from exc
    finally:
        os.environ.pop(LAUNCHER_ENV, None)
        threads.unset_default("OMP_NUM_THREADS")
    return 0


def use_launcher_threads() -> None:
    """In rank 0 of `jepa run --nproc`, before the evaluation: take the launcher's torch
    thread count back (EVAL_THREADS_ENV); elsewhere nothing changes."""
    threads = os.environ.get(EVAL_THREADS_ENV, "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))


def worker_threads(nproc: int, cpus: int | None) -> int:
    """Threads per worker of `jepa run --nproc`: the machine's cores shared out, at least 1
    (a user's OMP_NUM_THREADS is kept as it is)."""
    return max(1, (cpus or 1) // max(1, nproc))


def die_with_launcher() -> None:
    """In a worker started by `jepa run --nproc`: get SIGTERM when the launcher dies (even by
    SIGKILL), so the worker checkpoints and stops instead of training on as an orphan."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if str(os.getppid()) != launcher:  # the launcher died before the line above
        raise RunError(f"the `jepa run --nproc` launcher (pid {launcher}) has already exited; "
                       f"this worker stops.")


def launch(recipe: Recipe, registry: Registry, args: argparse.Namespace) -> int:
    """`jepa run`: train in this process, as a rank of an existing distributed job, or spawn
    `--nproc` local workers (or submit to SLURM); returns the exit code."""
    threads.apply_count(recipe.train.threads)  # the launcher's too: rank 0 evaluates on it
    dist = detect()
    if dist.distributed:
        return run_worker(recipe, registry, args.resume, args.force, dist)
    if getattr(args, "nproc", None):
        with rundir.claim(recipe, args.resume, dist):  # refuse here, not in every worker
            pass
        return _spawn(recipe, registry, args)
    return run_worker(recipe, registry, args.resume, args.force, dist)
