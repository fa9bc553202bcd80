"""`jepa eval RUN_A RUN_B ...`: eval.json files side by side, through the real command line;
the figures in the table are the files' figures, the recipe differences the recipes'."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import REPO, clean_env, flat, no_traceback

from jepa_core.commands.compare import compare, recipe_differences
from jepa_core.recipe import recipe_from_dict, recipe_to_yaml


def jepa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                          text=True, env=clean_env(), cwd=REPO, timeout=60)


def eval_json(run_dir: Path, knn: float, linear: float, rankme: float, k: int = 20,
              step: int = 100) -> dict:
    return {
        "format": 2,
        "source": {"run_dir": str(run_dir), "checkpoint": str(run_dir / "checkpoints" /
                                                              "step_000000100.pt"),
                   "step": step, "method": "ijepa", "module": "target_encoder"},
        "data": {"name": "digits", "train": {"split": "digits train", "images": 1437,
                                             "skipped": 0},
                 "test": {"split": "digits test", "images": 360, "skipped": 0}},
        "results": [
            {"protocol": "knn", "features": "trained target encoder", "feature_kind": "avgpool",
             "params": {"k": k, "temperature": 0.07}, "accuracy": {"test": knn}},
            {"protocol": "linear", "features": "random init", "feature_kind": "avgpool",
             "params": {"lr": 0.001, "weight_decay": 0.0005, "batchnorm": False},
             "accuracy": {"val": 0.9, "test": linear}},
            {"protocol": "rankme", "features": "raw pixels", "feature_kind": "pixels",
             "params": {}, "value": rankme},
        ]}


def make_run(root: Path, name: str, tiny_dict: dict, registry, overrides=(), **figures) -> Path:
    d = copy.deepcopy(tiny_dict)
    d["name"], d["out_dir"] = name, str(root)
    recipe = recipe_from_dict(d, registry, name, list(overrides))
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    (run_dir / "eval.json").write_text(json.dumps(eval_json(run_dir, **figures)))
    return run_dir


@pytest.fixture
def two_runs(tmp_path, tiny_dict, registry):
    a = make_run(tmp_path, "a", tiny_dict, registry, knn=0.7903, linear=0.88, rankme=41.2)
    b = make_run(tmp_path, "b", tiny_dict, registry, ["optim.lr=0.003", "train.epochs=4"],
                 knn=0.8125, linear=0.88, rankme=37.5, k=10)
    return a, b


def test_two_runs_side_by_side_with_the_files_figures_and_the_recipe_differences(two_runs):
    a, b = two_runs
    out = jepa("eval", str(a), str(b))
    assert out.returncode == 0, out.stderr
    no_traceback(out)
    text = out.stdout
    knn = next(line for line in text.splitlines() if "knn" in line)
    assert "79.0%" in knn and "81.2% *" in knn and knn.rstrip(" │").endswith("│ b")  # b: best
    linear = next(line for line in text.splitlines() if "linear" in line)
    assert linear.count("88.0%") == 2 and "*" not in linear  # a tie: nobody is best
    rankme = next(line for line in text.splitlines() if "rankme" in line)
    assert "41.2 *" in rankme and "37.5" in rankme  # a rank: higher is better
    assert "step 100" in text
    assert "optim.lr: 0.001 | 0.003" in text
    assert "train.epochs: 2.0 | 4.0" in text
    assert "name:" not in text and "out_dir" not in text  # differ always, say nothing
    assert "k: 20 | 10" in flat(text)  # the kNN ran with other settings: said
    assert ("knn on the avgpool features of the trained target encoder: params that differ "
            "(a | b): k: 20 | 10") in flat(text)


def test_json_holds_the_files_figures(two_runs):
    a, b = two_runs
    out = jepa("eval", str(a / "eval.json"), str(b), "--json")  # a file or a run directory
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    rows = {(r["protocol"], r["features"]): r for r in data["rows"]}
    knn = rows[("knn", "trained target encoder")]
    assert knn["values"] == {str(a / "eval.json"): 0.7903, str(b): 0.8125}
    assert knn["best"] == [str(b)] and knn["split"] == "test"
    assert rows[("rankme", "raw pixels")]["measure"] == "value"
    assert rows[("rankme", "raw pixels")]["values"][str(b)] == 37.5
    assert data["recipe_differences"]["optim.lr"] == {str(a / "eval.json"): 0.001,
                                                      str(b): 0.003}
    assert [r["step"] for r in data["runs"]] == [100, 100]


def test_a_run_without_eval_json_says_to_evaluate_it_first(two_runs, tmp_path):
    a, _ = two_runs
    bare = tmp_path / "bare"
    bare.mkdir()
    out = jepa("eval", str(a), str(bare))
    assert out.returncode == 2
    no_traceback(out)
    text = flat(out.stderr)
    assert f"run {bare} has no eval.json" in text and f"jepa eval {bare}" in text
    missing = jepa("eval", str(a), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "neither a run directory" in flat(missing.stderr)


def test_paths_longer_than_the_file_system_allows_are_handled(two_runs, tmp_path):
    """An eval.json naming a run_dir and checkpoint of 300 characters (a copied file, its run
    elsewhere): compared without them; a run named on the command line that long: exit 2."""
    a, _ = two_runs
    copied = tmp_path / "copied"
    copied.mkdir()
    long = tmp_path / ("x" * 300)
    (copied / "eval.json").write_text(json.dumps(eval_json(long, knn=0.5, linear=0.5,
                                                           rankme=1.0)))
    out = jepa("eval", str(a), str(copied))
    no_traceback(out)
    assert out.returncode == 0, out.stderr
    assert "recipe of" in flat(out.stdout) and "not compared" in flat(out.stdout)
    refused = jepa("eval", str(a), str(long))
    no_traceback(refused)
    assert refused.returncode == 2
    assert "cannot be looked up (File name too long)" in flat(refused.stderr)
    assert "at most 255 bytes" in flat(refused.stderr)


def test_overrides_and_no_baseline_are_refused_for_a_comparison(two_runs):
    a, b = two_runs
    for extra in (["data.name=digits"], ["--no-baseline"]):
        out = jepa("eval", str(a), str(b), *extra)
        assert out.returncode == 2, out.stdout
        assert "evaluates nothing" in flat(out.stderr)
        no_traceback(out)


def test_format_1_and_a_recipe_from_the_checkpoint(tmp_path, tiny_dict, registry):
    """An eval.json from before format 2, and a run whose recipe is only in its checkpoint."""
    import torch

    old = tmp_path / "old"
    old.mkdir()
    (old / "recipe.yaml").write_text(recipe_to_yaml(recipe_from_dict(tiny_dict, registry)))
    (old / "eval.json").write_text(json.dumps({
        "trained target encoder": {"linear_probe": 0.944, "knn": 0.794},
        "raw pixels": {"linear_probe": 0.955, "knn": 0.955},
        "data": {"train": {"split": "s", "images": 1, "skipped": 0}}}))
    new = tmp_path / "new"
    (new / "checkpoints").mkdir(parents=True)
    d = copy.deepcopy(tiny_dict)
    d["seed"] = 3
    state = {"format": "jepa-checkpoint", "version": 2, "step": 100, "modules": {"e": {}},
             "eval_module": "e", "recipe": d}
    torch.save(state, new / "checkpoints" / "step_000000100.pt")
    (new / "eval.json").write_text(json.dumps(eval_json(new, knn=0.8, linear=0.9, rankme=3)))
    result = compare([str(old), str(new)]).to_json()
    rows = {(r["protocol"], r["features"]): r for r in result["rows"]}
    assert rows[("knn", "trained target encoder")]["values"] == {str(old): 0.794,
                                                                 str(new): 0.8}
    assert rows[("linear", "raw pixels")]["values"] == {str(old): 0.955, str(new): None}
    assert rows[("linear", "raw pixels")]["feature_kind"] == "pixels"
    assert result["recipe_differences"]["seed"] == {str(old): 0, str(new): 3}
    assert result["runs"][1]["recipe"].startswith("recipe saved in")


def test_an_unreadable_eval_json_names_the_file(tmp_path, two_runs):
    a, _ = two_runs
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "eval.json").write_text('{"format": 2, "results": [{"protocol": "knn"}]}')
    out = jepa("eval", str(a), str(bad))
    assert out.returncode == 2
    assert f"{bad / 'eval.json'}: results[0] (knn) has neither" in flat(out.stderr)


def test_the_comparison_needs_no_torch(two_runs):
    a, b = two_runs
    code = ("import sys; from jepa_core.commands.cli import main; "
            f"rc = main(['eval', {str(a)!r}, {str(b)!r}, '--json']); "
            "print('torch' in sys.modules, 'matplotlib' in sys.modules, rc, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=clean_env(), cwd=REPO, timeout=60)
    assert out.stderr.split()[-3:] == ["False", "False", "0"], out.stderr


values = st.one_of(st.integers(-3, 3), st.floats(allow_nan=False, width=32),
                   st.sampled_from(["adamw", "vit", ""]), st.none(), st.booleans())
keys = st.sampled_from(["lr", "seed", "name", "epochs", "model", "k"])
trees = st.recursive(values, lambda inner: st.dictionaries(keys, inner, max_size=3),
                     max_leaves=8)
recipes = st.dictionaries(keys, trees, max_size=4)


@settings(max_examples=150, deadline=None)
@given(st.lists(recipes, min_size=2, max_size=4))
def test_recipe_differences_are_exactly_the_keys_whose_values_differ(found):
    from jepa_core.commands.compare import flatten

    differences = recipe_differences(found)
    flat_recipes = [flatten(r) for r in found]
    assert recipe_differences([found[0], copy.deepcopy(found[0])]) == {}
    for key in set().union(*flat_recipes):
        seen = [f.get(key, "(unset)") for f in flat_recipes]
        differs = any(v != seen[0] for v in seen)
        if key == "name":
            assert key not in differences
        else:
            assert (key in differences) == differs, key
            if differs:
                assert differences[key] == seen


def test_a_params_note_names_its_row_and_that_a_grid_may_have_picked_it():
    """Before: "linear on trained target encoder ran with other settings: weight_decay:
    0.0005 | 0.0": which kind's row, and it was the grid's pick, not a setting."""
    from jepa_core.commands.compare import Row, _params_note

    row = Row(("linear", "last4", "trained target encoder"), "accuracy", "test", (0.9, 0.8),
              ({"lr": 0.01, "weight_decay": 0.0005}, {"lr": 0.01, "weight_decay": 0.0}), ())
    note = _params_note(row, ["run_a", "run_b"])
    assert note is not None
    assert note.startswith("linear on the last4 features of the trained target encoder: "
                           "params that differ (run_a | run_b): weight_decay: 0.0005 | 0.0")
    assert "the head a grid chose" in note and "lr" not in note.split("(")[1]
