"""The feature cache: features of one encoder on one split, in shards on disk.

Layout: ROOT/<features>/<split>-<fingerprint>/<kind>-<shard:05d>.pt, each file a dict
{"x": [b, ...] float32, "y": [b] int64, "skipped": unreadable images of the shard, and what it
holds: "split", "fingerprint", "kind", "shard", "images" (its positions, b + skipped)}. Shard s
holds the images at positions [s * shard_size, (s + 1) * shard_size) of the split's index list,
and its batches start at the shard's first image, so a shard's features do not depend on which
process made them or on what was extracted before: a killed extraction resumes at the first
missing shard, and N processes each extract the shards s with s % N == rank. Files are written
to a temporary name, flushed to disk and renamed, so a shard on disk is always whole. The
fingerprint (a hash of the weights, the encoder and data sections, the image indices and the
shard size)
names the folder: features of other weights or other images are never mixed in, and once a
split's features are complete the folders of older fingerprints beside it are removed (the
cache holds one set per features and split: evaluating a newer checkpoint replaces it).

What determines the features keys the folder, never where they came from: the weights by
the hash of their bytes (`weights_fingerprint`), so a run branched from an earlier checkpoint,
or another checkpoint copied over the evaluated file, gets features of its own weights. Each
shard also says what it holds (split, fingerprint, kind, shard, images) and is checked when
its extraction is skipped and when it is read: a shard moved from another folder, truncated
(power loss) or unreadable is named and extracted again. Pruning leaves the folders other
processes use (`jepa_core.evaluation.sharing`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from jepa_core.errors import RunError
from jepa_core.runtime.runlog import size_text

FORMAT = 2  # of a shard file; part of every fingerprint, so older folders are pruned


class CacheError(RunError):
    """The feature cache cannot be written or read: a full disk, a cache_dir that is a file,
    a shard changed while it was read."""

    title = "feature cache"


def fingerprint(**parts: Any) -> str:
    """12 hex digits of a hash of JSON-able parts."""
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str).encode()
    return hashlib.blake2b(text, digest_size=6).hexdigest()


def weights_fingerprint(state: Mapping[str, Any]) -> str:
    """16 hex digits of a hash of a state dict's names, dtypes, shapes and bytes: what the
    weights are, wherever they came from (a second or so per GB, far less than extracting)."""
    digest = hashlib.blake2b(digest_size=8)
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{flat.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().data)
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def num_shards(n: int, shard_size: int) -> int:
    """Shards of `shard_size` images (the last one shorter) covering n images."""
    return max(1, -(-n // shard_size))


def shard_rows(n: int, shard_size: int) -> list[int]:
    """Images (positions of the index list) of each shard of a split of n images."""
    return [min(shard_size, n - s * shard_size) for s in range(num_shards(n, shard_size))]


def shard_path(folder: Path, kind: str, shard: int) -> Path:
    """The file of one kind of features of one shard."""
    return folder / f"{kind}-{shard:05d}.pt"


def shard_done(folder: Path, kinds: tuple[str, ...], shard: int) -> bool:
    """Whether every kind of that shard is on disk (each file is whole or absent; whether
    it is the right one, `shard_problem` says)."""
    return all(shard_path(folder, kind, shard).exists() for kind in kinds)


def _label(folder: Path) -> dict[str, str]:
    split, _, key = folder.name.rpartition("-")
    return {"split": split or folder.name, "fingerprint": key}


def shard_problem(folder: Path, kind: str, shard: int, rows: int | None) -> str | None:
    """Why the file of `kind` of `shard` in `folder` cannot be used ("missing", or what is
    wrong with it), or None if it holds what it should: this folder's split and fingerprint,
    this kind and shard, `rows` images (None: unchecked)."""
    return checked_shard(folder, kind, shard, rows)[1]


def checked_shard(folder: Path, kind: str, shard: int, rows: int | None
                  ) -> tuple[dict | None, str | None]:
    """(the shard's dict, memory-mapped, None) if it holds what it should (see
    `shard_problem`), else (None, what is wrong)."""
    path = shard_path(folder, kind, shard)
    if not path.exists():
        return None, "missing"
    try:
        part = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).splitlines()[0].split(". ")[0][:120]  # torch's first sentence
        return None, f"unreadable, truncated or not a shard: {first}"
    problem = content_problem(part, folder, kind, shard, rows)
    return (part, None) if problem is None else (None, problem)


def content_problem(part: Any, folder: Path, kind: str, shard: int, rows: int | None
                    ) -> str | None:
    """What is wrong with a loaded shard dict (see `shard_problem`), or None."""
    if not isinstance(part, dict) or not {"x", "y", "skipped"} <= set(part):
        return "not a feature shard"
    want = {**_label(folder), "kind": kind, "shard": shard}
    held = {key: part.get(key) for key in want}
    if held != want:
        return (f"holds {', '.join(f'{k} {v}' for k, v in held.items())}, not "
                f"{', '.join(f'{k} {v}' for k, v in want.items())}")
    x, y = part["x"], part["y"]
    # a shard of unreadable images only holds no rows (x of shape [0])
    if y.dim() != 1 or len(x) != len(y) or (len(y) and x.dim() < 2):
        return f"features {tuple(x.shape)} do not match labels {tuple(y.shape)}"
    if rows is not None and (part.get("images") != rows or len(y) + int(part["skipped"]) != rows):
        return f"holds {len(y)} + {int(part['skipped'])} unreadable images, not {rows}"
    return None


def write_shard(folder: Path, kind: str, shard: int, x: torch.Tensor, y: torch.Tensor,
                skipped: int) -> None:
    """Write one shard file atomically and durably (temporary name in the same folder,
    space reserved first, fsync, rename); CacheError naming the folder and the space the
    shard needs if the disk (or a file size limit) refuses it, with no temporary left."""
    path = shard_path(folder, kind, shard)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    part = {"x": x.contiguous(), "y": y, "skipped": int(skipped), **_label(folder),
            "kind": kind, "shard": shard, "images": len(y) + int(skipped)}
    need = x.nelement() * x.element_size() + y.nelement() * y.element_size() + 2**16
    try:
        with open(tmp, "wb") as f:
            _reserve(f.fileno(), need)
            torch.save(part, f)
            f.truncate(f.tell())  # the reservation's unused end
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(folder, path, need, exc) from exc
    _sync_folder(folder)


def _reserve(fd: int, size: int) -> None:
    """Allocate `size` bytes of the file now, so a full disk fails here, with its errno,
    rather than half-way through torch.save (whose error says only "unexpected pos")."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
    except AttributeError:  # not on this platform
        pass


