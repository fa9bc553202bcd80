"""Data sources: scikit-learn's digits (embedded), an image folder, and synthetic images.

Each implements `jepa_core.interfaces.DataSource`: `get(index, generator)` returns a normalised
[C, H, W] float32 image and an int label; with a generator it applies the training transform
(RandomResizedCrop, drawn from that generator), with None the evaluation transform.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from jepa_core.errors import BadSample, ConfigError, RunError
from jepa_core.seeding import derive_seed
from jepa_image import configs
from jepa_image.transforms import (IMAGENET_MEAN, IMAGENET_STD, normalize, random_resized_crop,
                                   resize_center_crop)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"}


def _split(n: int, fraction: float, seed: int, train: bool) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "split")))
    cut = int(round(n * fraction))
    return order[:cut] if train else order[cut:]


class TensorImages:
    """Images held in memory as one [N, C, S, S] tensor in [0, 1], with labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 image_size: tuple[int, int], crop_scale: tuple[float, float]):
        self.images, self.labels = images, labels
        self.num_classes = num_classes
        self.image_size = tuple(image_size)
        self.crop_scale = crop_scale
        self.mean = tuple(float(m) for m in images.mean(dim=(0, 2, 3)))
        self.std = tuple(max(float(s), 1e-3) for s in images.std(dim=(0, 2, 3)))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if generator is not None:
            image = random_resized_crop(image, self.image_size, self.crop_scale, generator)
        elif tuple(image.shape[-2:]) != self.image_size:
            image = F.interpolate(image[None], size=self.image_size, mode="bilinear",
                                  align_corners=False, antialias=True)[0]
        return normalize(image, self.mean, self.std), int(self.labels[index])


def build_digits(config: configs.DigitsConfig, image_size: tuple[int, int], train: bool = True
                 ) -> TensorImages:
    """The 1,797 8×8 digits bundled with scikit-learn, upsampled to `image_size`, 3 channels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    keep = _split(len(labels), config.train_fraction, config.split_seed, train)
    images = F.interpolate(images[keep], size=tuple(image_size), mode="bilinear",
                           align_corners=False).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    return TensorImages(images, labels[keep], 10, image_size, config.crop_scale)


class ImageFolder:
    """root/<class>/<image files>, classes in sorted order; images read with Pillow."""

    def __init__(self, root: Path, image_size: tuple[int, int], crop_scale: tuple[float, float],
                 on_error: str, max_images: int | None = None):
        self.root = root
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        files = [(path, label) for label, cls in enumerate(self.classes)
                 for path in sorted((root / cls).rglob("*"))
                 if path.suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise RunError(f"data root {root} holds no images in class folders "
                           f"(expected {root}/<class>/<image>.jpg); check data.root.")
        self.files = files[:max_images] if max_images else files
        self.num_classes = len(self.classes)
        self.image_size, self.crop_scale, self.on_error = tuple(image_size), crop_scale, on_error

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path) -> torch.Tensor:
        from PIL import Image
        import torchvision.transforms.v2.functional as TF

        try:
            with Image.open(path) as img:
                return TF.to_dtype(TF.pil_to_tensor(img.convert("RGB")), torch.float32, scale=True)
        except (OSError, ValueError, SyntaxError) as exc:
            message = f"cannot read image {path}: {exc}"
            if self.on_error == "raise":
                raise RunError(message + " (set data.on_error: skip to skip such files)") from exc
            raise BadSample(message) from exc

    def get(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        path, label = self.files[index]
        image = self._read(path)
        if generator is not None:
            image = random_resized_crop(image, self.image_size, self.crop_scale, generator)
        else:
            image = resize_center_crop(image, self.image_size)
        return normalize(image, IMAGENET_MEAN, IMAGENET_STD), label


def build_image_folder(config: configs.ImageFolderConfig, image_size: tuple[int, int],
                       train: bool = True) -> ImageFolder:
    root = config.root if train or config.val_root is None else config.val_root
    path = Path(root).expanduser()
    if not path.is_dir():
        raise RunError(f"data.root {str(path)!r} is not a directory. Set it in the recipe, "
                       f"on the command line (data.root=/path/to/imagenet/train) or through the "
                       f"environment variable the recipe names (e.g. ${{IMAGENET_ROOT}}).")
    return ImageFolder(path, image_size, config.crop_scale, config.on_error, config.max_images)


class SyntheticImages:
    """Oriented gratings whose orientation and frequency depend on the class, plus noise."""

    def __init__(self, config: configs.SyntheticConfig, image_size: tuple[int, int]):
        if config.channels < 1:
            raise ConfigError("data.channels must be >= 1")
        self.config, self.image_size = config, tuple(image_size)
        self.num_classes = config.num_classes

    def __len__(self) -> int:
        return self.config.num_images

    def get(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        label = index % self.num_classes
        g = torch.Generator().manual_seed(derive_seed("synthetic", index))
        h, w = self.image_size
        angle = torch.tensor(torch.pi * label / self.num_classes)
        freq = 2.0 + 3.0 * (label % 3)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        phase = float(torch.rand((), generator=g)) * 2 * torch.pi
        wave = torch.sin(2 * torch.pi * freq * (xx * torch.cos(angle) + yy * torch.sin(angle)) + phase)
        image = wave.expand(self.config.channels, h, w) + 0.3 * torch.randn(
            self.config.channels, h, w, generator=g)
        if generator is not None:
            image = random_resized_crop(image, self.image_size, (0.5, 1.0), generator)
        return image.float(), label


def build_synthetic(config: configs.SyntheticConfig, image_size: tuple[int, int],
                    train: bool = True) -> SyntheticImages:
    return SyntheticImages(config, image_size)
