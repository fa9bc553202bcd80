"""The video encoder `vit_video`, the rank-agnostic `vit_predictor` and V-JEPA checkpoints."""

from __future__ import annotations

import copy
import hashlib

import attrs
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jepa_core.commands.interop import import_official, strip_key
from jepa_core.commands.plan import patch_dim
from jepa_core.errors import ConfigError
from jepa_core.interfaces import Encoder
from jepa_core.recipe import recipe_from_dict, recipe_to_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.build import build_models
from jepa_core.runtime.launch import recipe_differences
from jepa_video.configs import VideoViTConfig
from jepa_video.encoder import build_video_encoder
from jepa_vit.configs import PredictorConfig, ViTConfig
from jepa_vit.encoder import build_encoder
from jepa_vit.pos_embed import axis_widths_3d, sincos_1d, sincos_2d, sincos_3d, sincos_table
from jepa_vit.predictor import build_predictor

# The image predictor's parameters and outputs, recorded before the predictor took grids of
# any rank and several mask tokens (issue 11): images must keep every number.
PINNED_STATE = "e569e2f2b6eb34e61c3686cc151322d93ccefda67aa750a8fa24161c1dea70c2"
PINNED_SUM, PINNED_ABS_SUM = -0.4280942678451538, 15.287246704101562
PINNED_ROW = [-0.01387062668800354, -0.1133846864104271, 0.025827137753367424,
              0.0456177182495594]


def _image_models():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = build_encoder(ViTConfig(model="vit_tiny_patch16_224", img_size=32,
                                          patch_size=8, embed_dim=32, depth=1, num_heads=2))
        torch.manual_seed(1)
        predictor = build_predictor(PredictorConfig(embed_dim=16, depth=1, num_heads=2),
                                    encoder)
    return encoder, predictor


def _state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def test_image_predictor_numbers_unchanged():
    _, predictor = _image_models()
    assert _state_digest(predictor) == PINNED_STATE
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 5, 32, generator=g)
    ctx = torch.tensor([[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]])
    tgt = torch.tensor([[[10, 11], [12, 13]], [[14, 15], [0, 1]]])
    out = predictor(tokens, ctx, tgt)
    assert out.shape == (2, 2, 2, 32)
    assert out.sum().item() == pytest.approx(PINNED_SUM, rel=1e-5, abs=1e-6)
    assert out.abs().sum().item() == pytest.approx(PINNED_ABS_SUM, rel=1e-5)
    torch.testing.assert_close(out[0, 1, 0, :4], torch.tensor(PINNED_ROW))


# -- the video encoder ---------------------------------------------------------------------
TINY_VIDEO = VideoViTConfig(model="vit_tiny_patch16_224", img_size=32, patch_size=8,
                            num_frames=4, tubelet_size=2, embed_dim=48, depth=2, num_heads=2)
GRID = (2, 4, 4)  # (4 frames / 2, 32 px / 8, 32 px / 8)
N = 32