def _write_error(folder: Path, path: Path, need: int, exc: BaseException) -> CacheError:
    free = shutil.disk_usage(folder).free
    oserror = isinstance(exc, OSError) and exc.strerror
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
        str(exc).splitlines()[0][:200])
    if oserror and getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "Check that the folder is writable, or point eval.cache_dir at another one"
    else:  # no room (torch.save's own error on a short write says only "unexpected pos")
        fix = ("Free some space, or point eval.cache_dir at a disk with room for the features "
               "(eval.tokens=auto computes the largest ones when read instead)")
    return CacheError(
        f"could not write the feature shard {path.name} to {folder}: {why}. The shard needs "
        f"{size_text(need)}; {size_text(free)} are free on that disk. {fix}; nothing partial was "
        f"left, and the same command resumes at this shard.")


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename into it survives a power loss."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not sync folders
        pass
    finally:
        os.close(fd)


def folder_for(root: Path, features: str, split: str, **parts: Any) -> Path:
    """ROOT/<features>/<split>-<fingerprint of parts>."""
    return Path(root) / features.replace(" ", "_") / f"{split}-{fingerprint(**parts)}"


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
    """A `jepa_core.interfaces.FeatureSet` over the shards of one kind in one folder. `rows`:
    the images each shard should hold (`shard_rows`), checked when the shards are scanned;
    every shard opened is checked to be of this folder, kind and shard (CacheError naming
    the file if not: it changed after the extraction checked it).

    A set of one shard whose float32 features take at most `keep_bytes` keeps them after the
    first read, for as long as the set lives: a probe reads its shards every epoch, and would
    otherwise load and convert (float16 tokens to float32) the same small shard each time.
    A set of several shards, or a larger one, streams one shard at a time as before, so the
    memory of large sets stays bounded by a shard. Callers must not modify a shard's tensors
    in place (the next read returns the same ones)."""

    def __init__(self, folder: Path, kind: str, shards: int, rows: list[int] | None = None,
                 keep_bytes: int = KEEP_BYTES):
        self.folder, self.kind, self.num_shards = Path(folder), kind, shards
        self.rows = rows
        self.keep_bytes = keep_bytes
        self._kept: tuple[torch.Tensor, torch.Tensor] | None = None
        self._labels: torch.Tensor | None = None
        self._sizes: list[int] | None = None
        self._item_shape: tuple[int, ...] | None = None

    def _open(self, shard: int, rows: int | None = None) -> dict:
        path = shard_path(self.folder, self.kind, shard)
        part, problem = checked_shard(self.folder, self.kind, shard, rows)
        if part is not None:
            if len(part["y"]) and self._item_shape not in (None, tuple(part["x"].shape[1:])):
                problem = (f"of another shape: one image's features are "
                           f"{tuple(part['x'].shape[1:])}, in the other shards {self._item_shape}")
            else:
                return part
        raise CacheError(f"the feature shard {path} is {problem}. Remove {self.folder} (the "
                         f"cache of these features) and run the same command again: it "
                         f"extracts them again.")

    def _scan(self) -> None:
        labels, sizes = [], []
        for s in range(self.num_shards):
            part = self._open(s, self.rows[s] if self.rows is not None else None)
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
