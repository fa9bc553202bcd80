"""The vjepa method: one teacher pass, a context and predictor pass per mask set, L1 averaged
over the sets, the EMA teacher; with the image ViT and a two-set test masker."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import maskers_for_tests
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY

from jepa_core.errors import ConfigError
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.build import build_components
from jepa_core.runtime.data import batch_layout, train_loader
from jepa_core.runtime.trainer import train

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _registry():
    return make_plugin_manager(objects=[("twosets_plugin", maskers_for_tests)])


def _vjepa(d: dict) -> dict:
    d = copy.deepcopy(d)
    d["method"] = {"name": "vjepa"}
    d["masker"] = {"name": "twosets"}
    d["loss"] = {"name": "l1"}
    d["target_updater"] = {"name": "ema", "momentum": [0.998, 1.0]}
    return d


@pytest.fixture
def vjepa_dict(tiny_dict):
    return _vjepa(tiny_dict)


def _first_batch(recipe, registry, components):
    loader = train_loader(components.source, components.masker, batch_layout(8, 1), seed=0,
                          steps_per_epoch=components.steps_per_epoch, start_step=0,
                          stop_step=1)
    return next(iter(loader))


def test_the_loss_is_the_mean_over_sets_of_l1_to_layer_normed_teacher_tokens(vjepa_dict):
    registry = _registry()
    recipe = recipe_from_dict(vjepa_dict, registry, "tiny")
    components = build_components(recipe, registry)
    method, batch = components.method, _first_batch(recipe, registry, components)
    assert sorted(batch.masks) == ["long", "short"] and method.eval_module == "target_encoder"
    with torch.no_grad():  # the teacher starts equal to the encoder: train it apart first
        for p in method.modules["target_encoder"].parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    out = method.loss(method.modules, batch)
    m, x = method.modules, batch.images
    with torch.no_grad():
        h = m["target_encoder"](x)
        h = F.layer_norm(h, (h.shape[-1],))
        terms = {}
        for name, masks in batch.masks.items():
            tgt = masks.targets[:, 0]  # one block per sample
            want = torch.stack([h[b, tgt[b]] for b in range(len(x))])
            z = m["encoder"](x, masks.context)
            pred = m["predictor"](z, masks.context, masks.targets)[:, 0]
            terms[name] = (pred - want).abs().mean()
    for name, value in terms.items():
        torch.testing.assert_close(out.metrics[f"prediction_{name}"].detach(), value)
    torch.testing.assert_close(out.loss.detach(), (terms["short"] + terms["long"]) / 2)
    assert out.loss.requires_grad and out.features.shape == (8, 32)


class _Recording(torch.nn.Module):
    """A predictor with two mask tokens that records the mask_index it is called with."""

    num_mask_tokens = 2

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, *args, mask_index: int = 0, **kwargs):
        self.calls.append(mask_index)
        return self.inner(*args, **kwargs)


def test_each_set_gets_its_mask_token_when_the_predictor_has_several(vjepa_dict):
    registry = _registry()
    recipe = recipe_from_dict(vjepa_dict, registry, "tiny")
    components = build_components(recipe, registry)
    method, batch = components.method, _first_batch(recipe, registry, components)
    plain = method.loss(method.modules, batch)
    method.modules["predictor"] = _Recording(method.modules["predictor"])
    again = method.loss(method.modules, batch)
    assert method.modules["predictor"].calls == [0, 1]  # "short" then "long", the masker order
    torch.testing.assert_close(again.loss, plain.loss)


def test_after_step_moves_the_teacher_by_the_ema_of_its_schedule(vjepa_dict):
    registry = _registry()
    components = build_components(recipe_from_dict(vjepa_dict, registry, "tiny"), registry)
    method = components.method
    trained = [n for n, p in method.modules["encoder"].named_parameters() if p.requires_grad]
    with torch.no_grad():
        for n, p in method.modules["encoder"].named_parameters():
            p.add_(0.1 if n in trained else 0.0)
    online = dict(method.modules["encoder"].named_parameters())
    before = {n: p.detach().clone()
              for n, p in method.modules["target_encoder"].named_parameters()}
    step = 3
    m = method.target_updater.momentum(step)
    assert m == pytest.approx(0.998 + 0.002 * step / components.total_steps, abs=1e-6)
    method.after_step(step)
    after = dict(method.modules["target_encoder"].named_parameters())
    assert len(trained) > 10
    for n in trained:
        torch.testing.assert_close(after[n], m * before[n] + (1 - m) * online[n].detach())
    assert method.schedule_metrics(step) == {"momentum": m}


def test_a_seeded_run_is_deterministic(vjepa_dict):
    vjepa_dict["train"]["max_steps"] = 3

    def run(d):
        registry = _registry()
        return train(recipe_from_dict(copy.deepcopy(d), registry, "tiny"), registry)

    d2 = copy.deepcopy(vjepa_dict)
    d2["out_dir"] = vjepa_dict["out_dir"] + "2"
    a, b = run(vjepa_dict), run(d2)
    for key in ("loss", "prediction_short", "prediction_long"):
        assert a.metrics[key] == b.metrics[key], key
    for name, module in a.method.modules.items():
        other = b.method.modules[name].state_dict()
        for k, v in module.state_dict().items():
            assert torch.equal(v, other[k]), (name, k)


@pytest.mark.slow
def test_jepa_run_trains_vjepa_with_two_mask_sets(tmp_path):
    recipe = _vjepa(TINY)
    recipe["out_dir"] = str(tmp_path / "runs")
    recipe["train"]["max_steps"] = 3
    (tmp_path / "vjepa.yaml").write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items()
           if k not in ("JEPA_DISABLE_PLUGIN_AUTOLOAD", "JEPA_PLUGINS")}
    env.update(COLUMNS="250", PYTHONPATH=str(TESTS))
    done = subprocess.run([sys.executable, "-m", "jepa_core", "-p", "maskers_for_tests", "run",
                           str(tmp_path / "vjepa.yaml")], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = list((tmp_path / "runs").rglob("metrics.jsonl"))
    assert logs, list((tmp_path / "runs").rglob("*"))
    import json

    rows = [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "prediction_short" in r]
    assert len(steps) == 3 and all(r["loss"] > 0 for r in steps)
    assert all("prediction_long" in r for r in steps)


@pytest.mark.parametrize("tokens", [3, 4])
def test_mask_tokens_that_do_not_match_the_mask_sets_are_a_config_error(tokens, tmp_path):
    d = yaml.safe_load((REPO / "recipes" / "quickstart_video.yaml").read_text())
    d.update(out_dir=str(tmp_path))
    d["data"].update(num_train=16, num_test=8)
    registry = make_plugin_manager()
    d["predictor"]["num_mask_tokens"] = 1  # one token shared by both sets: fine
    build_components(recipe_from_dict(d, registry, "video"), registry)
    d["predictor"]["num_mask_tokens"] = tokens
    with pytest.raises(ConfigError, match=rf"num_mask_tokens is {tokens} but the masker "
                       r"'multiblock3d' draws 2 mask set\(s\) \(short, long\).*to 2"):
        build_components(recipe_from_dict(d, registry, "video"), registry)


def test_the_readme_video_command_trains_and_probes_against_its_baselines(tmp_path):
    """`jepa run recipes/quickstart_video.yaml --nproc 2`, cut to 4 steps and a few probe
    epochs: two gloo processes train, rank 0 probes the trained, random-init, single-frame
    and raw-pixel features with the recipe's protocols (attentive included), with the same
    numbers as a later `jepa eval` of the run."""
    import json

    env = {k: v for k, v in os.environ.items()
           if k not in ("JEPA_DISABLE_PLUGIN_AUTOLOAD", "JEPA_PLUGINS")}
    env["COLUMNS"] = "200"
    done = subprocess.run(
        [sys.executable, "-m", "jepa_core", "run", "recipes/quickstart_video.yaml", "--nproc",
         "2", f"out_dir={tmp_path}", "name=video", "train.max_steps=4", "eval.max_images=64",
         "data.num_test=64", "eval.protocols=[knn, {name: linear, epochs: 2}, "
         "{name: attentive, epochs: 2, lrs: [0.01]}]"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 process(es)" in done.stdout
    results = json.loads((tmp_path / "video" / "eval.json").read_text())["results"]
    rows = {(r["features"], r["protocol"], r.get("feature_kind")) for r in results}
    for features in ("trained target encoder", "random init", "single frame (target encoder)"):
        assert {(features, "attentive", "tokens"), (features, "linear", "last4"),
                (features, "knn", "pooled")} <= rows
    assert ("raw pixels", "attentive", "tokens") in rows
    # rank 0 probed on the launcher's threads: `jepa eval` of the run from this shell agrees
    first = json.loads((tmp_path / "video" / "eval.json").read_text())
    again = subprocess.run([sys.executable, "-m", "jepa_core", "eval", str(tmp_path / "video")],
                           capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / "video" / "eval.json").read_text())
    assert first["source"]["threads"] == second["source"]["threads"]
    assert second["results"] == results
