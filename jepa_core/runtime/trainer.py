"""The training loop, top to bottom; the JEPA itself is the recipe's method plugin.

    build data, masker and method (which builds its modules) → (resume) → for each step:
        for each micro-batch: method.loss(modules, batch) → backward      (no sync but the last)
        non-finite check (all ranks agree) → AdamW step with scheduled lr / weight decay
        → method.after_step (e.g. the EMA of a target encoder) → hooks → log
    → checkpoint (every module by name)

Launch: `jepa run recipe.yaml` (one process), `jepa run recipe.yaml --nproc 8` (one process per
device through torch's elastic launcher), `torchrun ... -m jepa_core.runtime.worker
recipe.yaml`, or `srun jepa run recipe.yaml` under SLURM.
"""

from __future__ import annotations

import math
import os
import signal
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from jepa_core.errors import ConfigError, Preempted, RunError
from jepa_core.interfaces import Method
from jepa_core.recipe import Recipe, recipe_to_dict, recipe_to_yaml
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime import schedules, threads
from jepa_core.runtime.build import Components, build_components
from jepa_core.runtime.data import Batch, BatchLayout, batch_layout, train_loader
from jepa_core.runtime.distributed import DistEnv
from jepa_core.runtime.diverged import stop_diverged
from jepa_core.runtime.mask_guard import MaskGuard, describe_masker
from jepa_core.runtime.runlog import RunLogger
from jepa_core.runtime.sharding import full_states, load_full_states, no_gradient_sync, wrap_models
from jepa_core.seeding import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry, SafeHooks


@attrs.define
class RunContext:
    """Everything a run holds; handed to lifecycle hooks as `run`."""

    recipe: Recipe
    registry: Registry
    dist: DistEnv
    device: torch.device
    run_dir: Path
    parts: Components
    modules: dict  # {name: what the loop calls}: the method's modules, maybe DDP/compile-wrapped
    optimizer: torch.optim.Optimizer
    layout: BatchLayout
    step: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    skipped_samples: int = 0
    stop_signal: int = 0  # set by the SIGTERM / SIGUSR1 handler
    stop_agreed: bool = False  # every rank knows of a signal (all-reduced): checkpoint, stop
    target_state: dict | None = None  # rank 0: the full target encoder of the last checkpoint
    stop_step: int = 0  # the step this process trains to (set by `train`)
    start_step: int = 0  # the step this process began at (a resumed run: the checkpoint's)
    resumed: dict | None = None  # the checkpoint resumed from: {step, loss, recipe, plugins}
    metrics: dict = attrs.Factory(dict)

    @property
    def hook(self) -> SafeHooks:
        """The plugins' lifecycle hooks; a hook that raises is reported naming its plugin."""
        return self.registry.hooks

    @property
    def method(self) -> Method:
        """The recipe's method, which owns the models."""
        return self.parts.method

    def trainable(self) -> list[torch.nn.Module]:
        """The trainable modules as the loop calls them, in the method's order."""
        return [self.modules[name] for name in self.method.trainable]


