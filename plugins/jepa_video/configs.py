"""Config classes of the video plugin (no torch here)."""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs

from jepa_core.validate import Invalid, at_least, between, plain_name, range_pair


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
    # True: after the init, divide block l's attn.proj and mlp.fc2 weights by sqrt(2 l), as the
    # official V-JEPA model does (its recipe sets it).
    depth_scaled_init: bool = False



# -- masker multiblock3d (V-JEPA) -------------------------------------------------------
@attrs.frozen
class MaskSetConfig:
    """One mask set of `multiblock3d`: `num_blocks` (t, h, w) blocks per clip, their size
    drawn once per batch from the three ranges (fractions of the time steps and of the h x w
    patches of a frame; aspect h / w)."""

    name: str = attrs.field(validator=plain_name())
    num_blocks: int = attrs.field(default=8, validator=at_least(1))
    spatial_scale: tuple[float, float] = attrs.field(
        default=(0.15, 0.15), validator=range_pair(0, 1, strict_lo=True))
    temporal_scale: tuple[float, float] = attrs.field(
        default=(1.0, 1.0), validator=range_pair(0, 1, strict_lo=True))
    aspect_ratio: tuple[float, float] = attrs.field(
        default=(0.75, 1.5), validator=range_pair(0, strict_lo=True))


def _vitl_sets() -> tuple[MaskSetConfig, ...]:
    # The official ViT-L/16 recipe (configs/pretrain/vitl16.yaml): many small blocks ("short
    # range") and two large ones ("long range"), every one spanning the whole clip in time.
    return (MaskSetConfig("short", num_blocks=8, spatial_scale=(0.15, 0.15)),
            MaskSetConfig("long", num_blocks=2, spatial_scale=(0.7, 0.7)))


def _distinct_names(inst: object, attr: object, sets: tuple[MaskSetConfig, ...]) -> None:
    names = [s.name for s in sets]
    if not names:
        raise Invalid("must list at least one mask set")
    if len(set(names)) != len(names):
        raise Invalid(f"mask set names must differ (got {names})")


@attrs.frozen
class MultiBlock3DConfig:
    """V-JEPA multi-block masks on a (t, h, w) grid: per mask set, the target is the union of
    `num_blocks` blocks and the context is the rest of the clip.

    style: "reference" (the official sampler: every row cut to the batch minimum, in raster
    order) or "whole" (no cutting: each clip keeps its whole context and target, padded to the
    batch maximum with `context_valid` / `targets_valid`).
    equalize_group: with "reference", rows are cut to the minimum of their group of this many
    consecutive rows (the official sampler runs in each GPU's collator, so it cuts per GPU
    batch, e.g. 24), groups then padded to the longest with validity masks; None: the batch.
    """

    hypothesis_configs: ClassVar[str] = "jepa_video.strategies:multiblock3d_configs"
    grid_rank: ClassVar[int] = 3  # (t, h, w): tests over the registry draw such grids

    sets: tuple[MaskSetConfig, ...] = attrs.field(factory=_vitl_sets,
                                                   validator=_distinct_names)
    style: Literal["reference", "whole"] = "reference"
    equalize_group: int | None = attrs.field(default=None, validator=at_least(1))


# -- data sources (video-data) --------------------------------------------------------------
@attrs.frozen
class MovingDigitsConfig:
    """scikit-learn's 8x8 digits moving across a canvas that wraps around, in one of 8
    directions (the label: one frame cannot tell it); embedded, no download. Each scene
    (digit, start, speed) is a fixed draw, shown in all 8 directions: the data set is the
    same on every run."""

    num_frames: int = attrs.field(default=16, validator=at_least(2))
    # Canvas side in pixels; None: the encoder's image size (as every image source).
    img_size: int | None = attrs.field(default=None, validator=at_least(8))
    digit_size: int = attrs.field(default=12, validator=at_least(4))  # the upsampled digit (px)
    channels: int = attrs.field(default=3, validator=at_least(1))  # gray repeated, as digits
    num_train: int = attrs.field(default=1024, validator=at_least(8))
    num_test: int = attrs.field(default=256, validator=at_least(8))
    # Pixels per frame; each clip draws its own speed in this range (the "small jitter").
    speed: tuple[float, float] = attrs.field(default=(0.8, 1.2),
                                             validator=range_pair(0, strict_lo=True))
    # The digits of scikit-learn's set split as the `digits` source splits them: the train
    # clips move digits of the train share, the test clips the other digits.
    train_fraction: float = attrs.field(default=0.8, validator=between(0.1, 0.95))
    split_seed: int = 0
    # The training transform: one random-resized crop of this share of the canvas for all
    # frames of a clip (aspect 3/4-4/3: directions bend by at most ~8 degrees, far less than
    # the 45 between two labels).
    crop_scale: tuple[float, float] = attrs.field(default=(0.6, 1.0),
                                                  validator=range_pair(0, 1, strict_lo=True))


@attrs.frozen
class VideoFolderConfig:
    """Videos in class folders (root/<class>/<video>), decoded with PyAV (`pip install av`):
    clips of num_frames frames, frame_step apart; one random-resized crop per clip."""

    root: str
    val_root: str | None = None  # None: a held-out slice of root, as the image folder
    val_fraction: float = attrs.field(default=0.1, validator=between(0.0, 0.5))
    split_seed: int = 0
    num_frames: int = attrs.field(default=16, validator=at_least(1))
    frame_step: int = attrs.field(default=4, validator=at_least(1))  # V-JEPA's sampling rate
    # The crop of every frame of a clip (aspect 3/4-4/3, as the image folder's crops)
    crop_scale: tuple[float, float] = attrs.field(default=(0.3, 1.0),
                                                  validator=range_pair(0, 1, strict_lo=True))
    # unreadable or too short video: skip it (counted, as unreadable images) or stop
    on_error: Literal["skip", "raise"] = "skip"
    max_videos: int | None = attrs.field(default=None, validator=at_least(1))
