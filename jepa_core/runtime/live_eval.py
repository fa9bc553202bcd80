"""Evaluation during training (`eval.every_checkpoints: K`): a cheap kNN, so that a run that
collapses shows it in metrics.jsonl long before it ends.

At every checkpoint whose step is a multiple of K x train.checkpoint_every, and at the last
checkpoint, the main process extracts the features of the method's eval module (the weights
the trainer holds at that step) on a seeded subset of `eval.live_images` probe-training
images and as many test images, and writes one row to metrics.jsonl:

    {"step": 400, "live_knn": 0.61, "live_images": 360, "live_train_images": 500, "live_s": 0.4}

The subsets are the ones `jepa eval` draws with `eval.max_images = eval.live_images`, and the
kNN is `jepa eval`'s, so the last row's figure is that evaluation's kNN on those images.

Training numbers do not move: the features come from a no-grad pass in eval mode, every
module's train/eval flag is put back afterwards, and torch's global RNG state is saved and
restored around the pass (the DataLoader draws its base seed from it). Other ranks do not
evaluate; they go on to the next step and meet the main process at its all-reduce. Under
FSDP the eval module is sharded, so the pass runs on a copy holding the full weights the
checkpoint just gathered. A data source without labels skips it, with one note.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from jepa_core.commands.evaluate import eval_indices, extract, knn_accuracy
from jepa_core.runtime.build import build, build_encoder, encoder_geometry
from jepa_core.runtime.runlog import now


class LiveEval:
    """The in-training kNN of one run (main process only); see `start`."""

    def __init__(self, run: Any, train_src: Any, test_src: Any):
        recipe = run.recipe
        self.cfg = recipe.eval
        self.period = recipe.eval.every_checkpoints * recipe.train.checkpoint_every
        self.num_classes = train_src.num_classes
        limit = recipe.eval.live_images
        self.sides = [(train_src, eval_indices(len(train_src), limit, recipe.seed)),
                      (test_src, eval_indices(len(test_src), limit, recipe.seed + 1))]
        self.start_step = run.step
        self.copy: torch.nn.Module | None = None  # FSDP: the full-weight copy

    def due(self, run: Any, final: bool = False) -> bool:
        """Whether the checkpoint just written at run.step gets a kNN: every K-th, and the
        last one of a process that trained (a finished run resumed gets none again)."""
        if final:
            return run.step > self.start_step
        return run.step % self.period == 0

    def measure(self, run: Any) -> dict[str, float]:
        """The kNN row of this step (its figures; the caller writes it)."""
        t0 = now()
        model, restore = self._model(run)
        devices = [run.device.index or 0] if run.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                (ftr, ytr, _), (fte, yte, _) = [
                    extract({"live": model}, src, indices, self.cfg, run.device)
                    for src, indices in self.sides]
        finally:
            restore()
        acc = knn_accuracy(ftr["live"], ytr, fte["live"], yte, self.num_classes,
                           self.cfg.live_k)
        return {"step": run.step, "live_knn": acc, "live_images": len(yte),
                "live_train_images": len(ytr), "live_s": now() - t0}

    def _model(self, run: Any) -> tuple[torch.nn.Module, Callable[[], None]]:
        """(the module to extract with, what puts things back afterwards)."""
        if run.recipe.dist.strategy == "fsdp":  # sharded in place: use the gathered weights
            if self.copy is None:
                self.copy = build_encoder(run.recipe, run.registry).to(run.device)
            self.copy.load_state_dict(run.target_state)
            return self.copy, lambda: None
        model = run.method.modules[run.method.eval_module]
        modes = [(m, m.training) for m in model.modules()]

        def restore() -> None:
            for m, training in modes:
                m.training = training

        return model, restore


def start(run: Any, console: Any) -> LiveEval | None:
    """The run's LiveEval, or None: off (eval.every_checkpoints unset), not the main process,
    or a data source without labels (one note on `console`). The test images are opened here,
    so a missing evaluation folder fails at the start, not mid-run."""
    recipe = run.recipe
    if recipe.eval.every_checkpoints is None or not run.dist.is_main:
        return None
    train_src = run.parts.source
    if not getattr(train_src, "num_classes", 0):
        where = getattr(train_src, "split", "") or recipe.data.name
        console.print(f"[yellow]note:[/yellow] eval.every_checkpoints: the in-training kNN is "
                      f"skipped, the data source {recipe.data.name!r} has no labels ({where}).",
                      soft_wrap=True)
        return None
    size, _ = encoder_geometry(recipe, run.registry)
    test_src = build("data_source", recipe, run.registry, "data", image_size=size, train=False)
    return LiveEval(run, train_src, test_src)


def line(row: dict) -> str:
    """The console line of a kNN row."""
    return (f"live kNN at step {row['step']}: {100 * row['live_knn']:.1f}% on "
            f"{row['live_images']} test images ({row['live_train_images']} probe-training, "
            f"{row['live_s']:.1f}s)")
