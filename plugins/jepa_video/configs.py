"""Config classes of the video plugin (no torch here)."""

from __future__ import annotations

from typing import Literal

import attrs

from jepa_core.validate import at_least, between


# -- the video encoder (vit_video) -------------------------------------------------------
@attrs.frozen
class VideoViTConfig:
    """A timm ViT's blocks (by name) over tubelets of a clip, with fixed 3D sin-cos positions.

    Clips are [B, C, num_frames, img_size, img_size]; tubelets of tubelet_size frames x
    patch_size x patch_size px give a (num_frames / tubelet_size, img_size / patch_size,
    img_size / patch_size) patch grid."""

    model: str = "vit_large_patch16_224"  # timm's width, depth, heads and MLP ratio
    img_size: int = attrs.field(default=224, validator=at_least(8))
    patch_size: int = attrs.field(default=16, validator=at_least(1))
    num_frames: int = attrs.field(default=16, validator=at_least(1))
    tubelet_size: int = attrs.field(default=2, validator=at_least(1))
    # Optional overrides of the timm architecture (e.g. a small model for CPU runs).
    embed_dim: int | None = attrs.field(default=None, validator=at_least(8))
    depth: int | None = attrs.field(default=None, validator=at_least(1))
    num_heads: int | None = attrs.field(default=None, validator=at_least(1))
    drop_path_rate: float = attrs.field(default=0.0, validator=between(0, 1))
    # "auto": timm's fused scaled-dot-product attention; "math": the explicit softmax(QK^T)V.
    attention: Literal["auto", "math"] = "auto"
    # V-JEPA's ViT-L recipe: every axis gets 2 * ceil(D / 6) position channels (false: time
    # D / 2, height and width D / 4 each). The predictor takes the encoder's setting.
    uniform_power: bool = True
