"""Official I-JEPA checkpoints in (round trip, partial loads, bad files), timm weights out."""

from __future__ import annotations

import copy
import io
import json
import os
import stat
import subprocess
import sys

import attrs
import numpy as np
import pytest
import timm
import torch
from rich.console import Console
from test_rundir import read_only

from jepa_core.commands.evaluate import eval_command
from jepa_core.commands.interop import (
    export_timm,
    import_official,
    print_report,
    to_official_layout,
)
from jepa_core.errors import ConfigError, RunError
from jepa_core.hookspecs import hookimpl
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.build import build_models


def _images(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def source(tiny_dict, registry):
    """Models of another seed than the tiny recipe's (so an import cannot pass by being the
    recipe's own init), with a target encoder that differs from the context encoder."""
    d = copy.deepcopy(tiny_dict)
    d["seed"] = 123
    encoder, predictor = build_models(recipe_from_dict(d, registry, "source"), registry)
    target = copy.deepcopy(encoder)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in target.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return {"encoder": encoder.eval(), "predictor": predictor.eval(),
            "target_encoder": target.eval()}


def _official_file(tmp_path, models, epoch=300, edit=None):
    state = {name: m.state_dict() for name, m in models.items()}
    official = to_official_layout({**state, "epoch": epoch})
    if edit:
        edit(official)
    path = tmp_path / "IN1K-vit.tiny-300e.pth.tar"
    torch.save(official, path)
    return path


def _predict(predictor, encoder, images):
    ctx = torch.arange(0, 16, 2).repeat(images.shape[0], 1)  # [B, 8]
    tgt = torch.tensor([[1, 3, 5], [9, 11, 13]]).repeat(images.shape[0], 1, 1)  # [B, 2, 3]
    return predictor(encoder(images, ctx), ctx, tgt)


@torch.no_grad()
def test_official_round_trip(tmp_path, source, tiny_recipe, registry):
    path = _official_file(tmp_path, source)
    official = torch.load(path, weights_only=True)
    assert all(k.startswith("module.") for m in ("encoder", "predictor", "target_encoder")
               for k in official[m])
    assert "module.predictor_blocks.0.attn.qkv.weight" in official["predictor"]
    out = tmp_path / "imported.pt"
    report = import_official(path, tiny_recipe, registry, out)
    assert report.complete and report.epoch == 300
    print_report(report, Console(file=io.StringIO()))

    state = ckpt.load(out)
    assert (state["step"], state["epoch"], state["optimizer"]) == (0, 300, None)
    assert state["imported_from"]["epoch"] == 300 and state["imported_from"]["complete"]
    assert state["recipe"]["seed"] == 0
    fresh_encoder, fresh_predictor = build_models(tiny_recipe, registry)
    images = _images()
    assert not torch.equal(fresh_encoder.eval()(images), source["encoder"](images))
    target = copy.deepcopy(fresh_encoder)
    for name, model in [("encoder", fresh_encoder), ("target_encoder", target)]:
        model.load_state_dict(state["modules"][name])
        assert torch.equal(model.eval()(images), source[name](images)), name
    fresh_predictor.load_state_dict(state["modules"]["predictor"])
    fresh_encoder.load_state_dict(state["modules"]["encoder"])
    assert torch.equal(_predict(fresh_predictor.eval(), fresh_encoder, images),
                       _predict(source["predictor"], source["encoder"], images))


def _drop_block(official):
    for key in [k for k in official["predictor"] if k.startswith("module.predictor_blocks.0.mlp")]:
        del official["predictor"][key]
    official["encoder"]["module.cls_token"] = torch.zeros(1, 1, 32)


def test_partial_load_refused_unless_allowed(tmp_path, source, tiny_recipe, registry):
    path = _official_file(tmp_path, source, edit=_drop_block)
    out = tmp_path / "imported.pt"
    with pytest.raises(ConfigError) as err:
        import_official(path, tiny_recipe, registry, out)
    msg = str(err.value)
    assert "predictor: 4 missing (predictor_blocks.0.mlp.fc1.weight" in msg
    assert "encoder: 1 unexpected (cls_token)" in msg and "--allow-partial" in msg
    assert not out.exists()

    report = import_official(path, tiny_recipe, registry, out, allow_partial=True)
    assert not report.complete
    text = io.StringIO()
    print_report(report, Console(file=text, width=200))
    assert "partial import" in text.getvalue()
    state = ckpt.load(out)
    assert not state["imported_from"]["complete"]
    not_imported = state["imported_from"]["not_imported"]
    assert "predictor_blocks.0.mlp.fc1.weight" in not_imported["predictor"]
    torch.testing.assert_close(state["modules"]["predictor"]["predictor_embed.weight"],
                               source["predictor"].state_dict()["predictor_embed.weight"])


def test_shape_mismatch_is_named(tmp_path, source, tiny_dict, registry):
    path = _official_file(tmp_path, source)
    tiny_dict["predictor"]["embed_dim"] = 24
    recipe = recipe_from_dict(tiny_dict, registry, "wider predictor")
    with pytest.raises(ConfigError, match=r"predictor: \d+ with other shapes \(mask_token "
                                          r"\[1, 1, 16\] in the file vs \[1, 1, 24\]"):
        import_official(path, recipe, registry, tmp_path / "out.pt")


def test_bad_files_are_explained(tmp_path, tiny_recipe, registry, source):
    out = tmp_path / "out.pt"
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(RunError, match="cannot be read by torch.load"):
        import_official(text, tiny_recipe, registry, out)
    with pytest.raises(RunError, match="does not exist"):
        import_official(tmp_path / "missing.pth", tiny_recipe, registry, out)
    bare = tmp_path / "bare.pth"
    torch.save(source["encoder"].state_dict(), bare)
    with pytest.raises(RunError, match="is not an official I-JEPA or V-JEPA checkpoint"):
        import_official(bare, tiny_recipe, registry, out)
    pickled = tmp_path / "numpy_epoch.pth"
    torch.save({**to_official_layout({m: {} for m in ("encoder", "predictor", "target_encoder")}),
                "epoch": np.int64(3)}, pickled)
    with pytest.raises(RunError, match=r"weights_only=False\).*re-save just its tensors"):
        import_official(pickled, tiny_recipe, registry, out)
    good = _official_file(tmp_path, source)
    import_official(good, tiny_recipe, registry, out)
    with pytest.raises(RunError, match="already a jepa checkpoint"):
        import_official(out, tiny_recipe, registry, tmp_path / "again.pt")
    with pytest.raises(ConfigError, match="is the file being imported"):
        import_official(good, tiny_recipe, registry, good)
    assert not (tmp_path / "again.pt").exists()


@pytest.fixture
def imported(tmp_path, source, tiny_recipe, registry):
    out = tmp_path / "imported.pt"
    import_official(_official_file(tmp_path, source), tiny_recipe, registry, out)
    return out


@pytest.mark.parametrize("which", ["target_encoder", "encoder"])
@torch.no_grad()
def test_export_loads_in_timm_with_identical_features(tmp_path, imported, source, registry,
                                                      which):
    out = tmp_path / "export" / "tiny.safetensors"
    info = export_timm(imported, out, which=which, registry=registry)
    assert json.loads(out.with_suffix(".json").read_text()) == info
    model = timm.create_model(info["model_name"], pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out)), **info["kwargs"])
    model.eval()
    ours = source[which]
    assert set(model.state_dict()) == set(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    images = _images(4, seed=1)
    assert torch.equal(model(images), ours(images).mean(dim=1))
    assert model(images).shape == (4, 32)


@torch.no_grad()
def test_the_usage_hint_is_runnable_with_the_real_arguments(tmp_path, imported, registry):
    out = tmp_path / "tiny.safetensors"
    info = export_timm(imported, out, registry=registry)
    assert "**kwargs" not in info["usage"]
    for key, value in info["kwargs"].items():
        assert f"{key}={value!r}" in info["usage"]
    scope: dict = {}
    exec(info["usage"], scope)  # the printed line, as a user would paste it
    expected = timm.create_model(info["model_name"], pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(out)), **info["kwargs"])
    images = _images(2, seed=3)
    assert torch.equal(scope["model"].eval()(images), expected.eval()(images))


