"""The ViT encoder: shapes, token selection, padding, timm compatibility, sin-cos positions,
init, and the parameter counts of the paper's models (built on the meta device)."""

from __future__ import annotations

import importlib

import attrs
import pytest
import timm
import torch

from jepa_core.errors import ConfigError
from jepa_vit.configs import ViTConfig
from jepa_vit.encoder import build_encoder, timm_kwargs, wrap_timm_vit
from jepa_vit.pos_embed import sincos_2d

TINY = ViTConfig(model="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder(TINY).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --- sin-cos positions -------------------------------------------------------------------

def test_sincos_layout_non_square():
    gh, gw, dim = 3, 5, 16
    table = sincos_2d(dim, gh, gw).reshape(gh, gw, dim)
    assert table.dtype == torch.float32
    # First half depends on the column only, second half on the row only.
    assert torch.equal(table[:, :, : dim // 2], table[:1, :, : dim // 2].expand(gh, -1, -1))
    assert torch.equal(table[:, :, dim // 2:], table[:, :1, dim // 2:].expand(-1, gw, -1))
    # Position 0: sin = 0, cos = 1 in each half; omega_0 = 1 so channel 0 is sin(col).
    assert torch.equal(table[0, 0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    cols = torch.arange(gw, dtype=torch.float64)
    torch.testing.assert_close(table[0, :, 0], cols.sin().float())
    omega_last = 1.0 / 10000 ** (3 / 4)
    rows = torch.arange(gh, dtype=torch.float64)
    torch.testing.assert_close(table[:, 0, 15], (rows * omega_last).cos().float())


def test_sincos_rejects_width_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(18, 2, 2)


# --- shapes and token selection -----------------------------------------------------------

def test_attributes_and_full_shape(encoder, images):
    assert encoder.embed_dim == 192 and encoder.num_heads == 3
    assert encoder.image_size == (32, 32) and encoder.patch_grid == (4, 4)
    assert encoder.num_patches == 16
    out = encoder(images)
    assert out.shape == (2, 16, 192) and torch.isfinite(out).all()


def test_keep_follows_index_order(encoder, images):
    """Blocks are permutation-equivariant, so keeping a permutation of all patches permutes
    the output; positions are added before the gather."""
    perm = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(s))
                        for s in range(2)])
    full = encoder(images)
    out = encoder(images, keep=perm)
    expected = torch.gather(full, 1, perm[..., None].expand(-1, -1, 192))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_keep_subset_shape(encoder, images):
    keep = torch.tensor([[0, 5, 7], [15, 2, 3]])
    assert encoder(images, keep=keep).shape == (2, 3, 192)


def test_non_square_grid():
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, class_token=False,
        global_pool="avg", fc_norm=False, img_size=(32, 48), patch_size=8, depth=1)
    enc = wrap_timm_vit(vit).eval()
    assert enc.patch_grid == (4, 6) and enc.image_size == (32, 48) and enc.num_patches == 24
    assert torch.equal(enc.pos_embed[0], sincos_2d(192, 4, 6))
    keep = torch.tensor([[0, 23, 11]])
    assert enc(torch.randn(1, 3, 32, 48), keep=keep).shape == (1, 3, 192)


@pytest.mark.parametrize("attention", ["auto", "math"])
def test_padding_is_ignored(attention, images):
    torch.manual_seed(0)
    enc = build_encoder(attrs.evolve(TINY, attention=attention)).eval()
    keep = torch.tensor([[0, 3, 9, 12], [1, 2, 14, 15]])
    padded = torch.cat([keep, keep[:, :1].expand(-1, 3)], dim=1)  # pad by repeating an index
    valid = torch.ones_like(padded, dtype=torch.bool)
    valid[:, 4:] = False
    plain = enc(images, keep=keep)
    out = enc(images, keep=padded, keep_valid=valid)
    torch.testing.assert_close(out[:, :4], plain, atol=1e-5, rtol=1e-5)
    # Without the mask the padding does change the valid tokens.
    assert not torch.allclose(enc(images, keep=padded)[:, :4], plain, atol=1e-4)


def test_math_attention_matches_fused(encoder, images):
    math = build_encoder(attrs.evolve(TINY, attention="math")).eval()
    math.load_state_dict(encoder.state_dict())
    assert all(not b.attn.fused_attn for b in math.blocks)
    torch.testing.assert_close(math(images), encoder(images), atol=1e-5, rtol=1e-5)


def test_grad_checkpointing_same_output_and_grads(images):
    torch.manual_seed(0)
    enc = build_encoder(TINY)
    keep = torch.tensor([[0, 3, 9], [1, 2, 14]])
    enc(images, keep=keep).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad(set_to_none=True)
    enc.set_grad_checkpointing(True)
    enc(images, keep=keep).square().mean().backward()
    for name, grad in grads.items():
        torch.testing.assert_close(dict(enc.named_parameters())[name].grad, grad)


# --- timm compatibility --------------------------------------------------------------------

def test_timm_loads_our_state_dict_and_matches(encoder, images):
    vit = timm.create_model(**timm_kwargs(TINY)).eval()
    vit.load_state_dict(encoder.to_timm_state_dict(), strict=True)
    assert list(encoder.state_dict()) == list(vit.state_dict())
    ours = encoder(images)
    torch.testing.assert_close(vit.forward_features(images), ours)
    torch.testing.assert_close(vit(images), ours.mean(dim=1))


def test_we_load_timm_state_dict(encoder):
    vit = timm.create_model(**timm_kwargs(TINY))
    fresh = build_encoder(TINY)
    fresh.load_state_dict(vit.state_dict(), strict=True)
    assert torch.equal(fresh.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)


def test_pos_embed_is_fixed_sincos_in_state_dict(encoder):
    assert "pos_embed" in encoder.state_dict()
    assert encoder.pos_embed.shape == (1, 16, 192)
    assert not encoder.pos_embed.requires_grad
    assert torch.equal(encoder.state_dict()["pos_embed"][0], sincos_2d(192, 4, 4))
    assert "pos_embed" not in {n for n, p in encoder.named_parameters() if p.requires_grad}


def test_learned_pos_embed_is_trainable():
    enc = build_encoder(attrs.evolve(TINY, pos_embed="learned"))
    assert enc.pos_embed.requires_grad and enc.pos_embed.shape == (1, 16, 192)
    assert 0.0 < enc.pos_embed.std().item() < 0.03


def test_init_rules():
    enc = build_encoder(TINY)
    for module in enc.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            assert abs(module.weight.std().item() - 0.02) < 0.002
            assert abs(module.weight.mean().item()) < 0.002
            assert torch.count_nonzero(module.bias) == 0
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.count_nonzero(module.bias) == 0


# --- configuration errors ------------------------------------------------------------------

def test_unknown_model_suggests_close_matches():
    with pytest.raises(ConfigError, match="vit_tiny_patch16_224"):
        build_encoder(ViTConfig(model="vit_tiny_patch16_22"))


def test_non_vit_model_is_rejected():
    with pytest.raises(ConfigError, match="resnet18"):
        build_encoder(ViTConfig(model="resnet18"))


def test_image_size_must_be_multiple_of_patch():
    with pytest.raises(ConfigError, match="multiple"):
        build_encoder(attrs.evolve(TINY, img_size=36))


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="vit_tiny"):
        build_encoder(attrs.evolve(TINY, embed_dim=64))  # 64 % 3 heads


def test_register_tokens_are_turned_off():
    with torch.device("meta"):
        enc = build_encoder(ViTConfig(model="vit_base_patch16_reg4_gap_256", depth=1))
    assert not any("reg_token" in n or "cls_token" in n for n in enc.state_dict())
    assert enc.patch_grid == (16, 16)


def test_registered_factory_resolves():
    module, _, attr = "jepa_vit.encoder:build_encoder".partition(":")
    assert getattr(importlib.import_module(module), attr) is build_encoder


# --- the paper's models (meta device: no memory, no init) ---------------------------------

@pytest.mark.parametrize("model, patch, grid, expected_millions", [
    ("vit_huge_patch14_gap_224", None, (16, 16), 630.4),
    ("vit_huge_patch14_gap_224", 16, (14, 14), 630.7),
    ("vit_huge_patch16_gap_448", None, (28, 28), 630.7),
])
def test_paper_vit_h_parameter_counts(model, patch, grid, expected_millions):
    with torch.device("meta"):
        enc = build_encoder(ViTConfig(model=model, patch_size=patch))
    assert enc.pos_embed.is_meta
    assert enc.patch_grid == grid and enc.embed_dim == 1280 and len(enc.blocks) == 32
    # The paper counts trainable parameters (the sin-cos table is fixed).
    assert abs(trainable(enc) / 1e6 - expected_millions) < 0.5


def test_paper_vit_giant_builds():
    with torch.device("meta"):
        enc = build_encoder(ViTConfig(model="vit_giant_patch16_gap_224"))
    assert enc.embed_dim == 1408 and len(enc.blocks) == 40 and enc.patch_grid == (14, 14)
    assert enc.blocks[0].mlp.fc1.out_features == 6144  # MLP ratio 48/11
    assert abs(trainable(enc) / 1e6 - 1011.1) < 0.5



def test_autocast_keeps_a_float32_residual_stream(encoder, images):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert encoder.embed(images).dtype == torch.float32
        out = encoder(images, keep=torch.tensor([[0, 1], [2, 3]]))
    assert out.shape == (2, 2, 192) and torch.isfinite(out).all()
