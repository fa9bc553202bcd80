"""The training loop on CPU: runs, hooks, determinism, accumulation, resume, non-finite steps."""

from __future__ import annotations

import copy
import json
import types

import attrs
import pytest
import torch

from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.data import batch_layout
from jepa_core.errors import RunError
from jepa_core.hookspecs import hookimpl
from jepa_core.runtime.launch import find_resume
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.trainer import train


def _run(d, registry=None, resume=None):
    registry = registry or make_plugin_manager()
    recipe = recipe_from_dict(d, registry, "tiny")
    return train(recipe, registry, resume=resume)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run):
    return {k: v.clone() for k, v in run.method.modules["encoder"].state_dict().items()}


def test_tiny_run_writes_outputs_and_learns_shapes(tiny_dict):
    tiny_dict["train"]["max_steps"] = 3
    run = _run(tiny_dict)
    rd = run.run_dir
    assert (rd / "recipe.yaml").exists()
    rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "lr", "wd", "momentum", "context_tokens", "target_tokens", "target_std",
                "effective_rank", "img_per_s"):
        assert key in rows[-1], key
    assert all(r["loss"] > 0 for r in rows)
    assert ckpt.list_checkpoints(rd / "checkpoints")[-1].name == ckpt.checkpoint_name(3)


def test_lifecycle_hooks_fire_in_order(tiny_dict):
    calls = []

    class Recorder:
        @hookimpl
        def on_train_start(self, run):
            calls.append(("start", run.step))

        @hookimpl
        def on_step_end(self, run, step, metrics):
            calls.append(("step", step, "loss" in metrics))

        @hookimpl
        def on_checkpoint_saved(self, run, path, step):
            calls.append(("checkpoint", step, path.endswith(ckpt.checkpoint_name(step))))

        @hookimpl
        def on_train_end(self, run, metrics):
            calls.append(("end", metrics["step"]))

    tiny_dict["train"].update(max_steps=2, checkpoint_every=1)
    registry = make_plugin_manager(objects=[("recorder", Recorder())])
    _run(tiny_dict, registry)
    assert calls == [("start", 0), ("step", 1, True), ("checkpoint", 1, True), ("step", 2, True),
                     ("checkpoint", 2, True), ("end", 2)]


def test_same_seed_same_losses_other_seed_differs(tiny_dict, tmp_path):
    tiny_dict["train"]["max_steps"] = 3
    a = _run(tiny_dict)
    b_dict = copy.deepcopy(tiny_dict)
    b_dict["out_dir"] = str(tmp_path / "b")
    b = _run(b_dict)
    assert _losses(a.run_dir) == _losses(b.run_dir)
    for k, v in _weights(a).items():
        assert torch.equal(v, _weights(b)[k]), k
    c_dict = copy.deepcopy(tiny_dict)
    c_dict.update(out_dir=str(tmp_path / "c"), seed=1)
    assert _losses(_run(c_dict).run_dir) != _losses(a.run_dir)


def test_gradient_accumulation_equals_full_batch(tiny_dict, tmp_path):
    tiny_dict["train"]["max_steps"] = 2
    full = _run(tiny_dict)
    acc = copy.deepcopy(tiny_dict)
    acc["out_dir"] = str(tmp_path / "acc")
    acc["dist"] = {"per_device_batch_cap": 4}
    accumulated = _run(acc)
    assert accumulated.layout.accum_steps == 2
    fa, fb = _losses(full.run_dir), _losses(accumulated.run_dir)
    assert fa == pytest.approx(fb, rel=1e-5)
    wa, wb = _weights(full), _weights(accumulated)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_resume_is_bit_identical_on_cpu(tiny_dict, tmp_path, registry):
    tiny_dict["train"]["max_steps"] = 4
    straight = _run(tiny_dict)

    part = copy.deepcopy(tiny_dict)
    part["out_dir"] = str(tmp_path / "part")
    part["train"]["max_steps"] = 2
    _run(part)
    part["train"]["max_steps"] = 4
    recipe = recipe_from_dict(part, registry, "tiny")
    state = find_resume(recipe, "auto", force=False)
    assert state["step"] == 2
    resumed = _run(part, resume=state)
    assert resumed.step == 4
    for k, v in _weights(straight).items():
        assert torch.equal(v, _weights(resumed)[k]), k
    assert _losses(straight.run_dir)[2:] == _losses(resumed.run_dir)[2:]


def test_resume_refuses_changed_recipe(tiny_dict, registry):
    tiny_dict["train"]["max_steps"] = 1
    _run(tiny_dict)
    changed = copy.deepcopy(tiny_dict)
    changed["optim"]["lr"] = 5e-4
    recipe = recipe_from_dict(changed, registry, "tiny")
    with pytest.raises(Exception, match=r"optim.lr: 0.001 → 0.0005"):
        find_resume(recipe, "auto", force=False)
    assert find_resume(recipe, "auto", force=True)["step"] == 1


@attrs.frozen
class NaNLossConfig:
    """A loss that is NaN on the steps listed (to test non-finite handling)."""

    nan_calls: tuple[int, ...] = ()


class NaNLossPlugin:
    @hookimpl
    def register_losses(self, register):
        def build(config):
            calls = {"n": 0}

            def loss(pred, target):
                calls["n"] += 1
                value = torch.nn.functional.smooth_l1_loss(pred, target)
                return value * float("nan") if calls["n"] in config.nan_calls else value

            return loss

        register("nan_loss", NaNLossConfig, build)


def test_nonfinite_steps_are_skipped_then_stop(tiny_dict):
    tiny_dict["loss"] = {"name": "nan_loss", "nan_calls": [2]}
    tiny_dict["train"]["max_steps"] = 3
    registry = make_plugin_manager(objects=[("nan", NaNLossPlugin())])
    run = _run(tiny_dict, registry)
    assert run.step == 3 and run.nonfinite_total == 1
    assert _losses(run.run_dir)[1] == "nan"

    tiny_dict["loss"]["nan_calls"] = [3, 4, 5]
    tiny_dict["train"].update(max_nonfinite_steps=3, max_steps=6, checkpoint_every=1)
    tiny_dict["out_dir"] += "_stop"
    registry = make_plugin_manager(objects=[("nan", NaNLossPlugin())])
    with pytest.raises(RunError, match="3 steps in a row"):
        _run(tiny_dict, registry)
    recipe = recipe_from_dict(tiny_dict, registry, "tiny")
    kept = ckpt.list_checkpoints(recipe.run_dir / "checkpoints")
    # step 2 ran on the weights after step 1 with a finite loss; the weights after step 2 gave
    # a non-finite one, so that checkpoint is set aside
    assert ckpt.load(kept[-1])["step"] == 1
    assert (recipe.run_dir / "checkpoints" / "step_000000002.pt.diverged").exists()


def test_batch_layout():
    assert batch_layout(2048, 16).micro_batch == 128
    layout = batch_layout(64, 2, rank=1, per_device_cap=12)
    assert (layout.per_rank, layout.accum_steps, layout.micro_batch) == (32, 4, 8)
    assert list(layout.rows(1)) == list(range(40, 48))
    with pytest.raises(Exception, match="does not divide"):
        batch_layout(10, 3)
