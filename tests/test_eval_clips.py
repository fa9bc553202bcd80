"""`jepa eval` on clips [C, T, H, W]: pixel and token features of any rank, and the
single-frame baseline, with a stand-in video encoder (a tubelet Conv3d) on moving digits."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
from conftest import TINY

from jepa_core.evaluation.features import first_frame_only, patch_tokens, pixel_extract
from jepa_core.evaluation.runner import PIXELS, RANDOM, SINGLE_FRAME, evaluate
from jepa_core.hookspecs import hookimpl
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.build import build_encoder


@attrs.frozen
class TubeletConfig:
    """A tubelet embedding and nothing else: clips [B, 3, 4, 16, 16] -> [B, 2*4*4, 16]."""

    embed_dim: int = 16


class Tubelets(torch.nn.Module):
    """Patches of 2 frames x 4 x 4 px, embedded by a Conv3d: a grid (2, 4, 4)."""

    def __init__(self, config: TubeletConfig):
        super().__init__()
        self.embed_dim, self.num_heads = config.embed_dim, 2
        self.image_size, self.patch_grid = (16, 16), (2, 4, 4)
        self.proj = torch.nn.Conv3d(3, config.embed_dim, (2, 4, 4), stride=(2, 4, 4))

    def forward(self, clips, keep=None, valid=None):
        assert clips.dim() == 5, clips.shape
        return self.proj(clips).flatten(2).transpose(1, 2)


class _Plugin:
    @hookimpl
    def register_encoders(self, register):
        register("tubelets", TubeletConfig, lambda config: Tubelets(config))


def test_patch_tokens_of_clips_are_tubelets_in_raster_order():
    clips = torch.randn(2, 3, 4, 8, 8)
    tokens = patch_tokens(clips, (2, 4, 4))
    assert tokens.shape == (2, 8, 3 * 2 * 4 * 4)
    # token (t, h, w) = (1, 0, 1) is index (1*2 + 0)*2 + 1 = 5
    assert torch.equal(tokens[:, 5], clips[:, :, 2:4, 0:4, 4:8].reshape(2, -1))
    images = torch.randn(2, 3, 8, 12)  # images: the unfold path, unchanged
    as_clip = patch_tokens(images[:, :, None].contiguous(), (1, 4, 4))
    assert torch.equal(patch_tokens(images, (4, 4)), as_clip)
    pooled = pixel_extract(("pooled",), (2, 4, 4))(clips)["pooled"]
    assert pooled.shape == (2, 3 * 4 * 8 * 8)


def test_the_single_frame_baseline_sees_the_first_frame_in_every_frame():
    seen = []

    def extract(clips):
        seen.append(clips)
        return {"pooled": clips.mean(dim=(2, 3, 4))}

    clips = torch.randn(2, 3, 4, 5, 5)
    first_frame_only(extract)(clips)
    assert all(torch.equal(seen[0][:, :, t], clips[:, :, 0]) for t in range(4))


@pytest.mark.parametrize("tokens", ["cache", "on_the_fly"])
def test_jepa_eval_runs_on_clips_with_all_baselines(tmp_path, tokens):
    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path / "runs")
    d["encoder"] = {"name": "tubelets"}
    d["data"] = {"name": "moving_digits", "num_frames": 4, "digit_size": 6, "num_train": 48,
                 "num_test": 24, "speed": [2.0, 2.0]}
    d["eval"] = {"after_train": False, "tokens": tokens, "batch_size": 16, "shard_size": 32,
                 "protocols": [{"name": "knn"}, {"name": "linear", "epochs": 2,
                                                 "features": ["pooled"]},
                               {"name": "attentive", "epochs": 1, "lrs": [1e-3]}]}
    registry = make_plugin_manager(objects=[("tubelets_plugin", _Plugin())])
    recipe = recipe_from_dict(d, registry, "clips")
    state = build_encoder(recipe, registry).state_dict()
    out = evaluate(recipe, registry, state, torch.device("cpu"), cache_root=tmp_path / "cache")
    single = f"{SINGLE_FRAME} (target encoder)"
    rows = {(r["features"], r["protocol"]) for r in out["results"]}
    for features in ("trained target encoder", RANDOM, PIXELS, single):
        assert (features, "knn") in rows and (features, "linear") in rows, features
        assert (features, "attentive") in rows, features
    assert out["data"]["train"]["images"] == 48 and out["data"]["test"]["images"] == 24
    assert "moving_digits test split" in out["data"]["test"]["split"]