def test_export_refuses_what_timm_cannot_load(tmp_path, imported, registry):
    with pytest.raises(ConfigError, match="must end in .safetensors"):
        export_timm(imported, tmp_path / "tiny.pt", registry=registry)
    with pytest.raises(ConfigError, match="holds the modules encoder, predictor, "
                                          "target_encoder; choose one"):
        export_timm(imported, tmp_path / "tiny.safetensors", which="projector", registry=registry)
    with pytest.raises(ConfigError, match="does not fit timm model"):
        export_timm(imported, tmp_path / "tiny.safetensors", which="predictor", registry=registry)

    @attrs.frozen
    class OtherConfig:
        width: int = 8

    class OtherNet(torch.nn.Module):  # an encoder, but not a timm model
        embed_dim, num_heads, image_size, patch_grid = 8, 1, (32, 32), (4, 4)

        def forward(self, images, keep=None, keep_valid=None):
            return images

    class OtherEncoders:
        @hookimpl
        def register_encoders(self, register):
            register("other_encoder", OtherConfig, lambda cfg: OtherNet())

    other = make_plugin_manager(objects=[("other", OtherEncoders())])
    state = ckpt.load(imported)
    state["recipe"]["encoder"] = {"name": "other_encoder", "width": 8}
    ckpt.save_atomic(state, tmp_path / "other.pt")
    with pytest.raises(ConfigError,
                       match=r"'other_encoder' \(plugin 'other'\) names no timm model"):
        export_timm(tmp_path / "other.pt", tmp_path / "x.safetensors", registry=other)
    assert not (tmp_path / "x.safetensors").exists()


def test_eval_runs_on_an_imported_checkpoint(imported, registry):
    out = io.StringIO()
    knn = ["eval.max_images=16", "eval.protocols=[{name: knn, k: 5}]"]  # k <= 16 images
    code = eval_command(str(imported), registry, knn,
                        baseline=False, console=Console(file=out, width=200))
    assert code == 0
    assert "step 0" in out.getvalue() and "trained target encoder" in out.getvalue()


def test_exported_files_get_the_usual_mode(tmp_path, imported, registry):
    """safetensors writes through a 0600 temp file; the export must not keep that mode."""
    out = tmp_path / "tiny.safetensors"
    mask = os.umask(0o022)
    try:
        export_timm(imported, out, registry=registry)
    finally:
        os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE(out.with_suffix(".json").stat().st_mode) == 0o644


def test_export_into_a_read_only_folder_is_a_clear_error(tmp_path, imported):
    folder = tmp_path / "ro"
    with read_only(folder):
        result = subprocess.run([sys.executable, "-m", "jepa_core", "export", str(imported),
                                 "--out", str(folder / "tiny.safetensors")],
                                capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"),
                                timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"export folder {folder} cannot be written" in " ".join(result.stderr.split())
