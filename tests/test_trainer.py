"""The training loop on CPU: runs, hooks, determinism, accumulation, resume, non-finite steps."""

from __future__ import annotations

import copy
import json

import attrs
import pytest
import torch

from jepa_core.errors import RunError
from jepa_core.hookspecs import hookimpl
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.data import batch_layout
from jepa_core.runtime.launch import find_resume
from jepa_core.runtime.trainer import train


def _run(d, registry=None, resume=None):
    registry = registry or make_plugin_manager()
    recipe = recipe_from_dict(d, registry, "tiny")
    return train(recipe, registry, resume=resume)


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


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


# -- what the log shows: health on the last step, the ETA of a resumed run, the bar ----------
def _plain_console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=200, highlight=False)


def _train_to(d, registry, console, resume=None):
    recipe = recipe_from_dict(d, registry, "tiny")
    return train(recipe, registry, resume=resume, console=console)


def test_a_short_run_logs_the_effective_rank_of_its_last_step(tiny_dict, registry):
    """5 steps at log_every 20: the line of step 5 (the last) used to say 'rank nan'."""
    tiny_dict["train"].update(max_steps=5, log_every=20)
    console = _plain_console()
    run = _train_to(tiny_dict, registry, console)
    out = console.file.getvalue()
    assert "step 5/5" in out and "nan" not in out, out
    rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert 0 < rows[-1]["effective_rank"] <= tiny_dict["train"]["global_batch_size"]
    assert "effective_rank" in rows[0] and "effective_rank" not in rows[2]  # steps 1 and 5 only


def test_representation_health_of_too_few_or_identical_samples():
    from jepa_core.runtime.trainer import representation_health

    assert representation_health(torch.randn(1, 8)) == {}  # one sample spans nothing
    flat = representation_health(torch.ones(6, 8))
    assert flat["effective_rank"] == 0.0 and flat["target_std"] == 0.0
    g = torch.Generator().manual_seed(0)
    two = representation_health(torch.randn(2, 8, generator=g))
    assert two["effective_rank"] == pytest.approx(1.0, abs=1e-4)  # 2 centred points: a line


def test_the_eta_after_a_resume_is_paced_by_this_process(tiny_dict, registry, monkeypatch):
    """A clock that moves 10 s per reading: resumed at step 2 of 4, step 3 took this process
    10 s, so one step is left: 10 s (the old estimate spread the time over 3 steps: 3 s)."""
    from jepa_core.runtime import runlog

    tiny_dict["train"]["max_steps"] = 2
    _train_to(tiny_dict, registry, _plain_console())
    tiny_dict["train"]["max_steps"] = 4
    recipe = recipe_from_dict(tiny_dict, registry, "tiny")
    state = find_resume(recipe, "auto", force=False)
    ticks = iter(range(0, 10_000, 10))
    monkeypatch.setattr(runlog, "now", lambda: float(next(ticks)))
    console = _plain_console()
    _train_to(tiny_dict, registry, console, resume=state)
    out = console.file.getvalue()
    assert "steps 2→4" in out
    line3 = next(x for x in out.splitlines() if x.startswith("step 3/4"))
    assert line3.endswith("eta 10s"), line3


def test_eta_seconds_counts_only_the_steps_of_this_process():
    from jepa_core.runtime.runlog import eta_seconds

    assert eta_seconds(step=110, start_step=100, stop_step=200, elapsed=20.0) == 180.0
    assert eta_seconds(step=100, start_step=100, stop_step=200, elapsed=5.0) is None


def test_a_terminal_gets_a_progress_bar_and_a_pipe_gets_lines(tiny_dict, registry, tmp_path):
    import io

    from rich.console import Console

    tiny_dict["train"].update(max_steps=3, log_every=1)
    tty = Console(file=io.StringIO(), force_terminal=True, width=160, highlight=False)
    _train_to(tiny_dict, registry, tty)
    drawn = tty.file.getvalue()
    assert "━" in drawn and "3/3" in drawn  # rich's bar and its step count
    assert "step 3/3" not in drawn  # no plain lines under the bar
    tiny_dict["out_dir"] = str(tmp_path / "piped")
    piped = _plain_console()
    _train_to(tiny_dict, registry, piped)
    lines = piped.file.getvalue().splitlines()
    assert [x.split()[1] for x in lines if x.startswith("step ")] == ["1/3", "2/3", "3/3"]
    assert "━" not in piped.file.getvalue()
