"""A run whose loss stays non-finite: stop, and leave `--resume auto` a checkpoint that gives a
finite loss (or say why none can be named).

    if run.nonfinite_in_row >= run.recipe.train.max_nonfinite_steps:
        stop_diverged(run)          # RunError naming the steps, the checkpoints and the cause
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from jepa_core.errors import RunError
from jepa_core.recipe import recipe_to_dict
from jepa_core.runtime import checkpoint as ckpt

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.runtime.trainer import RunContext


def stop_diverged(run: RunContext) -> None:
    """Stop after `max_nonfinite_steps` non-finite steps in a row, leaving `--resume auto` a
    checkpoint that gives a finite loss.

    A checkpoint after k steps is only known healthy once step k+1's forward (run.step == k) is
    finite: step k's update can be what blows the weights up. The row of non-finite steps began
    at run.step == first; the last finite forward ran on the weights after `first - 1` steps,
    so checkpoints after more steps are set aside (renamed *.diverged, kept for inspection).
    A row that began at the first step of this process had no finite forward here at all: the
    checkpoint it started from is not this run's to judge (it trained to a finite loss under
    its own recipe), so nothing is renamed and the message points at what this run changed."""
    limit = run.nonfinite_in_row
    first = run.step - limit + 1
    lines = [f"{limit} steps in a row (steps {first + 1}-{run.step + 1}) had a non-finite loss "
             f"or gradient; stopping."]
    if first == run.start_step:
        raise RunError(" ".join([*lines, _nonfinite_from_the_start(run)]))
    healthy = first - 1
    directory = run.run_dir / "checkpoints"
    moved = ckpt.set_aside_after(directory, healthy, ".diverged") if run.dist.is_main else []
    kept = [p for p in ckpt.list_checkpoints(directory) if ckpt.step_of(p) <= healthy]
    if moved:
        lines.append(f"Step {healthy + 1}'s loss was still finite but its update left weights "
                     f"that give a non-finite loss, so the {len(moved)} checkpoint(s) saved "
                     f"after it were moved aside (renamed *.diverged): "
                     f"{', '.join(p.name for p in moved)}.")
    if kept:
        lines.append(f"The newest checkpoint from before the divergence is {kept[-1]}; lower "
                     f"optim.lr or set optim.grad_clip and resume from it with `--resume auto "
                     f"--force` (--force: the recipe then differs from the checkpoint's).")
    else:
        lines.append("No checkpoint from before the divergence exists; lower optim.lr or set "
                     "optim.grad_clip and start again.")
    raise RunError(" ".join(lines))


def _nonfinite_from_the_start(run: RunContext) -> str:
    """Why the loss was non-finite from this process's first step: the initial weights under
    the recipe, or (resumed) what differs from the checkpoint's recipe and plugins."""
    if run.resumed is None:
        return ("The loss was non-finite from the very first step, before any update: the "
                "recipe's model, loss or data give non-finite values at initialisation, which a "
                "lower optim.lr does not change. Check the components the recipe names (a "
                "plugin's loss or model) and the data.")
    from jepa_core.runtime.launch import SAFE_TO_CHANGE, recipe_differences

    step, loss = run.resumed["step"], run.resumed["loss"]
    path = run.run_dir / "checkpoints" / ckpt.checkpoint_name(step)
    own = (f"whose own last loss was finite ({loss:.4g}), so the checkpoint is fine"
           if loss is not None and math.isfinite(loss) else
           "(its own last loss was not recorded as finite)")
    diffs = [d for d in recipe_differences(run.resumed["recipe"], recipe_to_dict(run.recipe),
                                           run.recipe) if not d.startswith(SAFE_TO_CHANGE)]
    theirs = run.resumed["plugins"]
    plugins = [f"{name} {theirs.get(name, '(absent)') or '?'} → {info.version or '?'}"
               for name, info in run.registry.plugins.items()
               if theirs and theirs.get(name, "(absent)") != (info.version or "")]
    changed = "; ".join(diffs + [f"plugin {p}" for p in plugins])
    what = (f"what this run changed: {changed}" if changed else
            "what this run changed, though its recipe and plugin versions equal the "
            "checkpoint's: a plugin's code changed without a new version, or the data")
    return (f"The loss was non-finite from the first step after resuming from step {step} "
            f"({path}), {own}; it was left as it is. What gives a non-finite loss is "
            f"{what}. Resume with the checkpoint's recipe, or fix the component that changed.")
