"""Config classes of the video plugin (no torch here)."""

from __future__ import annotations

from typing import Literal

import attrs

from jepa_core.validate import at_least, between, range_pair


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
