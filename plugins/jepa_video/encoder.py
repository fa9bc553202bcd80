"""The V-JEPA encoder: a timm ViT's blocks over tubelets of a clip, with fixed 3D sin-cos positions.

A clip [B, C, T, H, W] is cut into tubelets of tubelet_size frames x patch_size x patch_size px
by one Conv3d (`patch_embed.proj`), giving a (t, h, w) = (T / tubelet, H / p, W / p) grid of
N = t * h * w tokens in raster order (index = (t * h_grid + h) * w_grid + w). Everything after
the patch embedding is the image encoder's (`jepa_vit.encoder.ViTEncoder`, built from the timm
model named in the config): positions added before tokens are dropped, `keep_valid` as a
key-padding mask, `pack=True`, `layer_tokens` for eval's "last4" features.

The state dict has the keys of the official V-JEPA encoder (less its `module.backbone.`
prefixes): `patch_embed.proj.{weight,bias}` (weight [D, C, tubelet, p, p]), `pos_embed`
[1, N, D] (frozen), `blocks.N.*` and `norm.*`, so `jepa import-checkpoint` is a prefix strip.

    encoder = build_video_encoder(VideoViTConfig())   # ViT-L/16, 16 frames, 224 px: ~304M
    tokens = encoder(clips, keep=context_idx)         # [B, K, D]
"""

from __future__ import annotations

import torch
from torch import nn

from jepa_core.errors import ConfigError
from jepa_video.configs import VideoViTConfig
from jepa_vit.configs import ViTConfig
from jepa_vit.encoder import (
    ViTEncoder,
    _create_timm,
    init_vit_weights,
    scale_residual_projections,
)
from jepa_vit.pos_embed import axis_widths_3d


class TubeletEmbed(nn.Module):
    """Clips [B, C, T, H, W] -> [B, N, D] tubelet embeddings, raster order over (t, h, w).

    `proj` is a Conv3d with kernel = stride = (tubelet_size, patch_size, patch_size): a linear
    map of each tubelet's C * tubelet * p * p values. Attributes img_size (H, W) px,
    num_frames T, grid_size (t, h, w), num_patches N."""

    def __init__(self, *, img_size: int, patch_size: int, num_frames: int, tubelet_size: int,
                 embed_dim: int, in_chans: int = 3):
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        self.img_size = (img_size, img_size)
        self.num_frames = num_frames
        self.grid_size = (num_frames // tubelet_size, img_size // patch_size,
                          img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [B, C, T, H, W] at the configured size -> [B, N, D]; ValueError otherwise."""
        expected = (self.proj.in_channels, self.num_frames, *self.img_size)
        if clips.dim() != 5 or tuple(clips.shape[1:]) != expected:
            want = ", ".join(map(str, expected))
            raise ValueError(
                f"the video encoder takes clips [B, C, T, H, W] = [B, {want}], got "
                f"{list(clips.shape)}; set the encoder's num_frames/img_size to the data's")
        return self.proj(clips).flatten(2).transpose(1, 2)


class VideoViTEncoder(ViTEncoder):
    """`ViTEncoder` with a tubelet embedding (see the module docstring): an `Encoder` over
    clips [B, C, T, H, W] with patch_grid (t, h, w).

    Extra attributes: num_frames T, tubelet_size, uniform_power (the 3D table's split, which
    `vit_predictor` copies)."""

    def __init__(self, vit: nn.Module, tubelets: TubeletEmbed, *, uniform_power: bool = True,
                 attention: str = "auto"):
        vit.patch_embed = tubelets
        super().__init__(vit, pos_embed="sincos", attention=attention,
                         uniform_power=uniform_power)
        self.num_frames = tubelets.num_frames
        self.tubelet_size = int(tubelets.proj.kernel_size[0])

    def to_timm_state_dict(self) -> dict[str, torch.Tensor]:
        """Not available: timm has no video ViT whose keys and shapes these match."""
        raise NotImplementedError(
            "the video encoder has no timm equivalent (its patch embedding is a Conv3d); save "
            "its state dict with torch instead")


def _check_config(config: VideoViTConfig) -> None:
    """Catch the shape mistakes that would drop frames or pixels, with the fix."""
    if config.img_size % config.patch_size:
        raise ConfigError(
            f"encoder img_size {config.img_size} is not a multiple of patch_size "
            f"{config.patch_size}; the border would be dropped. Pick a multiple.")
    if config.num_frames % config.tubelet_size:
        raise ConfigError(
            f"encoder num_frames {config.num_frames} is not a multiple of tubelet_size "
            f"{config.tubelet_size}; the last frames would be dropped. Pick a multiple.")


def build_video_encoder(config: VideoViTConfig) -> VideoViTEncoder:
    """The registered factory: VideoViTConfig -> VideoViTEncoder (an `Encoder`). Honours the
    ambient device (e.g. `with torch.device("meta"):` to count parameters)."""
    _check_config(config)
    image = ViTConfig(model=config.model, img_size=config.img_size, patch_size=config.patch_size,
                      embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                      drop_path_rate=config.drop_path_rate)
    vit = _create_timm(image)
    width = int(vit.embed_dim)
    try:
        axis_widths_3d(width, config.uniform_power)
    except ValueError as err:
        raise ConfigError(f"encoder {config.model!r}: {err}") from err
    in_chans = int(vit.patch_embed.proj.in_channels)
    tubelets = TubeletEmbed(img_size=config.img_size, patch_size=config.patch_size,
                            num_frames=config.num_frames, tubelet_size=config.tubelet_size,
                            embed_dim=width, in_chans=in_chans)
    encoder = VideoViTEncoder(vit, tubelets, uniform_power=config.uniform_power,
                              attention=config.attention)
    init_vit_weights(encoder)
    if config.depth_scaled_init:
        scale_residual_projections(encoder.blocks)
    return encoder