def select_device(recipe: Recipe, dist: DistEnv) -> torch.device:
    """The device this rank trains on (`train.device`; a CUDA device by local rank); RunError
    when CUDA is asked for and absent."""
    want = recipe.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RunError("train.device is 'cuda' but no CUDA device is visible; use "
                           "train.device=cpu or run on a GPU machine.")
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def make_optimizer(models: list[torch.nn.Module], recipe: Recipe,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW; biases and 1-D parameters (norms) get no weight decay; frozen ones are left out."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for model in models:
        for name, p in model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    o = recipe.optim
    groups = [{"params": decay, "apply_wd": True},
              {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=o.start_lr, betas=o.betas, eps=o.eps,
                             weight_decay=o.weight_decay, **extra)


def apply_schedules(run: RunContext) -> dict[str, float]:
    """Set this step's learning rate and weight decay on the optimizer; returns them for
    logging."""
    o, total = run.recipe.optim, run.parts.total_steps
    warmup = int(round(o.warmup_epochs * run.parts.steps_per_epoch))
    lr = schedules.learning_rate(run.step, total, warmup, o.start_lr, o.lr, o.final_lr)
    wd = schedules.weight_decay(run.step, total, o.weight_decay, o.final_weight_decay)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
        if group["apply_wd"]:
            group["weight_decay"] = wd
    return {"lr": lr, "wd": wd, **run.method.schedule_metrics(run.step)}


def forward_loss(run: RunContext, batch: Batch) -> Any:
    """One micro-batch through the method, under bf16 autocast where the recipe asks for it:
    a `MethodOutput` (loss, named terms, pooled features)."""
    dev = run.device
    use_bf16 = run.recipe.train.precision == "bf16" or (
        run.recipe.train.precision == "auto" and dev.type == "cuda")
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
        return run.method.loss(run.modules, batch.to(dev))


def representation_health(pooled: torch.Tensor) -> dict[str, float]:
    """Std of pooled target features across the batch, and the effective rank
    (exp of the entropy of the normalised singular values), on [b, D] features.

    The features are centred over the batch, so b samples span at most b - 1 dimensions:
    fewer than 2 samples give neither figure (they are left out), and features that do not
    vary at all (a collapsed batch) have effective rank 0."""
    pooled = pooled.float()
    if pooled.shape[0] < 2:
        return {}
    centred = pooled - pooled.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(centred)
    total = float(s.sum())
    if not total > 0.0:
        erank = 0.0
    else:
        p = s / total
        erank = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
    return {"target_std": float(pooled.std(dim=0).mean()), "effective_rank": erank}


def _reduce_step(run: RunContext, loss_sum: torch.Tensor, grad_norm: torch.Tensor,
                 terms: dict[str, torch.Tensor]) -> tuple[float, bool, dict[str, float]]:
    """(loss averaged over ranks, whether every rank's loss and gradients are finite, the
    method's terms averaged over ranks). One all-reduce: a CPU-GPU sync point per step."""
    both = torch.stack([loss_sum.float(), (~torch.isfinite(grad_norm)).float(),
                        torch.tensor(float(run.stop_signal), device=loss_sum.device),
                        *[t.float() for t in terms.values()]])
    if run.dist.distributed and torch.distributed.is_initialized():
        torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.SUM)  # NaN spreads
        both[0] /= run.dist.world_size
        both[3:] /= run.dist.world_size
    if both[2] > 0:  # decided on the reduced flag, so all ranks stop after the same step
        run.stop_agreed = True
        run.stop_signal = run.stop_signal or int(signal.SIGTERM)
    values = both.tolist()
    loss = values[0]
    return loss, math.isfinite(loss) and values[1] == 0.0, dict(zip(terms, values[3:], strict=True))


def train_step(run: RunContext, micro_batches: list[Batch]) -> dict[str, float]:
    """One optimizer step over `accum` micro-batches; returns the step's metrics."""
    metrics = apply_schedules(run)
    torch.manual_seed(derive_seed(run.recipe.seed, "step", run.step, run.dist.rank))  # drop-path
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=run.device)
    terms: dict[str, torch.Tensor] = {}
    pooled = []
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = no_gradient_sync(run.trainable()) if not last else nullcontext()
        with sync:
            out = forward_loss(run, batch)
            (out.loss / len(micro_batches)).backward()
        loss_sum += out.loss.detach() / len(micro_batches)
        for name, value in out.metrics.items():
            terms[name] = terms.get(name, 0.0) + value.detach().float() / len(micro_batches)
        if out.features is not None:
            pooled.append(out.features.detach())
    clip = run.recipe.optim.grad_clip
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"),
                                               foreach=True)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    loss_value, finite, term_values = _reduce_step(run, loss_sum, grad_norm, terms)
    if not finite:
        run.optimizer.zero_grad(set_to_none=True)
        run.nonfinite_in_row += 1
        run.nonfinite_total += 1
        if run.nonfinite_in_row >= run.recipe.train.max_nonfinite_steps:
            stop_diverged(run)
        metrics.update(loss=float("nan"), skipped_step=1.0)
    else:
        run.optimizer.step()
        run.method.after_step(run.step)
        run.nonfinite_in_row = 0
        metrics.update(loss=loss_value, grad_norm=float(grad_norm), **term_values)
    run.step += 1
    metrics["step"] = run.step
    metrics.update(mask_counts(micro_batches[0].masks))
    # an SVD: on the steps the log shows (every log_every steps, the first and the last),
    # not on a skipped step (it fails on non-finite features)
    health_step = (run.step % run.recipe.train.log_every == 0 or run.step == 1
                   or run.step == run.stop_step)
    if pooled and finite and health_step:
        metrics.update(representation_health(torch.cat(pooled)))
    run.skipped_samples += sum(b.skipped for b in micro_batches)
    metrics["skipped_samples"] = float(run.skipped_samples)
    metrics["skipped_steps"] = float(run.nonfinite_total)
    return metrics


