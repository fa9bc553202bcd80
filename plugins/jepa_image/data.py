"""Data sources: scikit-learn's digits (embedded), an image folder, and synthetic images.

Each implements `jepa_core.interfaces.DataSource`: `get(index, generator)` returns a normalised
[C, H, W] float32 image and an int label; with a generator it applies the training transform
(RandomResizedCrop, drawn from that generator), with None the evaluation transform. Each also
has `split`: one line saying which images it holds (printed with the probes and in eval.json).
Built with train=False, a source holds the evaluation images, which training never sees.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F

from jepa_core.errors import BadSample, ConfigError, RunError
from jepa_core.seeding import derive_seed
from jepa_image import configs
from jepa_image.filetable import FileTable
from jepa_image.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_side,
    normalize,
    pil_to_float,
    random_resized_crop,
    resize_center_crop,
)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"}


def _split(n: int, fraction: float, seed: int, train: bool) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "split")))
    cut = int(round(n * fraction))
    return order[:cut] if train else order[cut:]


class TensorImages:
    """Images held in memory as one [N, C, S, S] tensor in [0, 1], with labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 image_size: tuple[int, int], crop_scale: tuple[float, float], split: str = ""):
        self.images, self.labels, self.split = images, labels, split
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
    share = config.train_fraction if train else 1 - config.train_fraction
    split = (f"digits {'train' if train else 'test'} split ({100 * share:.3g}% of "
             f"{len(labels)}, split_seed {config.split_seed}): {len(keep)} images")
    return TensorImages(images, labels[keep], 10, image_size, config.crop_scale, split)


def _unreadable_dir(exc: OSError) -> NoReturn:
    raise RunError(f"cannot read the directory {exc.filename} in the data folder "
                   f"({exc.strerror}): its images would be left out without a word (a class "
                   f"folder: the run would train on fewer classes). Make it readable (e.g. "
                   f"chmod -R a+rX {exc.filename}) or move it out of the data folder.") from exc


