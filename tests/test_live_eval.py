"""Evaluation during training (eval.every_checkpoints): kNN rows in metrics.jsonl of real tiny
runs, training numbers untouched, jepa eval's kNN on the same images, resume, no labels."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from conftest import TINY
from PIL import Image
from rich.console import Console

from jepa_core.errors import RecipeError
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.trainer import train

LIVE = {"every_checkpoints": 2, "live_images": 24}


def tiny(out_dir, live: bool, **train_keys) -> dict:
    d = copy.deepcopy(TINY)
    d["out_dir"] = str(out_dir)
    d["train"].update({"max_steps": 4, "checkpoint_every": 1, "keep_last": 8, **train_keys})
    if live:
        d["eval"].update(LIVE)
    return d


def trained(d: dict):
    registry = make_plugin_manager()
    recipe = recipe_from_dict(d, registry, "tiny")
    out = io.StringIO()
    run = train(recipe, registry, console=Console(file=out, width=200, highlight=False))
    return run, out.getvalue()


def rows(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4 steps with the in-training kNN on and off."""
    on = trained(tiny(tmp_path_factory.mktemp("on"), live=True))
    off = trained(tiny(tmp_path_factory.mktemp("off"), live=False))
    return on, off


def test_knn_rows_appear_at_every_second_checkpoint_and_the_last(runs):
    (run, console), _ = runs
    live = [r for r in rows(run.run_dir) if "live_knn" in r]
    assert [r["step"] for r in live] == [2, 4]  # checkpoints at 1, 2, 3, 4: every 2nd
    for r in live:
        assert 0.0 <= r["live_knn"] <= 1.0
        assert r["live_images"] == r["live_train_images"] == 24
    assert "live kNN at step 2: " in console and "live kNN at step 4: " in console
    steps = [r["step"] for r in rows(run.run_dir) if "loss" in r]
    assert steps == list(range(1, 5))  # the training rows are all there, once


def test_the_knn_changes_no_training_number(runs):
    (on, _), (off, _) = runs
    for step in (1, 2, 3, 4):
        a = ckpt.load(on.run_dir / "checkpoints" / ckpt.checkpoint_name(step))
        b = ckpt.load(off.run_dir / "checkpoints" / ckpt.checkpoint_name(step))
        for name in a["modules"]:
            for key, value in a["modules"][name].items():
                assert torch.equal(value, b["modules"][name][key]), (step, name, key)
        for i, state in a["optimizer"]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, b["optimizer"]["state"][i][key]), (step, i, key)
    timing = ("img_per_s", "elapsed_s")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in rows(on.run_dir)
             if "loss" in r]
    assert strip == [{k: v for k, v in r.items() if k not in timing}
                     for r in rows(off.run_dir)]
    # every module's train/eval flag is as it was (the pass puts them back)
    for name, module in on.method.modules.items():
        flags = [m.training for m in module.modules()]
        assert flags == [m.training for m in off.method.modules[name].modules()], name


def test_a_measurement_leaves_the_global_rng_and_modes_as_they_were(runs):
    from jepa_core.runtime import live_eval

    (run, _), _ = runs
    live = live_eval.start(run, Console(file=io.StringIO()))
    module = run.method.modules[run.method.eval_module]
    module.train()
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    row = live.measure(run)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(m.training for m in module.modules())
    last = [r for r in rows(run.run_dir) if "live_knn" in r][-1]
    assert row["live_knn"] == last["live_knn"]  # the same weights, the same seeded images


def test_the_last_row_is_jepa_evals_knn_on_the_same_images(runs):
    from jepa_core.commands.evaluate import evaluate

    (run, _), _ = runs
    d = tiny(run.recipe.out_dir, live=True)
    d["eval"].update(max_images=LIVE["live_images"], protocols=[{"name": "knn", "k": 20}])
    registry = make_plugin_manager()
    recipe = recipe_from_dict(d, registry, "tiny")
    results = evaluate(recipe, registry, run.target_state, torch.device("cpu"), baseline=False)
    last = [r for r in rows(run.run_dir) if "live_knn" in r][-1]
    [knn] = [r for r in results["results"] if r["protocol"] == "knn"]
    assert knn["features"] == "trained target encoder"
    assert last["live_knn"] == pytest.approx(knn["accuracy"]["test"], abs=1e-6)