def mask_counts(masks: dict) -> dict[str, float]:
    """Valid context tokens (mean per row) and valid target tokens (mean per row, all blocks
    together) of each mask set; the set of a single masker gives plain `context_tokens` /
    `target_tokens`."""
    out = {}
    for name, m in masks.items():
        prefix = "" if len(masks) == 1 else f"{name}_"
        out[f"{prefix}context_tokens"] = float(
            m.context.shape[1] if m.context_valid is None
            else m.context_valid.sum(1).float().mean())
        out[f"{prefix}target_tokens"] = float(
            m.targets[0].numel() if m.targets_valid is None
            else m.targets_valid.flatten(1).sum(1).float().mean())
    return out


def sharded(run: RunContext) -> bool:
    """True when the recipe trains with FSDP2 (states are sharded across ranks)."""
    return run.recipe.dist.strategy == "fsdp"


def checkpoint_state(run: RunContext) -> dict:
    """The checkpoint dict; collective under FSDP (every rank must call it)."""
    models = full_states(run.method, run.optimizer, sharded(run))
    return {
        "format": ckpt.FORMAT, "version": ckpt.FORMAT_VERSION, "step": run.step,
        "epoch": run.step // run.parts.steps_per_epoch, **models,
        "method": run.recipe.method_name, "eval_module": run.method.eval_module,
        "recipe": recipe_to_dict(run.recipe),
        "plugins": {name: info.version or "" for name, info in run.registry.plugins.items()},
        "counters": {"nonfinite_total": run.nonfinite_total,
                     "skipped_samples": run.skipped_samples},
        "metrics": {k: float(v) for k, v in run.metrics.items()},
        "threads": threads.settings(run.recipe.train.threads),  # CPU speed depends on them
    }


def save_checkpoint(run: RunContext) -> Path | None:
    """Rank 0 writes; every rank waits so nobody runs ahead of a checkpoint."""
    path = None
    state = checkpoint_state(run) if run.dist.is_main or sharded(run) else None
    if run.dist.is_main:
        assert state is not None
        directory = run.run_dir / "checkpoints"
        path = directory / ckpt.checkpoint_name(run.step)
        ckpt.save_atomic(state, path)
        run.target_state = state["modules"][run.method.eval_module]
        ckpt.prune(directory, run.recipe.train.keep_last, run.recipe.train.milestone_every)
        run.hook.on_checkpoint_saved(run=run, path=str(path), step=run.step)
    if run.dist.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return path


def load_state(run: RunContext, state: dict) -> None:
    """Load a checkpoint's modules and optimizer state into the run; ConfigError if it holds
    another method's modules."""
    theirs, ours = sorted(state["modules"]), sorted(run.method.modules)
    if theirs != ours:
        raise ConfigError(
            f"the checkpoint holds the modules {', '.join(theirs)}, but method "
            f"{run.recipe.method_name!r} has {', '.join(ours)}: it was written by another "
            f"method. Resume with the recipe it was trained with.")
    load_full_states(state, run.method, run.optimizer, sharded(run))
    run.step = int(state["step"])
    loss = state.get("metrics", {}).get("loss")
    run.resumed = {"step": run.step, "loss": loss if isinstance(loss, float) else None,
                   "recipe": state.get("recipe", {}), "plugins": state.get("plugins", {})}
    counters = state.get("counters", {})
    run.nonfinite_total = int(counters.get("nonfinite_total", 0))
    run.skipped_samples = int(counters.get("skipped_samples", 0))


def setup(recipe: Recipe, registry: Registry, dist: DistEnv) -> RunContext:
    """Everything a run needs before its first step: device, components, wrapped models,
    optimizer and batch layout."""
    device = select_device(recipe, dist)
    parts = build_components(recipe, registry)
    for model in parts.method.modules.values():
        model.to(device)
    layout = batch_layout(recipe.train.global_batch_size, dist.world_size, dist.rank,
                          recipe.dist.per_device_batch_cap)
    modules = wrap_models(parts.method, recipe, dist, device)
    # after wrapping: FSDP2 replaces parameters by sharded DTensors
    optimizer = make_optimizer([parts.method.modules[n] for n in parts.method.trainable],
                               recipe, device)
    return RunContext(recipe, registry, dist, device, recipe.run_dir, parts, modules,
                      optimizer, layout)