UNLABELLED = -1  # the label of every image of a flat (unlabelled) folder


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _regular(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows a symlink: a link to a regular file counts
    except OSError:  # e.g. a link into a folder it may not enter: read, failed and counted
        return True


def regular_files(top: Path, keep: Callable[[Path], bool]) -> Iterator[Path]:
    """The regular files under `top` whose names `keep` accepts, in no set order: FIFOs,
    sockets, device files, directories named like images and links to any of those are not
    samples (opening a FIFO waits for a writer, deaf to SIGTERM). Links to directories are not
    followed (as os.walk). A directory that cannot be listed is an error naming it."""
    try:
        with os.scandir(top) as listing:
            entries = list(listing)
    except OSError as exc:
        _unreadable_dir(exc)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from regular_files(Path(entry.path), keep)
        elif keep(Path(entry.name)) and _regular(entry):
            yield Path(entry.path)


def scan_folder(root: Path, key: str = "data.root", keep: Callable[[Path], bool] = _is_image
                ) -> tuple[list[str], FileTable]:
    """(class names, sorted; the files with their labels, sorted by class, then path) of
    root/<class>/... that `keep` accepts (images by their extension unless told otherwise),
    as a compact `FileTable` (listed one class at a time).

    A folder whose class folders hold no images but which holds images itself (root/<image>,
    the usual self-supervised layout) is unlabelled: no classes, every label UNLABELLED.
    A directory that cannot be listed is an error naming it, not an empty class."""
    try:
        entries = list(root.iterdir())
        classes = sorted(p.name for p in entries if p.is_dir())
    except OSError as exc:
        raise RunError(f"cannot read the directory {root} ({exc.strerror}), which {key} names. "
                       f"Make it readable (e.g. chmod -R a+rX {root}) or set {key} to "
                       f"another folder.") from exc

    def listed(cls: str) -> list[Path]:
        return sorted(regular_files(root / cls, keep))

    files = FileTable.build(root, ((label, listed(cls)) for label, cls in enumerate(classes)))
    if not len(files):
        loose = sorted(p for p in entries if keep(p) and p.is_file())
        if loose:
            return [], FileTable.build(root, [(UNLABELLED, loose)])
    return classes, files


def holdout_count(n: int, fraction: float) -> int:
    """Images held out of a class of n: fraction·n rounded, at least 1 and at most n - 1
    (training keeps one) when n >= 2 and fraction > 0."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, int(fraction * n + 0.5)))


def held_out(files: FileTable, fraction: float, seed: int) -> torch.Tensor:
    """[n] bool, which files are held out for evaluation: in each class, the
    holdout_count(n, fraction) files with the smallest hash of (seed, path under the root).
    A pure function of the file list and the seed (not of where the root is); adding a file
    changes the split by a file or two."""
    out = torch.zeros(len(files), dtype=torch.bool)
    for label in torch.unique(files.labels).tolist():
        members = (files.labels == label).nonzero().squeeze(1).tolist()
        members.sort(key=lambda i: derive_seed(seed, "holdout", files.relative(i)))
        out[members[:holdout_count(len(members), fraction)]] = True
    return out


class ImageFolder:
    """(file, label) pairs of root/<class>/<image files>, images read with Pillow; with no
    classes (a flat folder) every label is UNLABELLED and num_classes is 0.

    An image of more than `max_pixels` pixels (counted before decoding; JPEGs at the reduced
    size they are decoded at) or one Pillow cannot read is a `BadSample` (or a RunError with
    on_error "raise")."""

    def __init__(self, files: FileTable, classes: list[str],
                 image_size: tuple[int, int], crop_scale: tuple[float, float], on_error: str,
                 max_pixels: int | None = None, split: str = ""):
        self.files, self.classes, self.split = files, classes, split
        self.num_classes = len(classes)
        self.image_size, self.crop_scale, self.on_error = tuple(image_size), crop_scale, on_error
        self.max_pixels = max_pixels
        self.decode_side = decode_side(self.image_size, crop_scale)

    def __len__(self) -> int:
        return len(self.files)

    def _bad(self, message: str, hint: str) -> Exception:
        if self.on_error == "raise":
            return RunError(f"{message} ({hint}, or set data.on_error: skip to skip such files)")
        return BadSample(message)

    def _read(self, path: Path) -> torch.Tensor:
        """The file as [3, H, W] float32 in [0, 1]."""
        from PIL import Image

        try:
            with warnings.catch_warnings():
                # Pillow warns above 89 MP; max_image_pixels is the limit that counts here
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:  # reads the header only
                    return self._decode(img, path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise self._bad(f"cannot read image {path}: {exc}", "fix or remove the file") from exc

    def _decode(self, img: Any, path: Path) -> torch.Tensor:
        """An opened (not yet decoded) image, refused if too large, as [3, H, W] float32."""
        if img.format == "JPEG":  # decode at 1/2..1/8 size where that is still enough
            img.draft(None, (self.decode_side, self.decode_side))
        w, h = img.size
        if self.max_pixels is not None and w * h > self.max_pixels:
            raise self._bad(f"image {path} is {w}x{h} = {w * h / 1e6:.0f} megapixels, more "
                            f"than data.max_image_pixels ({self.max_pixels:,}); not decoded",
                            "raise data.max_image_pixels to read it")
        return pil_to_float(img)

    def get(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        path, label = self.files[index]
        image = self._read(path)
        if generator is not None:
            image = random_resized_crop(image, self.image_size, self.crop_scale, generator)
        else:
            image = resize_center_crop(image, self.image_size)
        return normalize(image, IMAGENET_MEAN, IMAGENET_STD), label


def _folder(name: str, root: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise RunError(f"data.{name} {str(path)!r} is not a directory. Set it in the recipe, "
                       f"on the command line (data.{name}=/path/to/imagenet/"
                       f"{'train' if name == 'root' else 'val'}) or through the environment "
                       f"variable the recipe names (e.g. ${{IMAGENET_ROOT}}).")
    return path


def _scan(name: str, path: Path, max_images: int | None) -> tuple[list[str], FileTable]:
    classes, files = scan_folder(path, f"data.{name}")
    if not len(files):
        raise RunError(f"data.{name} {path} holds no images: expected class folders "
                       f"({path}/<class>/<image>.jpg, labelled) or images directly in it "
                       f"({path}/<image>.jpg, unlabelled); check data.{name}.")
    return classes, files.head(max_images) if max_images else files


def build_image_folder(config: configs.ImageFolderConfig, image_size: tuple[int, int],
                       train: bool = True) -> ImageFolder:
    """Training images (train=True) or evaluation images: data.val_root if set, else the
    held-out slice of data.root, which the training images then leave out."""
    def make(classes: list[str], files: FileTable, split: str) -> ImageFolder:
        kind = "" if classes else ", unlabelled (no class folders)"
        return ImageFolder(files, classes, image_size, config.crop_scale, config.on_error,
                           config.max_image_pixels, f"{split}: {len(files)} images{kind}")

    if config.val_root is not None and not train:
        val = _folder("val_root", config.val_root)
        return make(*_scan("val_root", val, config.max_images), f"val_root {val}")
    root = _folder("root", config.root)
    classes, files = _scan("root", root, config.max_images)
    if config.val_root is not None or config.val_fraction == 0:
        if not train:
            raise RunError("no images are held out for evaluation: data.val_root is not set "
                           "and data.val_fraction is 0. Set data.val_root=/path/to/val (a "
                           "data.val_fraction set only now would test the probes on images "
                           "the encoder was trained on).")
        return make(classes, files, f"root {root}")
    held = held_out(files, config.val_fraction, config.split_seed)
    share = f"{100 * config.val_fraction:.3g}%"
    if train:
        return make(classes, files.select(~held),
                    f"root {root} minus the held-out {share} (split_seed {config.split_seed})")
    test = files.select(held)
    if not len(test):
        raise RunError(f"data.root {root} has no class with 2 or more images, so none can be "
                       f"held out for evaluation; set data.val_root.")
    return make(classes, test, f"held-out {share} of root {root} (split_seed "
                               f"{config.split_seed})")


class SyntheticImages:
    """Oriented gratings whose orientation and frequency depend on the class, plus noise."""

    def __init__(self, config: configs.SyntheticConfig, image_size: tuple[int, int],
                 train: bool = True):
        if config.channels < 1:
            raise ConfigError("data.channels must be >= 1")
        self.config, self.image_size = config, tuple(image_size)
        self.num_classes = config.num_classes
        # Evaluation images are other draws of the same classes (noise and phase of indices
        # num_images..2*num_images-1), so probes are not tested on training images.
        self.offset = 0 if train else config.num_images
        self.split = (f"synthetic, {'training' if train else 'evaluation (unseen)'} draws: "
                      f"{config.num_images} images")

    def __len__(self) -> int:
        return self.config.num_images

    def get(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        label = index % self.num_classes
        g = torch.Generator().manual_seed(derive_seed("synthetic", index + self.offset))
        h, w = self.image_size
        angle = torch.tensor(torch.pi * label / self.num_classes)
        freq = 2.0 + 3.0 * (label % 3)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        phase = float(torch.rand((), generator=g)) * 2 * torch.pi
        along = xx * torch.cos(angle) + yy * torch.sin(angle)
        wave = torch.sin(2 * torch.pi * freq * along + phase)
        image = wave.expand(self.config.channels, h, w) + 0.3 * torch.randn(
            self.config.channels, h, w, generator=g)
        if generator is not None:
            image = random_resized_crop(image, self.image_size, (0.5, 1.0), generator)
        return image.float(), label


def build_synthetic(config: configs.SyntheticConfig, image_size: tuple[int, int],
                    train: bool = True) -> SyntheticImages:
    return SyntheticImages(config, image_size, train)
