"""What each set of features is made of: an encoder's kinds, raw pixels, and one streamed
extraction pass that fills the cache (`jepa_core.evaluation.cache`) shard by shard."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from jepa_core.errors import BadSample, RunError
from jepa_core.evaluation import cache, sharing

Extract = Callable[[torch.Tensor], dict[str, torch.Tensor]]
PIXEL_KINDS = ("pooled", "tokens")  # raw pixels have no layers


class _Images(torch.utils.data.Dataset):
    """The images at `indices` of a data source, evaluation transform; None if unreadable."""

    def __init__(self, source: Any, indices: list[int]):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        try:
            return self.source.get(self.indices[i], None)
        except BadSample:  # unreadable: left out and counted, as in training
            return None


def collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """(images [b, C, H, W], labels [b], unreadable images left out); None, None if all were."""
    kept = [item for item in items if item is not None]
    if not kept:
        return None, None, len(items)
    return (torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept]),
            len(items) - len(kept))


def image_batches(source: Any, indices: list[int], batch_size: int, num_workers: int,
                  ticker: Any = None) -> Iterator[tuple[Any, Any, int]]:
    """(images, labels, unreadable images) per batch of the images at `indices` (evaluation
    transform); images and labels are None for a batch of unreadable images only. The ticker
    advances by every image read."""
    loader = torch.utils.data.DataLoader(_Images(source, indices), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=collate)
    for images, y, bad in loader:
        if ticker is not None:
            ticker.advance(bad + (0 if images is None else len(images)))
        yield images, y, bad


def encoder_kinds(model: torch.nn.Module, kinds: set[str]) -> tuple[str, ...]:
    """The kinds of `kinds` this encoder can give ("last4" needs `layer_tokens`)."""
    return tuple(k for k in ("pooled", "last4", "tokens")
                 if k in kinds and (k != "last4" or hasattr(model, "layer_tokens")))


def encoder_extract(model: torch.nn.Module, kinds: tuple[str, ...], device: torch.device
                    ) -> Extract:
    """images -> {kind: features} of one encoder (eval mode, no grad, float32 on the CPU;
    tokens as float16, the one kind that is large)."""
    model.eval()

    @torch.no_grad()
    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.to(device)
        if "last4" in kinds:
            layers = model.layer_tokens(x, 4)  # type: ignore[operator]
            last = layers[-1]
        else:
            layers, last = None, model(x)
        out = {}
        if "pooled" in kinds:
            out["pooled"] = last.float().mean(dim=1).cpu()
        if "last4" in kinds:
            out["last4"] = torch.cat([t.float().mean(dim=1) for t in layers], dim=1).cpu()
        if "tokens" in kinds:
            out["tokens"] = last.half().cpu()
        return out

    return run


def pixel_extract(kinds: tuple[str, ...], patch: tuple[int, ...]) -> Extract:
    """Raw pixels of images [b, C, H, W] or clips [b, C, T, H, W]: "pooled" = each frame
    pooled to at most 16x16 (and a clip to at most 8 time steps), flattened; "tokens" = its
    patches flattened, one token per patch: `patch` (ph, pw) for images, (pt, ph, pw) for
    clips (pt: frames per tubelet)."""
    def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if "pooled" in kinds:
            side = min(16, images.shape[-1])
            if images.dim() == 4:
                out["pooled"] = F.adaptive_avg_pool2d(images, side).flatten(1).float()
            else:
                size = (min(8, images.shape[2]), min(16, images.shape[-2]), side)
                out["pooled"] = F.adaptive_avg_pool3d(images, size).flatten(1).float()
        if "tokens" in kinds:
            out["tokens"] = patch_tokens(images, patch).half()
        return out

    return run


def patch_tokens(images: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """[b, C, *S] (S: (H, W) or (T, H, W)) → [b, N, C * prod(patch)], the patches of size
    `patch` (one per spatial axis of S, trailing axes if fewer) in raster order, each
    flattened channel first."""
    if images.dim() == 4 and len(patch) >= 2:
        ph, pw = patch[-2:]
        t = F.unfold(images, kernel_size=(ph, pw), stride=(ph, pw))  # [b, C*ph*pw, N]
        return t.transpose(1, 2)
    axes = images.shape[2:]
    sizes = tuple(patch[-len(axes):])
    b, c = images.shape[:2]
    split = [b, c]
    for extent, size in zip(axes, sizes, strict=True):
        split += [extent // size, size]
    whole = tuple(slice(0, (e // s) * s) for e, s in zip(axes, sizes, strict=True))
    cut = images[(slice(None), slice(None)) + whole]
    x = cut.reshape(split)
    n = len(axes)
    order = [0, *range(2, 2 + 2 * n, 2), 1, *range(3, 3 + 2 * n, 2)]
    return x.permute(order).reshape(b, -1, c * math.prod(sizes))


def first_frame_only(extract: Extract) -> Extract:
    """The same features of clips [b, C, T, H, W] whose frames all equal their first frame:
    what the encoder sees without motion (the single-frame baseline)."""
    def run(clips: torch.Tensor) -> dict[str, torch.Tensor]:
        return extract(clips[:, :, :1].expand_as(clips).contiguous())

    return run


def extract_split(extractors: dict[str, tuple[Extract, tuple[str, ...], Path]], source: Any,
                  indices: list[int], shard_size: int, batch_size: int, num_workers: int,
                  rank: int = 0, world: int = 1, ticker: Any = None,
                  note: Callable[[str], None] | None = None) -> None:
    """Fill the cache folders of every extractor {name: (extract, kinds, folder)} with the
    shards of this process (s % world == rank) that are not on disk yet, or are on disk but
    do not hold what they should (`cache.shard_problem`: `note` says which and why), reading
    each image once for all of them."""
    for _, _, folder in extractors.values():
        sharing.remove_stale_temporaries(folder)
    shards = cache.num_shards(len(indices), shard_size)
    for s in range(rank, shards, world):
        part = indices[s * shard_size:(s + 1) * shard_size]
        todo = {name: spec for name, spec in extractors.items()
                if not shard_usable(spec[2], spec[1], s, len(part), note)}
        if not todo:
            if ticker is not None:
                ticker.advance(len(part), cached=True)
            continue
        buffers = ShardBuffers(len(part))
        skipped = 0
        for images, y, bad in image_batches(source, part, batch_size, num_workers, ticker):
            skipped += bad
            if images is None:
                continue
            buffers.add("labels", y)
            for name, (extract, _, _) in todo.items():
                for kind, feats in extract(images).items():
                    buffers.add((name, kind), feats)
        y_all = buffers.get("labels", dtype=torch.long)
        for name, (_, kinds, folder) in todo.items():
            folder.mkdir(parents=True, exist_ok=True)
            for kind in kinds:
                cache.write_shard(folder, kind, s, buffers.get((name, kind)), y_all, skipped)
        del buffers, y_all
        cache.release_freed_memory()


def shard_usable(folder: Path, kinds: tuple[str, ...], shard: int, rows: int,
                 note: Callable[[str], None] | None) -> bool:
    """Whether every kind of a shard is on disk and holds what it should; a file that does
    not is removed (and named to `note`), to be extracted again."""
    usable = True
    for kind in kinds:
        problem = cache.shard_problem(folder, kind, shard, rows)
        if problem is None:
            continue
        usable = False
        if problem != "missing":
            path = cache.shard_path(folder, kind, shard)
            path.unlink(missing_ok=True)
            if note is not None:
                note(f"the feature shard {path} cannot be used ({problem}): extracting it "
                     f"again.")
    return usable


class ShardBuffers:
    """The features of one shard, written batch by batch into one tensor per key allocated at
    the shard's full size (not a list of batches joined at the end): a shard costs its own
    size once, and the same large blocks are reused from shard to shard."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.data: dict[Any, torch.Tensor] = {}
        self.filled: dict[Any, int] = {}

    def add(self, key: Any, rows: torch.Tensor) -> None:
        """Append `rows` [b, ...] under `key`."""
        if key not in self.data:
            self.data[key] = torch.empty(self.capacity, *rows.shape[1:], dtype=rows.dtype)
            self.filled[key] = 0
        at = self.filled[key]
        self.data[key][at:at + len(rows)] = rows
        self.filled[key] = at + len(rows)

    def get(self, key: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The rows added under `key` ([0] of `dtype` if none were). A copy when unreadable
        images left the buffer short: torch.save would write a view's whole storage."""
        if key not in self.data:
            return torch.zeros(0, dtype=dtype)
        data, filled = self.data[key], self.filled[key]
        return data if filled == len(data) else data[:filled].clone()


class TokensOnTheFly(cache.ShardedFeatures):
    """A `FeatureSet` of token features computed when a shard is read, never stored: for
    token caches that would not fit on disk. Shard s holds the same images, in the same
    batches, as the cached shard s would; labels and sizes come from the cached `pooled`
    features of the same images."""

    kind = "tokens"

    def __init__(self, extract: Extract, source: Any, indices: list[int], shard_size: int,
                 batch_size: int, num_workers: int, pooled: Any, item_shape: tuple[int, ...]):
        self.extract, self.source, self.indices = extract, source, indices
        self.shard_size, self.batch_size, self.num_workers = shard_size, batch_size, num_workers
        self.pooled, self._item_shape = pooled, item_shape

    @property
    def item_shape(self) -> tuple[int, ...]:
        """[N, D] of one image's tokens."""
        return self._item_shape

    @property
    def labels(self) -> torch.Tensor:
        """[n] labels, from the cached pooled features of the same images."""
        return self.pooled.labels

    @property
    def shard_sizes(self) -> list[int]:
        """Images per shard (readable ones), as cached."""
        return self.pooled.shard_sizes

    def __len__(self) -> int:
        return len(self.pooled)

    def shard(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens float32, labels) of shard s, computed now."""
        part = self.indices[s * self.shard_size:(s + 1) * self.shard_size]
        xs, ys = [], []
        for images, y, _ in image_batches(self.source, part, self.batch_size,
                                          self.num_workers):
            if images is not None:
                xs.append(self.extract(images)["tokens"].float())
                ys.append(y)
        if not xs:
            return torch.zeros(0, *self.item_shape), torch.zeros(0, dtype=torch.long)
        return torch.cat(xs), torch.cat(ys)


def tokens_bytes(n: int, tokens: int, dim: int) -> int:
    """Bytes a token cache of n images takes (float16)."""
    return n * tokens * dim * 2


def wait_for_shards(folders: list[tuple[Path, tuple[str, ...]]], shards: int,
                    stall_s: float = 600.0, poll_s: float = 0.5, rank: int = 0,
                    world: int = 1) -> None:
    """Block until every shard of every folder that the other processes extract (s % world
    != rank) is on disk; RunError if none appears for `stall_s` seconds (a peer died). This
    process's own shards are not waited for: the check pass after (`extract_split`) makes
    any that went missing again."""
    theirs = [s for s in range(shards) if s % world != rank]

    def missing() -> int:
        return sum(not cache.shard_done(f, kinds, s) for f, kinds in folders for s in theirs)

    left, since = missing(), time.monotonic()
    while left:
        time.sleep(poll_s)
        now_left = missing()
        if now_left < left:
            left, since = now_left, time.monotonic()
        elif time.monotonic() - since > stall_s:
            raise RunError(f"{left} feature shard(s) under {folders[0][0].parent} did not "
                           f"appear for {stall_s:.0f} s: another extracting process has "
                           f"stopped. Run the same command again; it resumes at the missing "
                           f"shards.")
