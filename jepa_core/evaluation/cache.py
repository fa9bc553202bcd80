"""The feature cache: features of one encoder on one split, in shards on disk.

Layout: ROOT/<features>/<split>-<fingerprint>/<kind>-<shard:05d>.pt, each file a dict
{"x": [b, ...] float32, "y": [b] int64, "skipped": unreadable images of the shard}. Shard s
holds the images at positions [s * shard_size, (s + 1) * shard_size) of the split's index list,
and its batches start at the shard's first image, so a shard's features do not depend on which
process made them or on what was extracted before: a killed extraction resumes at the first
missing shard, and N processes each extract the shards s with s % N == rank. Files are written
to a temporary name and renamed, so a shard on disk is always whole. The fingerprint (a hash of
the weights' origin, the encoder and data sections, the image indices and the shard size)
names the folder: features of other weights or other images are never mixed in, and once a
split's features are complete the folders of older fingerprints beside it are removed (the
cache holds one set per features and split: evaluating a newer checkpoint replaces it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def fingerprint(**parts: Any) -> str:
    """12 hex digits of a hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.blake2b(text, digest_size=6).hexdigest()


def num_shards(n: int, shard_size: int) -> int:
    """Shards of `shard_size` images (the last one shorter) covering n images."""
    return max(1, -(-n // shard_size))


def shard_path(folder: Path, kind: str, shard: int) -> Path:
    """The file of one kind of features of one shard."""
    return folder / f"{kind}-{shard:05d}.pt"


def shard_done(folder: Path, kinds: tuple[str, ...], shard: int) -> bool:
    """Whether every kind of that shard is on disk (each file is whole or absent)."""
    return all(shard_path(folder, kind, shard).exists() for kind in kinds)


def write_shard(folder: Path, kind: str, shard: int, x: torch.Tensor, y: torch.Tensor,
                skipped: int) -> None:
    """Write one shard file atomically (temporary name in the same folder, then rename)."""
    path = shard_path(folder, kind, shard)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"x": x.contiguous(), "y": y, "skipped": int(skipped)}, tmp)
    os.replace(tmp, path)


def folder_for(root: Path, features: str, split: str, **parts: Any) -> Path:
    """ROOT/<features>/<split>-<fingerprint of parts>."""
    return Path(root) / features.replace(" ", "_") / f"{split}-{fingerprint(**parts)}"


