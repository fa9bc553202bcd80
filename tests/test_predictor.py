"""The I-JEPA predictor: shapes, official key names, padding, block independence, heads,
parameter count of the ViT-H predictor, and gradient flow through a tiny I-JEPA step."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from jepa_core.errors import ConfigError
from jepa_vit.configs import PredictorConfig, ViTConfig
from jepa_vit.encoder import build_encoder
from jepa_vit.pos_embed import sincos_2d
from jepa_vit.predictor import build_predictor

SMALL = PredictorConfig(embed_dim=32, depth=2, num_heads=4)


def stub_encoder(dim=48, heads=3, grid=(4, 4)):
    return SimpleNamespace(embed_dim=dim, num_heads=heads, patch_grid=grid)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return build_predictor(SMALL, stub_encoder()).eval()


def masks(batch=2, grid=16, num_context=6, num_blocks=3, block=4, seed=0):
    """Random disjoint context and target indices: ([B, Nc], [B, M, Nt])."""
    gen = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(grid, generator=gen) for _ in range(batch)])
    context = perms[:, :num_context]
    targets = torch.stack([
        perms[:, num_context + torch.randperm(grid - num_context, generator=gen)[:block]]
        for _ in range(num_blocks)], dim=1)
    return context, targets


def test_output_shape(predictor):
    context, targets = masks()
    tokens = torch.randn(2, 6, 48)
    out = predictor(tokens, context, targets)
    assert out.shape == (2, 3, 4, 48) and torch.isfinite(out).all()


def test_non_square_grid():
    pred = build_predictor(SMALL, stub_encoder(grid=(3, 5)))
    assert pred.predictor_pos_embed.shape == (1, 15, 32)
    assert torch.equal(pred.predictor_pos_embed[0], sincos_2d(32, 3, 5))
    context, targets = masks(grid=15)
    assert pred(torch.randn(2, 6, 48), context, targets).shape == (2, 3, 4, 48)


def test_official_key_names(predictor):
    keys = set(predictor.state_dict())
    assert {"mask_token", "predictor_pos_embed", "predictor_embed.weight",
            "predictor_embed.bias", "predictor_norm.weight", "predictor_norm.bias",
            "predictor_proj.weight", "predictor_proj.bias"} <= keys
    block = {"norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"}
    for i in range(2):
        for part in block:
            prefix = f"predictor_blocks.{i}.{part}"
            assert {f"{prefix}.weight", f"{prefix}.bias"} <= keys
    prefixes = ("mask_token", "predictor_pos_embed", "predictor_embed.", "predictor_blocks.",
                "predictor_norm.", "predictor_proj.")
    assert all(k.startswith(prefixes) for k in keys)
    assert predictor.mask_token.shape == (1, 1, 32)


def test_fixed_positions_and_init(predictor):
    assert not predictor.predictor_pos_embed.requires_grad
    assert predictor.mask_token.requires_grad
    assert 0.0 < predictor.mask_token.abs().max().item() < 0.2  # std 0.02
    assert abs(predictor.predictor_embed.weight.std().item() - 0.02) < 0.002
    assert predictor.predictor_blocks[0].norm1.eps == 1e-6
    assert predictor.predictor_blocks[0].attn.qkv.bias is not None
    assert torch.count_nonzero(predictor.predictor_proj.bias) == 0


@pytest.mark.parametrize("attention", ["auto", "math"])
def test_context_padding_is_ignored(attention):
    torch.manual_seed(0)
    pred = build_predictor(PredictorConfig(embed_dim=32, depth=2, num_heads=4,
                                           attention=attention), stub_encoder()).eval()
    context, targets = masks()
    tokens = torch.randn(2, 6, 48)
    plain = pred(tokens, context, targets)
    pad_idx = torch.cat([context, context[:, :1].expand(-1, 2)], dim=1)
    pad_tok = torch.cat([tokens, torch.randn(2, 2, 48)], dim=1)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[:, 6:] = False
    torch.testing.assert_close(pred(pad_tok, pad_idx, targets, valid), plain,
                               atol=1e-5, rtol=1e-5)


def test_blocks_are_predicted_independently(predictor):
    """Block m's prediction sees the context and block m only, not the other blocks."""
    context, targets = masks()
    tokens = torch.randn(2, 6, 48)
    out = predictor(tokens, context, targets)
    changed = targets.clone()
    changed[:, 1:] = changed[:, 1:].flip(-1)
    torch.testing.assert_close(predictor(tokens, context, changed)[:, 0], out[:, 0])


def test_math_matches_fused(predictor):
    math = build_predictor(PredictorConfig(embed_dim=32, depth=2, num_heads=4,
                                           attention="math"), stub_encoder()).eval()
    math.load_state_dict(predictor.state_dict())
    context, targets = masks()
    tokens = torch.randn(2, 6, 48)
    torch.testing.assert_close(math(tokens, context, targets),
                               predictor(tokens, context, targets), atol=1e-5, rtol=1e-5)


def test_heads_default_to_encoder_and_must_divide_width():
    pred = build_predictor(PredictorConfig(embed_dim=48, depth=1), stub_encoder(heads=6))
    assert pred.num_heads == 6 and pred.predictor_blocks[0].attn.num_heads == 6
    with pytest.raises(ConfigError, match="num_heads"):
        build_predictor(PredictorConfig(embed_dim=32, depth=1), stub_encoder(heads=3))
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_predictor(PredictorConfig(embed_dim=30, depth=1, num_heads=3), stub_encoder())


def test_vit_h_predictor_parameter_count():
    """Width 384, depth 12, 16 heads for D = 1280: ~22.3M trainable (plus the fixed table)."""
    with torch.device("meta"):
        pred = build_predictor(PredictorConfig(), stub_encoder(dim=1280, heads=16, grid=(16, 16)))
    trainable = sum(p.numel() for p in pred.parameters() if p.requires_grad)
    assert abs(trainable / 1e6 - 22.3) < 0.05
    assert pred.predictor_pos_embed.numel() == 256 * 384


def test_gradients_flow_in_a_tiny_ijepa_step():
    torch.manual_seed(0)
    cfg = ViTConfig(model="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2)
    context_encoder = build_encoder(cfg)
    target_encoder = build_encoder(cfg)
    target_encoder.load_state_dict(context_encoder.state_dict())
    target_encoder.requires_grad_(False)
    pred = build_predictor(PredictorConfig(embed_dim=32, depth=2, num_heads=4), context_encoder)
    images = torch.randn(2, 3, 32, 32)
    context, targets = masks()
    with torch.no_grad():
        full = F.layer_norm(target_encoder(images), (192,))
        wanted = torch.gather(full, 1, targets.flatten(1)[..., None].expand(-1, -1, 192))
    predictions = pred(context_encoder(images, keep=context), context, targets)
    F.smooth_l1_loss(predictions, wanted.reshape(2, 3, 4, 192)).backward()
    for module in (context_encoder, pred):
        for name, param in module.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and torch.isfinite(param.grad).all(), name
            else:
                assert param.grad is None, name
    assert pred.mask_token.grad.abs().sum() > 0
    assert context_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target_encoder.parameters())


def test_registered_factory_resolves():
    module, _, attr = "jepa_vit.predictor:build_predictor".partition(":")
    assert getattr(importlib.import_module(module), attr) is build_predictor