class StopOnSignal:
    """SIGTERM / SIGUSR1 (SLURM preemption, time limit) and a first Ctrl-C (SIGINT) → finish the
    step, checkpoint, stop with exit 128 + signal. A second Ctrl-C stops at once (no checkpoint
    beyond the last one written)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    FIRST_CTRL_C = (b"\njepa: Ctrl-C: finishing this step and saving a checkpoint; press Ctrl-C "
                    b"again to stop at once.\n")

    def __init__(self, run: RunContext):
        self.run, self.interrupted = run, False
        self.previous: dict[int, Any] = {}  # signal number -> the handler it replaced

    def _handle(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            if self.run.dist.is_main:
                os.write(2, self.FIRST_CTRL_C)  # not print: a handler may interrupt a print
        self.run.stop_signal = self.run.stop_signal or signum  # the first one sets the exit code

    def __enter__(self) -> StopOnSignal:
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _preempt(run: RunContext) -> None:
    path = save_checkpoint(run)
    if run.dist.is_main:
        requeue_on_slurm(run.stop_signal)
    name = signal.Signals(run.stop_signal).name
    how = "Ctrl-C (SIGINT)" if run.stop_signal == signal.SIGINT else name
    raise Preempted(f"stopped by {how} after step {run.step}; checkpoint {path or '(rank 0)'} "
                    f"is complete. Resume with `jepa run RECIPE --resume auto` (a requeued "
                    f"SLURM job resumes by itself).", run.stop_signal)


def requeue_on_slurm(signum: int) -> None:
    """Under SLURM, SIGUSR1 (sent before the time limit with --signal=USR1@90) → requeue."""
    import os
    import shutil
    import subprocess

    job = os.environ.get("SLURM_JOB_ID")
    if signum == signal.SIGUSR1 and job and shutil.which("scontrol"):
        subprocess.run(["scontrol", "requeue", job], check=False)


def _live_row(live: Any, run: RunContext, logger: RunLogger) -> None:
    """The in-training kNN after a checkpoint (eval.every_checkpoints): a metrics row and a
    console line (jepa_core.runtime.live_eval)."""
    from jepa_core.runtime.live_eval import line

    row = live.measure(run)
    logger.add_row(row, line(row))


def train(recipe: Recipe, registry: Registry, dist: DistEnv | None = None,
          resume: dict | None = None, console: Any = None) -> RunContext:
    """Run the whole training; returns the finished RunContext (metrics of the last step)."""
    dist = dist or DistEnv()
    run = setup(recipe, registry, dist)
    if resume is not None:
        load_state(run, resume)
    if dist.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
        ckpt.remove_stale_temps(run.run_dir / "checkpoints")
    stop = min(run.parts.total_steps, recipe.train.max_steps or run.parts.total_steps)
    guard = None
    if run.parts.masker is not None:  # before any worker draws: a bad masker fails here
        masker = run.parts.masker
        guard = MaskGuard(masker, describe_masker(masker, recipe, registry), recipe.seed,
                          run.layout, run.step, stop)
        guard.check_start()
    run.stop_step = stop
    run.start_step = run.step
    loader = train_loader(run.parts.source, run.parts.masker, run.layout, seed=recipe.seed,
                          steps_per_epoch=run.parts.steps_per_epoch, start_step=run.step,
                          stop_step=stop, num_workers=recipe.train.num_workers,
                          pin_memory=run.device.type == "cuda",
                          view_names=tuple(run.method.views))
    run.hook.on_train_start(run=run)
    every = recipe.train.checkpoint_every
    live = None
    with RunLogger(run, stop, console) as logger, StopOnSignal(run):
        if recipe.eval.every_checkpoints is not None and dist.is_main:
            from jepa_core.runtime import live_eval

            live = live_eval.start(run, logger.console)
        micro: list[Batch] = []
        for batch in loader:
            if guard is not None:
                guard.check_batch(batch, len(micro))
            micro.append(batch)
            if len(micro) < run.layout.accum_steps:
                continue
            run.metrics = train_step(run, micro)
            micro = []
            logger.step_end(run.metrics)
            run.hook.on_step_end(run=run, step=run.step, metrics=run.metrics)
            if run.stop_agreed:
                _preempt(run)
            if every and run.step % every == 0 and run.step < stop and not run.nonfinite_in_row:
                save_checkpoint(run)
                if live is not None and live.due(run):
                    _live_row(live, run, logger)
    save_checkpoint(run)
    if live is not None and live.due(run, final=True):
        _live_row(live, run, logger)
    run.hook.on_train_end(run=run, metrics=run.metrics)
    return run
