"""Image transforms whose randomness comes only from a given torch.Generator.

The paper's training transform is RandomResizedCrop(scale 0.3–1.0, ratio 3/4–4/3) followed by
normalisation; no flips, no colour jitter. torchvision's transform draws from the global RNG,
so the crop box is drawn here from the sample's own generator and then applied with
torchvision's functional ops.
"""

from __future__ import annotations

import math

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


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    return TF.normalize(image, list(mean), list(std))
