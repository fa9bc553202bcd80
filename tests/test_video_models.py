"""The video encoder `vit_video`, the rank-agnostic `vit_predictor` and V-JEPA checkpoints."""

from __future__ import annotations

import hashlib

import pytest
import torch

from jepa_vit.configs import PredictorConfig, ViTConfig
from jepa_vit.encoder import build_encoder
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
