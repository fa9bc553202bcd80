"""Methods as plugins: every registered method trains through the one generic loop, owns its
modules by name, logs its terms, resumes exactly; recipes with a wrong method are refused."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import METHODS, tiny_method

from jepa_core.errors import RecipeError
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.launch import find_resume
from jepa_core.runtime.trainer import train

TERMS = {"ijepa": (), "cjepa": ("prediction", "variance", "covariance"),
         "ijepa_sigreg": ("prediction", "sigreg"), "lejepa": ("sigreg", "invariance"),
         "vjepa": ("prediction_masks",)}


def _run(d, resume=None):
    registry = make_plugin_manager()
    return train(recipe_from_dict(d, registry, "tiny"), registry, resume=resume)


def test_every_registered_method_is_covered(registry):
    assert sorted(registry.components["method"]) == sorted(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_logs_its_terms_and_checkpoints_its_modules(tiny_dict, method):
    tiny_dict["train"]["max_steps"] = 2
    run = _run(tiny_method(tiny_dict, method))
    m = run.method
    assert set(m.trainable) <= set(m.modules) and m.eval_module in m.modules
    for term in ("loss", *TERMS[method]):
        assert math.isfinite(run.metrics[term]) and run.metrics[term] >= 0, term
    assert "effective_rank" in run.metrics
    state = ckpt.load(ckpt.list_checkpoints(run.run_dir / "checkpoints")[-1])
    assert sorted(state["modules"]) == sorted(m.modules)
    assert state["method"] == method and state["eval_module"] == m.eval_module
    frozen = set(m.modules) - set(m.trainable)  # never handed to the optimizer
    trained = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    for name in frozen:
        assert not any(id(p) in trained for p in m.modules[name].parameters()), name


def test_lejepa_views_are_distinct_crops_of_one_image_and_the_first_is_the_plain_one(tiny_dict):
    from jepa_core.runtime.data import batch_layout, train_loader

    registry = make_plugin_manager()
    recipe = recipe_from_dict(tiny_dict, registry, "tiny")
    from jepa_core.runtime.build import build_data

    source, masker = build_data(recipe, registry)
    layout = batch_layout(8, 1)

    def first(views):
        loader = train_loader(source, masker, layout, seed=0, steps_per_epoch=8, start_step=0,
                              stop_step=1, view_names=views)
        return next(iter(loader))

    one, three = first(("image",)), first(("view0", "view1", "view2"))
    assert torch.equal(one.images, three.views["view0"])
    assert not torch.equal(three.views["view0"], three.views["view1"])
    assert not torch.equal(three.views["view1"], three.views["view2"])


def test_lejepa_kill_and_resume_is_bit_identical(tiny_dict, tmp_path):
    d = tiny_method(tiny_dict, "lejepa")
    d["train"]["max_steps"] = 4
    straight = _run(copy.deepcopy(d))
    part = copy.deepcopy(d)
    part["out_dir"] = str(tmp_path / "part")
    part["train"]["max_steps"] = 2
    _run(copy.deepcopy(part))
    part["train"]["max_steps"] = 4
    registry = make_plugin_manager()
    state = find_resume(recipe_from_dict(part, registry, "tiny"), "auto", force=False)
    resumed = _run(part, resume=state)
    assert resumed.step == 4
    for name, module in straight.method.modules.items():
        for k, v in module.state_dict().items():
            assert torch.equal(v, resumed.method.modules[name].state_dict()[k]), (name, k)


def test_a_checkpoint_of_another_method_is_refused_on_resume(tiny_dict):
    tiny_dict["train"]["max_steps"] = 1
    run = _run(copy.deepcopy(tiny_dict))
    state = ckpt.load(ckpt.list_checkpoints(run.run_dir / "checkpoints")[-1])
    other = tiny_method(copy.deepcopy(tiny_dict), "lejepa")
    other["train"]["max_steps"] = 2
    with pytest.raises(Exception, match="written by another method"):
        _run(other, resume=state)


# -- recipes with a wrong method -------------------------------------------------------------
def _problems(d, registry):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(d, registry, "r")
    return info.value.problems


def test_unknown_method_is_named_with_the_nearest(tiny_dict, registry):
    tiny_dict["method"] = {"name": "lejepaa"}
    [(path, message)] = _problems(tiny_dict, registry)
    assert path == "$.method.name" and "Did you mean 'lejepa'?" in message


def test_misspelt_method_key(tiny_dict, registry):
    tiny_method(tiny_dict, "lejepa", lamm=0.1)
    [(path, message)] = _problems(tiny_dict, registry)
    assert path == "$.method.lamm" and "did you mean 'lam'?" in message


def test_method_without_the_component_it_needs_and_with_one_it_never_uses(tiny_dict, registry):
    tiny_method(tiny_dict, "ijepa_sigreg")
    del tiny_dict["predictor"]
    tiny_dict["target_updater"] = {"name": "ema"}
    assert _problems(tiny_dict, registry) == [
        ("$.predictor", "method 'ijepa_sigreg' needs a predictor section (`predictor: "
                        "{name: ...}`); add one, see `jepa plugins` for the registered ones"),
        ("$.target_updater", "method 'ijepa_sigreg' does not use a target_updater; remove "
                             "this section (or choose a method that uses it)")]


def test_switching_method_on_the_command_line_with_null_sections(registry):
    from jepa_core.recipe import load_recipe

    recipe = load_recipe("recipes/quickstart.yaml", registry, [
        "method={name: lejepa}", "predictor=null", "masker=null", "target_updater=null",
        "loss=null"])
    assert recipe.method.name == "lejepa"
    assert (recipe.predictor, recipe.masker, recipe.target_updater, recipe.loss) == (None,) * 4
    assert recipe.encoder.kind == "encoder" and recipe.data.kind == "data_source"


def test_cli_refuses_a_broken_method_recipe_with_exit_2(tiny_dict, tmp_path):
    tiny_method(tiny_dict, "lejepa", num_views=1)
    tiny_dict["masker"] = {"name": "multiblock"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_dict))
    out = subprocess.run([sys.executable, "-m", "jepa_core", "check", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "$.method.num_views: must be >= 2 (got 1)" in out.stderr
    assert "$.masker: method 'lejepa' does not use a masker" in out.stderr


# --- LeJEPA's projector ---------------------------------------------------------------------

def _quickstart_lejepa_start(overrides=()):
    """The quickstart LeJEPA method as built for step 0 and the first batch of its real data
    pipeline (64 digits × 4 views)."""
    from jepa_core.recipe import load_recipe
    from jepa_core.runtime.build import build_components
    from jepa_core.runtime.data import batch_layout, train_loader

    registry = make_plugin_manager()
    recipe = load_recipe("recipes/quickstart_lejepa.yaml", registry, list(overrides))
    parts = build_components(recipe, registry)
    loader = train_loader(parts.source, None, batch_layout(64, 1), seed=0,
                          steps_per_epoch=parts.steps_per_epoch, start_step=0, stop_step=1,
                          view_names=parts.method.views)
    return parts.method, next(iter(loader))


def test_lejepa_projector_spreads_distinct_images_at_init():
    """At init z must already differ between images (SIGReg wants std 1 per direction). The
    quickstart encoder's pooled features are a shared offset (the pooled positional
    embedding, norm ≈ 5.6) plus an image-dependent part of std ≈ 0.04; a per-sample
    LayerNorm projector passed that on as z std ≈ 0.02 across images (a collapsed start
    the run never left: its encoder ended below random init), batch statistics give ≈ 0.3."""
    method, batch = _quickstart_lejepa_start()
    with torch.no_grad():
        views = torch.cat([batch.views[name] for name in method.views])
        pooled = method.modules["encoder"](views).mean(dim=1)
        z = method.modules["projector"](pooled).reshape(len(method.views), 64, -1)
    assert z.std(dim=1).mean() > 0.1


def test_global_batch_norm_is_batch_norm_over_the_batch():
    from jepa_objectives.methods.lejepa import GlobalBatchNorm

    x = (torch.randn(40, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1)
    ours, torch_bn = GlobalBatchNorm(6), torch.nn.BatchNorm1d(6)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(a), torch_bn(b)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    (ya.square() * torch.arange(6)).sum().backward()
    (yb.square() * torch.arange(6)).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    ours.eval()  # no running averages: the current batch's statistics in eval too
    torch.testing.assert_close(ours(x), ya.detach(), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x.bfloat16()).dtype == torch.bfloat16
