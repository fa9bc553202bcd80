"""Video data sources: digits moving in one of 8 directions (embedded) and a folder of videos.

Both implement `jepa_core.interfaces.DataSource` with clips: `get(index, generator)` returns a
normalised [C, T, H, W] float32 clip and an int label. With a generator, the training transform
(one random-resized crop for every frame of the clip; for a video also a random start), drawn
from that generator only; with None, the deterministic evaluation transform (the whole canvas;
the centre clip and centre crop of a video).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from jepa_core.errors import BadSample, ConfigError, RunError
from jepa_core.seeding import derive_seed
from jepa_image.data import _split, held_out, scan_folder
from jepa_image.filetable import FileTable
from jepa_image.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_box,
    normalize,
    resize_center_crop,
)
from jepa_video import configs

DIRECTIONS = 8  # the labels of moving_digits: angle 2*pi*k/8, k = 0 (right) counter-clockwise
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv"}


def crop_clip(frames: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
              generator: torch.Generator) -> torch.Tensor:
    """frames [T, C, H, W] float → [T, C, *size]: one crop box, drawn from `generator`, for
    every frame (so motion inside the clip is kept)."""
    top, left, h, w = crop_box(frames.shape[-2], frames.shape[-1], scale, generator)
    return TF.resized_crop(frames, top, left, h, w, list(size), antialias=True)


def _image_size(config_size: int | None, image_size: tuple[int, int]) -> tuple[int, int]:
    if config_size is not None:
        return (int(config_size), int(config_size))
    return (int(image_size[0]), int(image_size[1]))


class MovingDigits:
    """Clips of one of scikit-learn's digits moving in a straight line across a black canvas
    that wraps around (a torus: what leaves on the right comes back on the left).

    Sample i: label i % 8, the direction; digit, speed (px/frame) and start position are a
    fixed draw of (split, i // 8), the clip's scene: the 8 clips of a scene differ only in
    their direction, so their first frames are the same image, and the start is uniform over
    the torus, so any one frame shows a digit at a uniformly random place whatever the
    direction (on a canvas with edges, where a digit starts would tell). Only the motion
    tells the label."""

    def __init__(self, config: configs.MovingDigitsConfig, image_size: tuple[int, int],
                 train: bool = True):
        from sklearn.datasets import load_digits

        self.config, self.train = config, train
        self.image_size = _image_size(config.img_size, image_size)
        self.num_frames, self.num_classes = config.num_frames, DIRECTIONS
        side = config.digit_size
        if side > min(self.image_size):
            raise ConfigError(f"data.digit_size ({side}) is larger than the canvas "
                              f"{self.image_size}; lower data.digit_size or raise data.img_size.")
        digits = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
        keep = _split(len(digits), config.train_fraction, config.split_seed, train)
        self.digits = F.interpolate(digits[keep], size=(side, side), mode="bilinear",
                                    align_corners=False).clamp(0, 1)[:, 0]  # [n, s, s]
        self.count = config.num_train if train else config.num_test
        self.split = (f"moving_digits {'train' if train else 'test'} split: {self.count} clips "
                      f"of {config.num_frames} frames, digits of the "
                      f"{'train' if train else 'test'} share of scikit-learn's digits "
                      f"(train_fraction {config.train_fraction}, split_seed "
                      f"{config.split_seed})")
        # One normalisation for both splits: the statistics of the first training clips.
        ref = self if train else MovingDigits(config, image_size, train=True)
        self.mean, self.std = ref.statistics() if train else (ref.mean, ref.std)

    def statistics(self, clips: int = 32) -> tuple[float, float]:
        """(mean, std) of the pixels of the first `clips` clips, before normalisation."""
        sample = torch.stack([self.render(i) for i in range(min(clips, self.count))])
        return float(sample.mean()), max(float(sample.std()), 1e-3)

    def __len__(self) -> int:
        return self.count

    def path(self, index: int) -> tuple[int, tuple[float, float], tuple[float, float]]:
        """(digit index, start (y, x) px, step (dy, dx) px per frame) of clip `index`."""
        scene = index // DIRECTIONS
        g = torch.Generator().manual_seed(
            derive_seed("moving_digits", "train" if self.train else "test", scene))
        digit = int(torch.randint(len(self.digits), (), generator=g))
        lo, hi = self.config.speed
        speed = lo + (hi - lo) * float(torch.rand((), generator=g))
        start = tuple(extent * float(torch.rand((), generator=g)) for extent in self.image_size)
        angle = 2 * math.pi * (index % DIRECTIONS) / DIRECTIONS
        # y grows downwards: direction 2 (90 degrees) moves up the picture
        return digit, (start[0], start[1]), (-speed * math.sin(angle), speed * math.cos(angle))

    def render(self, index: int) -> torch.Tensor:
        """Clip `index` in [0, 1], [T, H, W] (one channel)."""
        digit, (y0, x0), (dy, dx) = self.path(index)
        side = self.config.digit_size
        first = torch.zeros(self.image_size)
        first[:side, :side] = self.digits[digit]
        return torch.stack([first.roll((int(round(y0 + t * dy)), int(round(x0 + t * dx))),
                                       dims=(0, 1)) for t in range(self.num_frames)])

    def get(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """(clip [C, T, H, W] float32 normalised, direction label 0..7)."""
        frames = self.render(index)[:, None]  # [T, 1, H, W]
        if generator is not None:
            frames = crop_clip(frames, self.image_size, self.config.crop_scale, generator)
        clip = ((frames - self.mean) / self.std).expand(-1, self.config.channels, -1, -1)
        return clip.permute(1, 0, 2, 3).contiguous(), index % DIRECTIONS


def build_moving_digits(config: configs.MovingDigitsConfig, image_size: tuple[int, int],
                        train: bool = True) -> MovingDigits:
    """The registered factory of the "moving_digits" source."""
    return MovingDigits(config, image_size, train)


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise ConfigError(
            "data source video_folder decodes videos with PyAV, which is not installed: "
            "pip install av (or pip install 'jepa-core[video]'), or choose another data "
            "source (data.name: moving_digits needs no download).") from exc
    return av


class VideoFolder:
    """(file, label) pairs of root/<class>/<video files>, decoded with PyAV.

    A clip is `num_frames` frames `frame_step` apart (a span of (num_frames - 1) * frame_step
    + 1 frames). A file PyAV cannot read, or with fewer frames than the span, is a `BadSample`
    (skipped and counted as unreadable images are), or a RunError with on_error "raise"."""

    def __init__(self, files: FileTable, classes: list[str],
                 config: configs.VideoFolderConfig, image_size: tuple[int, int], split: str):
        self.files, self.classes, self.split = files, classes, split
        self.num_classes = len(classes)
        self.config, self.image_size = config, (int(image_size[0]), int(image_size[1]))
        self.span = (config.num_frames - 1) * config.frame_step + 1

    def __len__(self) -> int:
        return len(self.files)

    def _bad(self, message: str, hint: str) -> Exception:
        if self.config.on_error == "raise":
            return RunError(f"{message} ({hint}, or set data.on_error: skip to skip such files)")
        return BadSample(message)

    def _frames(self, path: Path, generator: torch.Generator | None) -> torch.Tensor:
        """The clip's frames as [T, 3, H, W] uint8: a random start (training) or the centre."""
        av = _import_av()
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                total = stream.frames or sum(1 for p in container.demux(stream) if p.size)
                if total < self.span:
                    raise self._bad(f"video {path} has {total} frames, fewer than a clip spans "
                                    f"({self.span}: data.num_frames {self.config.num_frames} "
                                    f"x data.frame_step {self.config.frame_step})",
                                    "lower data.num_frames or data.frame_step")
                room = total - self.span
                start = (room // 2 if generator is None
                         else int(torch.randint(room + 1, (), generator=generator)))
                wanted = range(start, start + self.span, self.config.frame_step)
                container.seek(0)
                frames = []
                for i, frame in enumerate(container.decode(stream)):
                    if i in wanted:
                        frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                    if i >= wanted[-1]:
                        break
        except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
            raise self._bad(f"cannot read video {path}: {exc}", "fix or remove the file") from exc
        if len(frames) < self.config.num_frames:  # the header promised more than decoded
            raise self._bad(f"video {path} decodes to fewer frames than a clip spans "
                            f"({self.span})", "lower data.num_frames or data.frame_step")
        return torch.stack(frames).permute(0, 3, 1, 2)

    def get(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """(clip [3, T, H, W] float32 normalised with ImageNet's statistics, label)."""
        path, label = self.files[index]
        frames = TF.to_dtype(self._frames(path, generator), torch.float32, scale=True)
        if generator is not None:
            frames = crop_clip(frames, self.image_size, self.config.crop_scale, generator)
        else:
            frames = resize_center_crop(frames, self.image_size)
        clip = normalize(frames, IMAGENET_MEAN, IMAGENET_STD)
        return clip.permute(1, 0, 2, 3).contiguous(), label


def _videos(name: str, root: str | None, max_videos: int | None
            ) -> tuple[Path, list, FileTable]:
    path = Path(root or "").expanduser()
    if root is None or not path.is_dir():
        raise RunError(f"data.{name} {str(path)!r} is not a directory of videos "
                       f"(root/<class>/<video>.mp4). Set it in the recipe or on the command "
                       f"line (data.{name}=/path/to/videos).")
    classes, files = scan_folder(path, f"data.{name}", keep=_is_video)
    if not len(files):
        raise RunError(f"data.{name} {path} holds no videos ({', '.join(sorted(VIDEO_EXTENSIONS))}"
                       f"): expected class folders {path}/<class>/<video>; check data.{name}.")
    return path, classes, files.head(max_videos) if max_videos else files


def build_video_folder(config: configs.VideoFolderConfig, image_size: tuple[int, int],
                       train: bool = True) -> VideoFolder:
    """Training videos (train=True) or evaluation videos: data.val_root if set, else the
    held-out slice of data.root (chosen as the image folder chooses it), which training
    leaves out. A missing PyAV is a ConfigError now, not at the first sample."""
    _import_av()
    if config.val_root is not None and not train:
        val, classes, files = _videos("val_root", config.val_root, config.max_videos)
        return VideoFolder(files, classes, config, image_size,
                           f"val_root {val}: {len(files)} videos")
    root, classes, files = _videos("root", config.root, config.max_videos)
    if config.val_root is not None or config.val_fraction == 0:
        if not train:
            raise RunError("no videos are held out for evaluation: data.val_root is not set "
                           "and data.val_fraction is 0. Set data.val_root=/path/to/val.")
        return VideoFolder(files, classes, config, image_size,
                           f"root {root}: {len(files)} videos")
    held = held_out(files, config.val_fraction, config.split_seed)
    mine = files.select(~held if train else held)
    if not len(mine):
        raise RunError(f"data.root {root} has no class with 2 or more videos, so none can be "
                       f"held out for evaluation; set data.val_root.")
    share = f"{100 * config.val_fraction:.3g}%"
    what = (f"root {root} minus the held-out {share}" if train
            else f"held-out {share} of root {root}")
    return VideoFolder(mine, classes, config, image_size,
                       f"{what} (split_seed {config.split_seed}): {len(mine)} videos")