def prune_others(folder: Path) -> None:
    """Remove the other fingerprints of the same features and split (older weights, other
    images) beside a complete `folder`."""
    split = folder.name.rsplit("-", 1)[0]
    for other in folder.parent.glob(f"{split}-*"):
        if other != folder and other.is_dir() and other.name.rsplit("-", 1)[0] == split:
            shutil.rmtree(other, ignore_errors=True)


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the OS (glibc's malloc_trim; nothing elsewhere).
    Freed shards, batches of images and activations leave free holes in the heap that
    glibc keeps, and a long evaluation would otherwise show a resident size that creeps up
    with the number of shards it has gone through."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> Any:
    global _TRIM
    if _TRIM is False:
        import ctypes
        import ctypes.util
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            _TRIM = None
    return _TRIM


_TRIM: Any = False


class ShardedFeatures:
    """What every `jepa_core.interfaces.FeatureSet` of shards derives from `shard(s)`,
    `shard_sizes` and `item_shape`: the stream, a subset of rows, everything at once."""

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one image's features."""
        raise NotImplementedError

    @property
    def shard_sizes(self) -> list[int]:
        """Images per shard, in order."""
        raise NotImplementedError

    def shard(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32, y) of shard s."""
        raise NotImplementedError

    def rows_of_shard(self, s: int, inside: torch.Tensor) -> torch.Tensor:
        """x of the rows `inside` shard s (positions within it)."""
        return self.shard(s)[0][inside]

    def shards(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x float32, y) per shard, in order, one shard in memory at a time: the generator
        lets go of a shard before it reads the next (only the caller's loop variables may
        still hold it then)."""
        for s in range(len(self.shard_sizes)):
            x, y = self.shard(s)
            if len(y):
                yield x, y
            del x, y
            release_freed_memory()

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """Features of the rows at sorted positions `rows` (a subset, read shard by shard)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        out, start = [], 0
        for s, size in enumerate(self.shard_sizes):
            inside = rows[(rows >= start) & (rows < start + size)] - start
            if len(inside):
                out.append(self.rows_of_shard(s, inside))
            start += size
        if not out:
            return torch.zeros(0, *self.item_shape)
        return torch.cat(out)

    def load(self) -> torch.Tensor:
        """Every feature as one tensor (for small sets)."""
        parts = [x for x, _ in self.shards()]
        return torch.cat(parts) if parts else torch.zeros(0, *self.item_shape)


# The most bytes of float32 features a CachedFeatures keeps in memory between reads (below).
# The runner holds every kind of both splits of one encoder at once, so up to six such sets
# (pooled, last4, tokens; train and test) may be kept together: 32 MiB each keeps the
# quickstart's tokens (1,438 x 64 x 48 floats, 18 MB) and bounds the whole at 192 MiB.
KEEP_BYTES = 32 << 20


class CachedFeatures(ShardedFeatures):
    """A `jepa_core.interfaces.FeatureSet` over the shards of one kind in one folder.

    A set of one shard whose float32 features take at most `keep_bytes` keeps them after the
    first read, for as long as the set lives: a probe reads its shards every epoch, and would
    otherwise load and convert (float16 tokens to float32) the same small shard each time.
    A set of several shards, or a larger one, streams one shard at a time as before, so the
    memory of large sets stays bounded by a shard. Callers must not modify a shard's tensors
    in place (the next read returns the same ones)."""

    def __init__(self, folder: Path, kind: str, shards: int, keep_bytes: int = KEEP_BYTES):
        self.folder, self.kind, self.num_shards = Path(folder), kind, shards
        self.keep_bytes = keep_bytes
        self._kept: tuple[torch.Tensor, torch.Tensor] | None = None
        self._labels: torch.Tensor | None = None
        self._sizes: list[int] | None = None
        self._item_shape: tuple[int, ...] | None = None

    def _open(self, shard: int) -> dict:
        return torch.load(shard_path(self.folder, self.kind, shard), map_location="cpu",
                          weights_only=True, mmap=True)

    def _scan(self) -> None:
        labels, sizes = [], []
        for s in range(self.num_shards):
            part = self._open(s)
            labels.append(part["y"].clone())
            sizes.append(len(part["y"]))
            if self._item_shape is None and len(part["y"]):
                self._item_shape = tuple(part["x"].shape[1:])
        self._labels, self._sizes = torch.cat(labels), sizes

    @property
    def labels(self) -> torch.Tensor:
        """[n] int64 labels of every cached image, in cache order."""
        if self._labels is None:
            self._scan()
        assert self._labels is not None
        return self._labels

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one image's features."""
        if self._item_shape is None:
            self._scan()
        return self._item_shape or ()

    @property
    def skipped(self) -> int:
        """Unreadable images left out while extracting."""
        return sum(int(self._open(s)["skipped"]) for s in range(self.num_shards))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shard_sizes(self) -> list[int]:
        """Images per shard, in order."""
        return list(self._shard_sizes())

    def _shard_sizes(self) -> list[int]:
        if self._sizes is None:
            self._scan()
        assert self._sizes is not None
        return self._sizes

    def shard(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32, y) of shard s; neither refers to the file (a tensor of a memory-mapped
        file keeps the whole mapping, and the pages read of it, resident while it lives)."""
        if self._kept is not None:
            return self._kept
        part = self._open(s)
        x, y = part["x"].to(torch.float32, copy=True), part["y"].clone()
        if self.num_shards == 1 and x.numel() * x.element_size() <= self.keep_bytes:
            self._kept = x, y
        return x, y

    def rows_of_shard(self, s: int, inside: torch.Tensor) -> torch.Tensor:
        """x of rows of shard s, indexed before the float copy (the rest stays on disk)."""
        if self._kept is not None:
            return self._kept[0][inside]
        return self._open(s)["x"][inside].float()
