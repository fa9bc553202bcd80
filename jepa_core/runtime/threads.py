"""The CPU thread settings of a jepa process: set before torch starts its OpenMP runtime, and
reported in the run's header and checkpoints.

torch's CPU ops run on an OpenMP thread pool (libgomp in the Linux wheels, libomp on macOS).
Between two parallel regions the pool's threads spin by default (libgomp: ~300,000 turns,
milliseconds) before they sleep. On an idle machine that saves a wake-up; on a busy one (a
laptop, a shared node, a CI runner) the spinning threads take the cores the other threads of
the same step are waiting for, and a 2-thread quickstart step took 4x as long as a 1-thread
one (issue 28). Sleeping at once (`OMP_WAIT_POLICY=PASSIVE`) fixes that but costs every
wake-up on an idle machine; a short spin (`DEFAULTS`) keeps most of both. libomp (macOS)
ignores GOMP_SPINCOUNT: there set KMP_BLOCKTIME yourself (not measured here).

The runtime reads these variables once, when it loads (the first `import torch` of a process),
so `jepa`'s entry point calls `set_defaults()` before anything imports torch, and every child
process (`--nproc` workers, torchrun / SLURM tasks, `jepa eval --nproc` extractors, DataLoader
workers) inherits them with the environment. A variable the user set is never touched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any

# What jepa sets when the user has set none of WAIT_VARIABLES: libgomp's threads spin 5,000
# turns (its default: 300,000) before they sleep. Measured on the quickstart (bench/threads.py,
# 2 cores): within 1.1x of the best setting both idle (the default's long spin is best there;
# sleeping at once, OMP_WAIT_POLICY=PASSIVE, was 1.24-1.32x) and next to two busy processes
# (1 thread is best there; the default's spin was 1.3-1.5x). The thread count is torch's own
# default (all physical cores) in one process, and the cores shared out under `--nproc`.
DEFAULTS = {"GOMP_SPINCOUNT": "5000"}
# Any of these set by the user: the user chose how the pool waits (libgomp's GOMP_SPINCOUNT and
# libomp's KMP_BLOCKTIME override OMP_WAIT_POLICY), so jepa sets no wait policy.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# "NAME=VALUE,..." of the variables jepa set (inherited by child processes, which then report
# them as jepa's default, not the user's).
MARK_ENV = "JEPA_THREAD_DEFAULTS"


def _marked(environ: MutableMapping[str, str]) -> dict[str, str]:
    pairs = (item.partition("=") for item in environ.get(MARK_ENV, "").split(",") if item)
    return {name: value for name, _, value in pairs}


def set_default(name: str, value: str, environ: MutableMapping[str, str] = os.environ) -> bool:
    """environ[name] = value unless the user set `name`; marked as jepa's. True if set."""
    if name in environ and not is_default(name, environ):
        return False
    environ[name] = value
    marked = {**_marked(environ), name: value}
    environ[MARK_ENV] = ",".join(f"{k}={v}" for k, v in sorted(marked.items()))
    return True


def unset_default(name: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Remove `name` again if jepa set it (set_default), e.g. after its child processes ran."""
    if is_default(name, environ):
        environ.pop(name, None)
        marked = {k: v for k, v in _marked(environ).items() if k != name}
        environ[MARK_ENV] = ",".join(f"{k}={v}" for k, v in sorted(marked.items()))


def is_default(name: str, environ: MutableMapping[str, str] = os.environ) -> bool:
    """True when `name` holds the value jepa set for it (not one the user set)."""
    marked = _marked(environ)
    return name in marked and environ.get(name) == marked[name]


def set_defaults() -> None:
    """jepa's OpenMP defaults in this process's environment (`add_defaults`). Call before torch
    is imported; once it is (jepa's `main` called from a program that imported torch) the
    runtime has read its settings, and this leaves the environment as it is."""
    if "torch" not in sys.modules:
        add_defaults(os.environ)


def add_defaults(environ: MutableMapping[str, str]) -> None:
    """DEFAULTS in `environ`, marked as jepa's, unless the user set any of WAIT_VARIABLES."""
    if not any(n in environ and not is_default(n, environ) for n in WAIT_VARIABLES):
        for name, value in DEFAULTS.items():
            set_default(name, value, environ)


def origin(name: str, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Where the variable's value comes from: "jepa default", "environment" or None (unset)."""
    if name not in environ:
        return None
    return "jepa default" if is_default(name, environ) else "environment"


def apply_count(threads: int | None) -> None:
    """torch.set_num_threads(threads) for the recipe's `train.threads` (None: leave it)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def settings(recipe_threads: int | None,
             environ: MutableMapping[str, str] = os.environ) -> dict[str, Any]:
    """This process's thread settings and where each comes from, e.g.
    {"count": 2, "count_from": "torch default", "wait_policy": None,
     "wait_policy_from": "OpenMP default", "GOMP_SPINCOUNT": "5000",
     "GOMP_SPINCOUNT_from": "jepa default"}: GOMP_SPINCOUNT / KMP_BLOCKTIME only where set."""
    import torch

    if recipe_threads is not None:
        count_from = "train.threads"
    else:
        count_from = {"environment": "OMP_NUM_THREADS", None: "torch default",
                      "jepa default": "jepa default"}[origin("OMP_NUM_THREADS", environ)]
    out: dict[str, Any] = {"count": torch.get_num_threads(), "count_from": count_from,
                           "wait_policy": environ.get("OMP_WAIT_POLICY"),
                           "wait_policy_from": origin("OMP_WAIT_POLICY", environ)
                           or "OpenMP default"}
    for name in WAIT_VARIABLES[1:]:
        if name in environ:
            out[name], out[f"{name}_from"] = environ[name], origin(name, environ)
    return out


def header(found: dict[str, Any]) -> str:
    """The run header's line for `settings()`: 'threads: 2 per process (torch default),
    GOMP_SPINCOUNT=5000 (jepa default)'."""
    parts = [f"OMP_WAIT_POLICY={found['wait_policy']} ({found['wait_policy_from']})"
             ] if found["wait_policy"] else []
    parts += [f"{name}={found[name]} ({found[f'{name}_from']})"
              for name in WAIT_VARIABLES[1:] if name in found]
    return (f"threads: {found['count']} per process ({found['count_from']}), "
            + (", ".join(parts) or "the OpenMP runtime's own waiting (nothing set)"))