@pytest.mark.slow
def test_a_resumed_run_logs_the_same_rows_once(runs, tmp_path):
    (whole, _), _ = runs
    d = tiny(tmp_path, live=True, max_steps=3)
    first, _ = trained(d)
    assert [r["step"] for r in rows(first.run_dir) if "live_knn" in r] == [2, 3]  # 3: the last
    (first.run_dir / "checkpoints" / ckpt.checkpoint_name(3)).unlink()  # resume from step 2
    from jepa_core.runtime.launch import find_resume
    from jepa_core.runtime.rundir import drop_rows_after

    registry = make_plugin_manager()
    recipe = recipe_from_dict(tiny(tmp_path, live=True), registry, "tiny")
    state = find_resume(recipe, "auto", force=False)
    assert state["step"] == 2
    drop_rows_after(recipe.run_dir / "metrics.jsonl", 2)
    train(recipe, registry, resume=state, console=Console(file=io.StringIO()))
    mine = [(r["step"], r["live_knn"]) for r in rows(recipe.run_dir) if "live_knn" in r]
    assert mine == [(r["step"], r["live_knn"]) for r in rows(whole.run_dir) if "live_knn" in r]


def test_an_unlabelled_source_skips_it_with_one_note(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(20):
        pixels = torch.randint(0, 256, (24, 24, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / f"{i:02d}.png")
    d = tiny(tmp_path / "runs", live=True, max_steps=4, global_batch_size=4)
    d["data"] = {"name": "image_folder", "root": str(root)}
    run, console = trained(d)
    text = " ".join(console.split())
    assert text.count("the in-training kNN is skipped") == 1
    assert "has no labels" in text
    assert not [r for r in rows(run.run_dir) if "live_knn" in r]


@pytest.mark.parametrize("keys, where", [
    ({"eval": {"every_checkpoints": 2}}, "$.eval.every_checkpoints"),  # no checkpoint_every
    ({"eval": {"every_checkpoints": 0}, "train": {"checkpoint_every": 2}},
     "$.eval.every_checkpoints"),
    ({"eval": {"every_checkpoints": 1, "live_images": 1}, "train": {"checkpoint_every": 2}},
     "$.eval.live_images"),
])
def test_bad_live_eval_settings_are_refused_by_path(tiny_dict, registry, keys, where):
    d = copy.deepcopy(tiny_dict)
    for section, values in keys.items():
        d[section].update(values)
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(d, registry, "tiny")
    assert [p for p, _ in info.value.problems] == [where]
    if "checkpoint_every" not in keys.get("train", {}):
        assert "train.checkpoint_every=N" in str(info.value)


@pytest.mark.slow
def test_under_two_process_ddp_only_the_main_process_measures(tmp_path):
    """--nproc 2: one row per due checkpoint (not one per rank), the same weights as without."""
    import yaml
    from test_distributed import _final, _jepa

    dirs = {}
    for name, live in (("on", True), ("off", False)):
        d = tiny(tmp_path / name, live=live)
        d["train"]["device"] = "cpu"
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(d))
        out = _jepa("run", str(path), "--nproc", "2")
        dirs[name] = tmp_path / name / "tiny"
    assert [r["step"] for r in rows(dirs["on"]) if "live_knn" in r] == [2, 4]
    assert out.stdout.count("live kNN at step") == 0  # the run without it says nothing
    a, b = _final(dirs["on"]), _final(dirs["off"])
    for name in a["modules"]:
        for key, value in a["modules"][name].items():
            assert torch.equal(value, b["modules"][name][key]), (name, key)
