"""Config classes of the image plugin (no torch here: imported by `jepa plugins`)."""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs

from jepa_core.validate import at_least, between, range_pair

Pair = tuple[float, float]


@attrs.frozen
class MultiBlockConfig:
    """I-JEPA multi-block masks: M target blocks and a large context block minus the targets.

    style: "corrected" (default: every patch reachable, independent scale and aspect draws,
    unbiased context length equalisation) or "reference" (the official sampler's
    distribution, quirks included; the paper recipes use it). Either style can keep whole
    contexts instead of cutting them (context_equalize "pad" or "pack").
    """

    # For tests: where jepa_core.testing.strategies.masker_configs finds varied configs.
    hypothesis_configs: ClassVar[str] = "jepa_image.strategies:multiblock_configs"

    style: Literal["corrected", "reference"] = "corrected"
    num_targets: int = attrs.field(default=4, validator=at_least(1))
    target_scale: Pair = attrs.field(default=(0.15, 0.2),
                                     validator=range_pair(0, 1, strict_lo=True))
    target_aspect: Pair = attrs.field(default=(0.75, 1.5), validator=range_pair(0, strict_lo=True))
    num_context: int = attrs.field(default=1, validator=at_least(1))
    context_scale: Pair = attrs.field(default=(0.85, 1.0),
                                      validator=range_pair(0, 1, strict_lo=True))
    context_aspect: Pair = attrs.field(default=(1.0, 1.0), validator=range_pair(0, strict_lo=True))
    min_keep: int = attrs.field(default=10, validator=at_least(1))
    allow_overlap: bool = False
    # How context rows of unequal length become one tensor (truncate, pad or pack):
    # "subset" (truncate): cut every row to the batch-minimum length, keeping a uniformly
    #   random subset of it (corrected style) or its first indices in raster order (reference
    #   style, the official cut).
    # "pad": every sample keeps its whole context; rows are padded to the batch maximum and
    #   `context_valid` marks the padding (the models compute on the padding, then ignore it).
    # "pack": the masks of "pad", plus `MaskBatch.packed`: the encoder and predictor run
    #   only the valid tokens, packed without padding (same loss and gradients as "pad").
    context_equalize: Literal["subset", "pad", "pack"] = "subset"
    # Rows equalised together (subset/reference): consecutive groups of this many rows of the
    # global batch, each cut to its own shortest context, then padded to the longest group
    # (context_valid marks the padding). The official code cut per GPU batch (128 for
    # ViT-H/14): set it to that to reproduce its context lengths. None: the whole batch.
    equalize_group: int | None = attrs.field(default=None, validator=at_least(1))


@attrs.frozen
class RandomPatchConfig:
    """MAE-style random patches: a random context subset and M random target sets."""

    hypothesis_configs: ClassVar[str] = "jepa_image.strategies:random_patch_configs"

    context_ratio: float = attrs.field(default=0.25, validator=between(0.01, 0.99))
    num_targets: int = attrs.field(default=4, validator=at_least(1))
    target_ratio: float = attrs.field(default=0.15, validator=between(0.0, 1.0))


@attrs.frozen
class DigitsConfig:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), upsampled; no download."""

    train_fraction: float = attrs.field(default=0.8, validator=between(0.1, 0.95))
    crop_scale: Pair = attrs.field(default=(0.3, 1.0), validator=range_pair(0, 1, strict_lo=True))
    split_seed: int = 0


@attrs.frozen
class ImageFolderConfig:
    """Images in class folders (ImageNet layout: root/<class>/<image>), or directly in root
    (root/<image>: unlabelled; training needs no labels, the probes of `jepa eval` do), read
    with Pillow."""

    root: str
    # Evaluation images. None: a held-out slice of `root` (below), which training never sees.
    val_root: str | None = None
    # Without val_root: the share of each class of `root` held out for evaluation, chosen by
    # a hash of (split_seed, file path under root), so training and `jepa eval` agree. 0:
    # train on all of root (evaluation then needs val_root).
    val_fraction: float = attrs.field(default=0.1, validator=between(0.0, 0.5))
    split_seed: int = 0
    crop_scale: Pair = attrs.field(default=(0.3, 1.0), validator=range_pair(0, 1, strict_lo=True))
    on_error: Literal["skip", "raise"] = "skip"  # unreadable image: skip it (counted) or stop
    max_images: int | None = attrs.field(default=None, validator=at_least(1))
    # Larger images are refused before decoding (an unreadable sample: skipped and counted).
    # 64 MP takes in every camera photo (61 MP at most), decoded ~0.8 GB as float32 per image
    # and loader worker; Pillow's own bomb limit (179 MP) would allow 2 GB. JPEGs count at
    # the reduced size they are decoded at (Image.draft). None: only Pillow's limit.
    max_image_pixels: int | None = attrs.field(default=64_000_000, validator=at_least(1))


@attrs.frozen
class SyntheticConfig:
    """Random images with class-dependent structure, for benchmarks and smoke tests."""

    num_images: int = attrs.field(default=512, validator=at_least(1))
    num_classes: int = attrs.field(default=10, validator=at_least(1))
    channels: int = attrs.field(default=3, validator=at_least(1))
