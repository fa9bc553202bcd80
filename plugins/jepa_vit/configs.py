"""Config classes of the ViT plugin (no torch here)."""

from __future__ import annotations

from typing import Literal

import attrs

from jepa_core.validate import at_least, between, greater


@attrs.frozen
class ViTConfig:
    """Any timm ViT by name, without cls token, with fixed 2D sin-cos positions."""

    model: str = "vit_tiny_patch16_224"
    img_size: int | None = attrs.field(default=None, validator=at_least(8))  # None: timm default
    patch_size: int | None = attrs.field(default=None, validator=at_least(1))
    # Optional overrides of the timm architecture (e.g. a shallower model for CPU runs).
    embed_dim: int | None = attrs.field(default=None, validator=at_least(8))
    depth: int | None = attrs.field(default=None, validator=at_least(1))
    num_heads: int | None = attrs.field(default=None, validator=at_least(1))
    drop_path_rate: float = attrs.field(default=0.0, validator=between(0, 1))
    pos_embed: Literal["sincos", "learned"] = "sincos"
    # "auto": timm's fused scaled-dot-product attention; "math": the explicit softmax(QK^T)V.
    attention: Literal["auto", "math"] = "auto"
    # True: after the init, divide block l's attn.proj and mlp.fc2 weights by sqrt(2 l), as the
    # official I-JEPA and V-JEPA models do (the paper recipes set it); False keeps the plain
    # init of earlier runs.
    depth_scaled_init: bool = False


@attrs.frozen
class PredictorConfig:
    """The I-JEPA predictor: a narrow ViT over context tokens plus one mask token per target."""

    embed_dim: int = attrs.field(default=384, validator=at_least(8))
    depth: int = attrs.field(default=12, validator=at_least(1))
    num_heads: int | None = attrs.field(default=None, validator=at_least(1))  # None: encoder's
    mlp_ratio: float = attrs.field(default=4.0, validator=greater(0))
    drop_path_rate: float = attrs.field(default=0.0, validator=between(0, 1))
    attention: Literal["auto", "math"] = "auto"
    # Learnable mask tokens, one per mask set (V-JEPA: 2, zero-initialised; the method picks
    # one with `mask_index`). 1: I-JEPA's single trunc-normal token, key `mask_token`.
    num_mask_tokens: int = attrs.field(default=1, validator=at_least(1))
    # True: after the init, divide block l's attn.proj and mlp.fc2 weights by sqrt(2 l), as the
    # official I-JEPA and V-JEPA models do (the paper recipes set it); False keeps the plain
    # init of earlier runs.
    depth_scaled_init: bool = False

