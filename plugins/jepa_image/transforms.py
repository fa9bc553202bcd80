"""Image transforms whose randomness comes only from a given torch.Generator.

The paper's training transform is RandomResizedCrop(scale 0.3–1.0, ratio 3/4–4/3) followed by
normalisation; no flips, no colour jitter. torchvision's transform draws from the global RNG,
so the crop box is drawn here from the sample's own generator and then applied with
torchvision's functional ops.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def crop_box(height: int, width: int, scale: tuple[float, float], generator: torch.Generator,
             ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10
             ) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering `scale` of the area with aspect in `ratio`.

    Up to `attempts` draws; if none fits, the largest centred crop within the ratio range.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
                        generator: torch.Generator) -> torch.Tensor:
    """image [C, H, W] float → [C, *size], the crop box drawn from `generator`."""
    top, left, h, w = crop_box(image.shape[-2], image.shape[-1], scale, generator)
    return TF.resized_crop(image, top, left, h, w, list(size), antialias=True)


def resize_center_crop(image: torch.Tensor, size: tuple[int, int],
                       crop_fraction: float = 224 / 256) -> torch.Tensor:
    """The evaluation transform: resize the short side to size/crop_fraction, centre-crop."""
    short = int(round(min(size) / crop_fraction))
    image = TF.resize(image, [short], antialias=True)
    return TF.center_crop(image, list(size))


# Pillow modes whose pixel values are not 0..255: grayscale at 16 bits ("I;16*"; "I" is how
# Pillow < 10 opened 16-bit PNGs and how it opens 32-bit integer TIFFs, read here as 16-bit
# too) and float ("F", taken as 0..1). convert("RGB") would clip them at 255 (white) or 0.
WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0,
              "I": 65535.0, "F": 1.0}


def pil_to_float(img: Any) -> torch.Tensor:
    """A Pillow image → [3, H, W] float32 in [0, 1]; 16-bit and float grayscale scaled by their
    own range, everything else through Pillow's RGB conversion."""
    if img.mode in WIDE_MODES:
        gray = np.asarray(img, dtype=np.float32) / WIDE_MODES[img.mode]
        return torch.from_numpy(np.clip(gray, 0.0, 1.0))[None].repeat(3, 1, 1)
    return TF.to_dtype(TF.pil_to_tensor(img.convert("RGB")), torch.float32, scale=True)


def decode_side(size: tuple[int, int], crop_scale: tuple[float, float]) -> int:
    """The short side (px) an image needs so that even the smallest training crop (area
    crop_scale[0], aspect 3/4) is at least the output `size`: decoding JPEGs smaller than the
    file (Image.draft, 1/2 to 1/8) down to this keeps all the resolution the output has."""
    return math.ceil(max(size) / math.sqrt(crop_scale[0] * 3 / 4))


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return TF.normalize(image, list(mean), list(std))
