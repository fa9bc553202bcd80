"""The masking collator: stacks (image, label) samples and draws the batch's masks.

The masks of global step s are drawn by the masker from `mask_generator(seed, s)`, a generator
seeded from (seed, "masks", s) alone, so they are the same whatever the number of DataLoader
workers, the order in which workers finish, or a resume at step s.

torch's DataLoader does not tell `collate_fn` which step a batch belongs to, so the step
travels with the indices:

    sampler = StepBatchSampler(BatchSampler(sampler, batch_size, drop_last=True), start_step)
    loader = DataLoader(StepDataset(dataset), batch_sampler=sampler,
                        collate_fn=collator.collate_fn, num_workers=...)
    for batch in loader:  # MaskedBatch(images, labels, masks, step)

`StepBatchSampler` yields [(step, index), ...] per batch; `StepDataset` answers
dataset[(step, index)] with (step, dataset[index]); `MaskingCollator.collate_fn` reads the step
back and calls `collator(samples, step)`, which a loop without DataLoader can call directly.

Several processes (GPUs): give the collator `global_batch_size` and each process its `offset`
(rank * per-process batch). It then draws the masks of the whole global batch and keeps rows
[offset, offset + B): an image gets the same masks whatever the number of processes, and every
process gets the same context length (it is equalised over the global batch).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import attrs
import torch

from jepa_core.interfaces import Masker, MaskBatch
from jepa_core.seeding import derive_seed


def mask_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for the masks of global step `step`: seeded with a 63-bit hash of
    (seed, "masks", step), so neighbouring steps and seeds give unrelated streams."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, "masks", step))
    return generator


def slice_masks(masks: MaskBatch, start: int, stop: int) -> MaskBatch:
    """Rows [start, stop) of a MaskBatch (context [B, Nc] -> [stop - start, Nc], ...)."""
    valid = None if masks.context_valid is None else masks.context_valid[start:stop]
    return MaskBatch(masks.context[start:stop], masks.targets[start:stop], valid)


@attrs.frozen
class MaskedBatch:
    """What the trainer receives per step.

    images: [B, C, H, W] float32. labels: [B] int64 (-1 when unlabelled).
    masks: MaskBatch (context [B, Nc], targets [B, M, Nt], context_valid). step: global step.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: MaskBatch
    step: int


class MaskingCollator:
    """collator(samples, step) -> MaskedBatch, samples being (image [C, H, W], label) pairs.

    masker: any `Masker`. seed: the run seed. global_batch_size / offset: see the module
    docstring; None draws masks for exactly the samples given.
    """

    def __init__(self, masker: Masker, seed: int, *, global_batch_size: int | None = None,
                 offset: int = 0):
        self.masker = masker
        self.seed = int(seed)
        self.global_batch_size = global_batch_size
        self.offset = int(offset)

    def masks_for(self, step: int, batch_size: int, offset: int | None = None) -> MaskBatch:
        """The masks of `batch_size` images of step `step` (rows [offset, offset + B) of the
        global batch when `global_batch_size` is set)."""
        generator = mask_generator(self.seed, step)
        if self.global_batch_size is None:
            return self.masker(batch_size, generator)
        start = self.offset if offset is None else int(offset)
        if start + batch_size > self.global_batch_size:
            raise ValueError(f"rows [{start}, {start + batch_size}) fall outside the global "
                             f"batch of {self.global_batch_size}; check offset and batch size")
        return slice_masks(self.masker(self.global_batch_size, generator),
                           start, start + batch_size)

    def __call__(self, samples: Sequence[tuple[torch.Tensor, int]], step: int, *,
                 offset: int | None = None) -> MaskedBatch:
        images = torch.stack([image for image, _ in samples])
        labels = torch.tensor([int(label) for _, label in samples], dtype=torch.int64)
        return MaskedBatch(images, labels, self.masks_for(step, len(samples), offset), int(step))

    def collate_fn(self, items: Sequence[tuple[int, tuple[torch.Tensor, int]]]) -> MaskedBatch:
        """DataLoader collate_fn for items (step, (image, label)) from a `StepDataset`."""
        steps = {int(step) for step, _ in items}
        if len(steps) != 1:
            raise ValueError(f"one batch holds samples of steps {sorted(steps)}; use "
                             "StepBatchSampler so that each batch belongs to one step")
        return self([sample for _, sample in items], steps.pop())


class StepBatchSampler:
    """Wraps a batch sampler: yields [(step, index), ...], step counting from `start_step`."""

    def __init__(self, batch_sampler: Iterable[list[int]], start_step: int = 0):
        self.batch_sampler = batch_sampler
        self.start_step = int(start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step, batch in enumerate(self.batch_sampler, start=self.start_step):
            yield [(step, int(index)) for index in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]


class StepDataset:
    """Wraps a map-style dataset: dataset[(step, index)] -> (step, dataset[index])."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        step, index = key
        return step, self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)