def _seeded(build, *args, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build(*args).eval()


@pytest.fixture(scope="module")
def video():
    return _seeded(build_video_encoder, TINY_VIDEO)


def _clips(n=2, seed=0):
    return torch.randn(n, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_video_encoder_is_registered_by_the_video_plugin(registry):
    spec = registry.get("encoder", "vit_video")
    assert spec.plugin == "video" and spec.config_class is VideoViTConfig
    encoder = spec.build(TINY_VIDEO)
    assert isinstance(encoder, Encoder)
    assert encoder.patch_grid == GRID and encoder.image_size == (32, 32)


@torch.no_grad()
def test_video_encoder_shapes_and_attributes(video):
    assert video.patch_grid == GRID and video.num_patches == N
    assert (video.embed_dim, video.num_heads, video.num_frames, video.tubelet_size) == (
        48, 2, 4, 2)
    assert video.uniform_power and video.supports_packing
    assert video(_clips()).shape == (2, N, 48)
    keep = torch.tensor([[0, 5, 31], [7, 2, 16]])
    assert video(_clips(), keep).shape == (2, 3, 48)
    assert video.pos_embed.shape == (1, N, 48) and not video.pos_embed.requires_grad
    torch.testing.assert_close(video.pos_embed[0], sincos_table(48, GRID, uniform_power=True))
    layers = video.layer_tokens(_clips(), 2)
    assert [t.shape for t in layers] == [(2, N, 48)] * 2
    torch.testing.assert_close(layers[-1], video(_clips()))


def test_video_encoder_rejects_clips_of_another_size(video):
    with pytest.raises(ValueError, match=r"\[B, 3, 4, 32, 32\]"):
        video(torch.zeros(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="num_frames"):
        video(torch.zeros(1, 3, 32, 32))


@torch.no_grad()
def test_tubelets_are_in_raster_order_over_t_h_w(video):
    """Token (t * 4 + h) * 4 + w is the Conv3d of frames 2t..2t+1, rows 8h.., columns 8w..,
    plus the position of (t, h, w)."""
    clips = _clips(1)
    tokens = video.embed(clips)[0]  # [N, D]
    weight, bias = video.patch_embed.proj.weight, video.patch_embed.proj.bias
    for t, h, w in [(0, 0, 0), (0, 1, 3), (1, 2, 0), (1, 3, 3)]:
        cube = clips[0, :, 2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8]
        index = (t * 4 + h) * 4 + w
        expected = (weight * cube).flatten(1).sum(1) + bias + video.pos_embed[0, index]
        torch.testing.assert_close(tokens[index], expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_keep_gathers_tokens_after_positions_are_added(video):
    """encoder(clips, keep) == the blocks on the full embedding (positions included) gathered
    at keep: positions travel with the tokens, whatever the order of keep."""
    clips = _clips()
    keep = torch.tensor([[31, 0, 9, 4, 17], [3, 30, 12, 8, 1]])
    embedded = video.embed(clips)
    gathered = torch.stack([embedded[b, keep[b]] for b in range(2)])
    expected = video.norm(video.run_blocks(video.norm_pre(gathered), None))
    torch.testing.assert_close(video(clips, keep), expected)


@settings(max_examples=8, deadline=None)
@given(st.permutations(list(range(6))), st.integers(0, 2**16))
@torch.no_grad()
def test_keep_order_permutes_outputs(video, order, seed):
    keep = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:6][None]
    clips = _clips(1, seed)
    order = torch.tensor(order)
    torch.testing.assert_close(video(clips, keep[:, order]), video(clips, keep)[:, order],
                               rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_padded_keep_positions_are_ignored_and_packing_matches(video):
    clips = _clips()
    short = torch.tensor([[2, 9, 20, 31], [5, 6, 7, 0]])
    # Row 0 padded with two repeats of a real index, row 1 with one: keep_valid marks them.
    keep = torch.tensor([[2, 9, 20, 31, 2, 2], [5, 6, 7, 0, 1, 5]])
    valid = torch.tensor([[True] * 4 + [False] * 2, [True] * 5 + [False]])
    padded = video(clips, keep, valid)
    torch.testing.assert_close(padded[0, :4], video(clips[:1], short[:1])[0], rtol=1e-4,
                               atol=1e-5)
    torch.testing.assert_close(padded[1, :5], video(clips[1:], keep[1:, :5])[0], rtol=1e-4,
                               atol=1e-5)
    packed = video(clips, keep, valid, pack=True)
    torch.testing.assert_close(packed[valid], padded[valid], rtol=1e-4, atol=1e-5)
    assert (packed[~valid] == 0).all()


def test_video_encoder_init_and_state_dict_names(video):
    state = video.state_dict()
    assert state["patch_embed.proj.weight"].shape == (48, 3, 2, 8, 8)
    assert {"pos_embed", "patch_embed.proj.bias", "norm.weight", "blocks.1.mlp.fc2.weight",
            "blocks.0.attn.qkv.weight"} <= set(state)
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        assert state[key].std().item() == pytest.approx(0.02, rel=0.15)
    for key in ("patch_embed.proj.bias", "blocks.0.attn.qkv.bias", "norm.bias"):
        assert (state[key] == 0).all()
    assert (state["norm.weight"] == 1).all()


@pytest.mark.parametrize("change, match", [
    (dict(num_frames=5), "tubelet_size"),
    (dict(img_size=36), "patch_size"),
    (dict(embed_dim=36, uniform_power=False), "divisible by 8"),
    (dict(model="vit_tiny_patch16_22"), "vit_tiny_patch16_224"),
])
def test_video_encoder_config_mistakes_are_config_errors(change, match):
    with pytest.raises(ConfigError, match=match):
        build_video_encoder(attrs.evolve(TINY_VIDEO, **change))


def test_vit_large_video_parameter_count_is_about_304m():
    """ViT-L/16 on 16 frames x 224 px: timm's ViT-L less its 2D patch embedding and its
    learned positions, plus the tubelet Conv3d (the 3D table is a frozen parameter)."""
    with torch.device("meta"):
        encoder = build_video_encoder(VideoViTConfig())
        vit = timm.create_model("vit_large_patch16_224", num_classes=0, class_token=False,
                                global_pool="avg")
    assert encoder.patch_grid == (8, 14, 14)
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    conv3d = 1024 * 3 * 2 * 16 * 16 + 1024
    conv2d = sum(p.numel() for p in vit.patch_embed.parameters())
    expected = sum(p.numel() for p in vit.parameters()) - conv2d - vit.pos_embed.numel() + conv3d
    assert trainable == expected
    assert 303e6 < trainable < 305e6
    assert encoder.pos_embed.numel() == 8 * 14 * 14 * 1024


# -- 3-D sin-cos ---------------------------------------------------------------------------
@pytest.mark.parametrize("dim, uniform, widths", [
    (1024, True, (342, 342, 340)),  # 2 * ceil(1024 / 6) = 342 each, cut to 1024
    (384, True, (128, 128, 128)),
    (48, False, (24, 12, 12)),
    (1024, False, (512, 256, 256)),
])
def test_sincos_3d_splits_channels_time_height_width(dim, uniform, widths):
    grid = (3, 4, 5)
    table = sincos_3d(dim, *grid, uniform_power=uniform)
    assert table.shape == (60, dim) and table.dtype == torch.float32
    assert torch.equal(table, sincos_3d(dim, *grid, uniform_power=uniform))  # deterministic
    full = axis_widths_3d(dim, uniform)
    assert full[:2] == widths[:2] and sum(full) >= dim
    t, h, w = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    start = 0
    for cut, width, coord in zip(widths, full, (t, h, w), strict=True):
        # each block of columns is the 1-D table of its axis alone: [time | height | width]
        axis = sincos_1d(width, coord.reshape(-1)).to(torch.float32)[:, :cut]
        torch.testing.assert_close(table[:, start:start + cut], axis)
        start += cut
    assert start == dim
    assert len(torch.unique(table, dim=0)) == 60  # every token its own position


def test_sincos_table_dispatches_on_rank():
    assert torch.equal(sincos_table(32, (4, 4)), sincos_2d(32, 4, 4))
    assert torch.equal(sincos_table(48, GRID, uniform_power=False),
                       sincos_3d(48, *GRID, uniform_power=False))
    with pytest.raises(ValueError, match="2-D and 3-D"):
        sincos_table(32, (2, 2, 2, 2))
    with pytest.raises(ValueError, match="divisible by 8"):
        sincos_3d(36, 2, 2, 2, uniform_power=False)


# -- the predictor on 3-D grids, with one mask token per mask set ---------------------------
VIDEO_PREDICTOR = PredictorConfig(embed_dim=24, depth=1, num_heads=2, num_mask_tokens=2)


@pytest.fixture(scope="module")
def video_predictor(video):
    return _seeded(build_predictor, VIDEO_PREDICTOR, video, seed=1)


def _masks():
    ctx = torch.tensor([[0, 3, 8, 17, 30], [1, 4, 9, 22, 31]])
    tgt = torch.tensor([[[5, 6, 21], [10, 11, 26]], [[2, 12, 18], [13, 14, 29]]])
    return ctx, tgt


def test_predictor_takes_the_video_grid_and_its_positions(video, video_predictor):
    assert video_predictor.patch_grid == GRID and video_predictor.num_patches == N
    assert video_predictor.uniform_power
    torch.testing.assert_close(video_predictor.predictor_pos_embed[0],
                               sincos_table(24, GRID, uniform_power=True))
    plain = build_video_encoder(attrs.evolve(TINY_VIDEO, uniform_power=False))
    predictor = build_predictor(attrs.evolve(VIDEO_PREDICTOR, num_mask_tokens=1), plain)
    torch.testing.assert_close(predictor.predictor_pos_embed[0],
                               sincos_3d(24, *GRID, uniform_power=False))
    with pytest.raises(ConfigError, match="divisible by 8"):
        build_predictor(attrs.evolve(VIDEO_PREDICTOR, embed_dim=36, num_heads=2), plain)


def test_predictor_mask_tokens_are_v_jepa_s(video_predictor):
    assert video_predictor.num_mask_tokens == 2
    state = video_predictor.state_dict()
    assert {"mask_tokens.0", "mask_tokens.1"} <= set(state) and "mask_token" not in state
    assert all((state[f"mask_tokens.{i}"] == 0).all() for i in range(2))  # zero-initialised
    assert state["mask_tokens.1"].shape == (1, 1, 24)
    _, image_predictor = _image_models()
    assert image_predictor.num_mask_tokens == 1 and "mask_token" in image_predictor.state_dict()


@torch.no_grad()
def test_mask_index_selects_the_mask_token(video, video_predictor):
    predictor = copy.deepcopy(video_predictor)
    g = torch.Generator().manual_seed(4)
    for token in predictor.mask_tokens:
        token.copy_(torch.randn(token.shape, generator=g))
    ctx, tgt = _masks()
    tokens = video(_clips(), ctx)
    first, second = (predictor(tokens, ctx, tgt, mask_index=i) for i in (0, 1))
    assert first.shape == (2, 2, 3, 48)
    assert not torch.allclose(first, second)
    swapped = copy.deepcopy(predictor)
    swapped.mask_tokens[0].copy_(predictor.mask_tokens[1])
    torch.testing.assert_close(swapped(tokens, ctx, tgt, mask_index=0), second)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, -1] = False
    padded = predictor(tokens, ctx, tgt, valid, mask_index=1)
    packed = predictor(tokens, ctx, tgt, valid, pack=True, mask_index=1)
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="num_mask_tokens"):
        predictor(tokens, ctx, tgt, mask_index=2)


def test_only_the_chosen_mask_token_gets_gradients(video, video_predictor):
    predictor = copy.deepcopy(video_predictor).train()
    ctx, tgt = _masks()
    with torch.no_grad():
        tokens = video(_clips(), ctx)
    predictor(tokens, ctx, tgt, mask_index=1).square().sum().backward()
    assert predictor.mask_tokens[0].grad is None or not predictor.mask_tokens[0].grad.any()
    assert predictor.mask_tokens[1].grad.abs().sum() > 0


# -- official V-JEPA checkpoints ------------------------------------------------------------
def _block(prefix: str, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """The official Block's keys (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2)."""
    shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,),
              "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
              "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
              "norm2.weight": (dim,), "norm2.bias": (dim,),
              "mlp.fc1.weight": (hidden, dim), "mlp.fc1.bias": (hidden,),
              "mlp.fc2.weight": (dim, hidden), "mlp.fc2.bias": (dim,)}
    return {prefix + k: v for k, v in shapes.items()}


def _official_vjepa_shapes() -> tuple[dict, dict]:
    """Key -> shape of the official V-JEPA encoder and predictor (src/models/
    vision_transformer.py, predictor.py, utils/patch_embed.py) at the tiny test sizes: written
    from the official names, not from our modules."""
    d, dp = 48, 24
    encoder = {"patch_embed.proj.weight": (d, 3, 2, 8, 8), "patch_embed.proj.bias": (d,),
               "pos_embed": (1, N, d), "norm.weight": (d,), "norm.bias": (d,)}
    for i in range(2):
        encoder |= _block(f"blocks.{i}.", d, 4 * d)
    predictor = {"predictor_embed.weight": (dp, d), "predictor_embed.bias": (dp,),
                 "mask_tokens.0": (1, 1, dp), "mask_tokens.1": (1, 1, dp),
                 "predictor_pos_embed": (1, N, dp), "predictor_norm.weight": (dp,),
                 "predictor_norm.bias": (dp,), "predictor_proj.weight": (d, dp),
                 "predictor_proj.bias": (d,)} | _block("predictor_blocks.0.", dp, 4 * dp)
    return encoder, predictor


def _official_vjepa_file(tmp_path, edit=None):
    """A checkpoint as V-JEPA's training code saves it: DDP + MultiMaskWrapper prefixes."""
    g = torch.Generator().manual_seed(11)
    encoder, predictor = _official_vjepa_shapes()

    def fill(shapes):
        return {"module.backbone." + k: 0.02 * torch.randn(s, generator=g)
                for k, s in shapes.items()}

    official = {"encoder": fill(encoder), "predictor": fill(predictor),
                "target_encoder": fill(encoder), "opt": {"state": {}, "param_groups": []},
                "scaler": None, "epoch": 300, "loss": 0.1, "batch_size": 24, "world_size": 128,
                "lr": 6.25e-4}
    if edit:
        edit(official)
    path = tmp_path / "vitl16.pth.tar"
    torch.save(official, path)
    return path, official


@pytest.fixture
def video_recipe(tiny_dict, registry):
    tiny_dict["encoder"] = {"name": "vit_video", **{k: getattr(TINY_VIDEO, k) for k in (
        "model", "img_size", "patch_size", "num_frames", "tubelet_size", "embed_dim", "depth",
        "num_heads")}}
    tiny_dict["predictor"] = {"name": "vit_predictor", "embed_dim": 24, "depth": 1,
                              "num_heads": 2, "num_mask_tokens": 2}
    return recipe_from_dict(tiny_dict, registry, "tiny video")


def test_a_v_jepa_checkpoint_imports_completely(tmp_path, video_recipe, registry):
    path, official = _official_vjepa_file(tmp_path)
    out = tmp_path / "imported.pt"
    report = import_official(path, video_recipe, registry, out)
    assert report.complete and report.epoch == 300
    state = ckpt.load(out)
    assert state["imported_from"]["format"] == "official-vjepa"
    for model in ("encoder", "predictor", "target_encoder"):
        ours = state["modules"][model]
        assert len(ours) == len(official[model])
        for key, value in official[model].items():
            assert torch.equal(ours[key.removeprefix("module.backbone.")], value), key
    encoder, predictor = build_models(video_recipe, registry)
    encoder.load_state_dict(state["modules"]["target_encoder"])
    predictor.load_state_dict(state["modules"]["predictor"])
    ctx, tgt = _masks()
    assert predictor(encoder(_clips(), ctx), ctx, tgt, mask_index=1).shape == (2, 2, 3, 48)


def _break(official):
    del official["predictor"]["module.backbone.mask_tokens.1"]
    official["encoder"]["module.backbone.patch_embed.proj.weight"] = torch.zeros(48, 3, 1, 8, 8)


def test_a_v_jepa_checkpoint_that_does_not_fit_is_reported(tmp_path, video_recipe, registry):
    path, _ = _official_vjepa_file(tmp_path, edit=_break)
    out = tmp_path / "imported.pt"
    with pytest.raises(ConfigError) as err:
        import_official(path, video_recipe, registry, out)
    msg = str(err.value)
    assert "predictor: 1 missing (mask_tokens.1)" in msg
    assert ("encoder: 1 with other shapes (patch_embed.proj.weight [48, 3, 1, 8, 8] in the "
            "file vs [48, 3, 2, 8, 8])") in msg
    assert "num_mask_tokens" in msg and not out.exists()
    report = import_official(path, video_recipe, registry, out, allow_partial=True)
    assert not report.complete
    assert ckpt.load(out)["imported_from"]["not_imported"]["predictor"] == ["mask_tokens.1"]


def test_prefixes_are_stripped_in_either_layout():
    assert strip_key("module.backbone.blocks.0.norm1.weight") == "blocks.0.norm1.weight"
    assert strip_key("backbone.mask_tokens.0") == "mask_tokens.0"
    assert strip_key("module.predictor_embed.bias") == "predictor_embed.bias"  # I-JEPA's
    assert strip_key("norm.weight") == "norm.weight"


# -- checkpoints from before num_mask_tokens existed ----------------------------------------
def test_a_field_added_at_its_default_is_no_recipe_difference(tiny_dict, registry):
    recipe = recipe_from_dict(tiny_dict, registry, "tiny")
    saved = recipe_to_dict(recipe)
    del saved["predictor"]["num_mask_tokens"]  # a checkpoint written before the field
    current = recipe_to_dict(recipe)
    assert recipe_differences(saved, current, recipe) == []
    assert recipe_differences(saved, current) == ["predictor.num_mask_tokens: '(unset)' → 1"]
    tiny_dict["predictor"]["num_mask_tokens"] = 2
    two = recipe_from_dict(tiny_dict, registry, "tiny")
    assert recipe_differences(saved, recipe_to_dict(two), two) == [
        "predictor.num_mask_tokens: '(unset)' → 2"]
    saved["predictor"]["gone"] = 1  # a key the saved recipe has and today's lacks stays one
    assert recipe_differences(saved, current, recipe) == ["predictor.gone: 1 → '(unset)'"]


def test_the_plan_counts_a_tubelet_s_pixels(video):
    assert patch_dim(video) == 3 * 2 * 8 * 8
    image, _ = _image_models()
    assert patch_dim(image) == 3 * 8 * 8


def test_math_attention_and_grad_checkpointing_give_the_same_numbers(video):
    clips, keep = _clips(), torch.tensor([[0, 5, 31, 12], [7, 2, 16, 3]])
    slow = _seeded(build_video_encoder, attrs.evolve(TINY_VIDEO, attention="math"))
    with torch.no_grad():
        torch.testing.assert_close(slow(clips, keep), video(clips, keep), rtol=1e-4, atol=1e-5)
    plain, recomputed = copy.deepcopy(video).train(), copy.deepcopy(video).train()
    recomputed.set_grad_checkpointing(True)
    for model in (plain, recomputed):
        model(clips, keep).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert plain.patch_embed.proj.weight.grad.abs().sum() > 0
    assert plain.pos_embed.grad is None  # the 3D table stays fixed


def _depth_scaled_pairs():
    from jepa_vit.configs import PredictorConfig, ViTConfig
    from jepa_vit.encoder import build_encoder
    from jepa_vit.predictor import build_predictor

    image = ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=2)
    predictor = PredictorConfig(embed_dim=24, depth=3, num_heads=2)
    return {
        "image encoder": lambda scaled: _seeded(build_encoder,
                                                attrs.evolve(image, depth_scaled_init=scaled)),
        "video encoder": lambda scaled: _seeded(
            build_video_encoder, attrs.evolve(TINY_VIDEO, depth=3, depth_scaled_init=scaled)),
        "predictor": lambda scaled: _seeded(
            build_predictor, attrs.evolve(predictor, depth_scaled_init=scaled),
            _seeded(build_video_encoder, TINY_VIDEO)),
    }


@pytest.mark.parametrize("part", ["image encoder", "video encoder", "predictor"])
def test_depth_scaled_init_divides_the_residual_projections_by_sqrt_2l(part):
    """The official models' fix_init_weight: block l's attn.proj and mlp.fc2 weights over
    sqrt(2 l) after the same draws; every other tensor as the plain init."""
    build = _depth_scaled_pairs()[part]
    plain, scaled = build(False).state_dict(), build(True).state_dict()
    divided = 0
    for key, value in plain.items():
        parts = key.split(".")
        if key.endswith(("attn.proj.weight", "mlp.fc2.weight")):
            layer = int(parts[parts.index("attn" if "attn" in parts else "mlp") - 1]) + 1
            torch.testing.assert_close(scaled[key], value / (2 * layer) ** 0.5)
            divided += 1
        else:
            assert torch.equal(scaled[key], value), key
    assert divided == 6  # 3 blocks x 2 maps
