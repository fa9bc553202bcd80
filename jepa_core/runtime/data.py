"""From a data source to batches of (images, masks), as pure functions of (seed, step, row).

A step's global batch is rows [0, B) of the step; rank r of W owns rows [r*B/W, (r+1)*B/W), cut
into `accum` micro-batches. Which image a row holds, how it is augmented and its masks depend
only on (seed, step, row): 1 process × B trains exactly like W processes × B/W, whatever the
number of DataLoader workers.

- data order: a permutation of the data set per epoch, generator (seed, "order", epoch);
- augmentation: generator (seed, "augment", epoch, dataset index);
- masks: the masker draws the whole global batch with generator (seed, "masks", step) and each
  micro-batch keeps its rows (sizes stay shared across ranks, as one process would draw them).
  Masks are drawn on one torch thread wherever they are drawn (`draw_masks`), as in a worker.
- an unreadable sample (`BadSample`) is replaced by a sample drawn with generator
  (seed, "replace", step, row, attempt), attempt 1, 2, ... until one reads: a run of bad files
  costs nothing more than scattered ones, and a resumed run meets the same replacements.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator
from typing import Any

import attrs
import torch

from jepa_core.errors import BadSample, ConfigError, JepaError, RunError
from jepa_core.interfaces import DataSource, MaskBatch, Masker
from jepa_core.seeding import generator

# Once a process meets its first unreadable sample it reads PROBE_SAMPLES samples chosen by the
# seed: with fewer than 1 in MIN_READABLE_IN of them readable the source is (nearly) all broken
# and the run stops, rather than drawing replacements for ever (the same verdict in every
# process: the probe is a function of the seed and the files). MAX_DRAWS only guards against
# files that break after the probe: with 1 in 8 readable, 1000 failed draws in a row have a
# chance of 1e-58.
PROBE_SAMPLES = 64
MIN_READABLE_IN = 8
MAX_DRAWS = 1000


@attrs.frozen
class BatchLayout:
    """How a global batch is split over ranks and micro-batches (gradient accumulation)."""

    global_batch: int
    world_size: int
    rank: int
    micro_batch: int
    accum_steps: int

    @property
    def per_rank(self) -> int:
        """Samples one rank processes per optimizer step (micro-batch x accumulation steps)."""
        return self.micro_batch * self.accum_steps

    def rows(self, micro: int) -> range:
        """The rows of the global batch that this rank's micro-batch `micro` takes."""
        start = self.rank * self.per_rank + micro * self.micro_batch
        return range(start, start + self.micro_batch)


def batch_layout(global_batch: int, world_size: int, rank: int = 0,
                 per_device_cap: int | None = None) -> BatchLayout:
    """Per-device batch and accumulation steps for a global batch on `world_size` devices."""
    if global_batch % world_size:
        raise ConfigError(
            f"train.global_batch_size={global_batch} does not divide over {world_size} "
            f"processes; choose a multiple of {world_size} or another number of devices.")
    per_rank = global_batch // world_size
    accum = 1 if per_device_cap is None else math.ceil(per_rank / per_device_cap)
    while per_rank % accum:
        accum += 1  # smallest accumulation that splits the rank's share evenly
    return BatchLayout(global_batch, world_size, rank, per_rank // accum, accum)


@attrs.frozen
class Key:
    """Which sample a batch row is: step, epoch, row in the global batch, index in the data."""
    step: int
    epoch: int
    row: int
    index: int


class StepSampler:
    """Batch sampler: for each step from `start_step`, `accum` lists of `Key`s (micro-batches)."""

    def __init__(self, data_len: int, layout: BatchLayout, steps_per_epoch: int, seed: int,
                 start_step: int, stop_step: int):
        self.data_len, self.layout, self.spe = data_len, layout, steps_per_epoch
        self.seed, self.start_step, self.stop_step = seed, start_step, stop_step
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step) * self.layout.accum_steps

    def permutation(self, epoch: int) -> torch.Tensor:
        """The seeded order of the data for `epoch` (cached for the current epoch)."""
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.data_len,
                                                generator=generator(self.seed, "order", epoch)))
        return self._perm[1]

    def keys(self, step: int, micro: int) -> list[Key]:
        """The Keys of this rank's micro-batch `micro` of `step`; a step past the data wraps
        around it."""
        epoch, within = divmod(step, self.spe)
        perm = self.permutation(epoch)
        base = within * self.layout.global_batch
        return [Key(step, epoch, row, int(perm[(base + row) % self.data_len]))
                for row in self.layout.rows(micro)]

    def __iter__(self) -> Iterator[list[Key]]:
        for step in range(self.start_step, self.stop_step):
            for micro in range(self.layout.accum_steps):
                yield self.keys(step, micro)


class TrainSamples:
    """Map-style dataset over `Key`s: the source's image at key.index, augmented from the
    sample's own generator, once per view (`num_views` draws in a row from that generator: the
    first view is the same image whatever the number of views). An unreadable sample
    (`BadSample`) is replaced by `replacement(...)` draws and counted; a source that is
    (nearly) all unreadable stops the run with a RunError naming it (`judge_source`)."""

    def __init__(self, source: DataSource, seed: int, num_views: int = 1):
        self.source, self.seed, self.num_views = source, seed, num_views
        self.judged = False

    def __len__(self) -> int:
        return len(self.source)

    def read(self, epoch: int, index: int) -> tuple[list[torch.Tensor], int]:
        """(views, label) of sample `index`, augmented from generator (seed, epoch, index)."""
        g = generator(self.seed, "augment", epoch, index)
        views, label = [], -1
        for _ in range(self.num_views):
            image, label = self.source.get(index, g)
            views.append(image)
        return views, label

    def __getitem__(self, key: Key) -> tuple[list[torch.Tensor], int, int]:
        index = key.index
        for attempt in range(MAX_DRAWS + 1):
            try:
                views, label = self.read(key.epoch, index)
                return views, label, attempt
            except BadSample as exc:
                if not self.judged:
                    judge_source(self.source, self.seed, exc)
                    self.judged = True
                last = exc
                index = replacement(self.seed, key, attempt + 1, len(self.source))
        raise RunError(unreadable_message(
            self.source, f"{MAX_DRAWS + 1} samples drawn in a row for one row could not be "
            f"read (last: {last}), although a probe of the source at its first unreadable "
            f"sample found enough readable: did files break during the run?"))


def replacement(seed: int, key: Key, attempt: int, data_len: int) -> int:
    """The index that stands in for row `key.row` of step `key.step` after `attempt`
    unreadable samples: uniform over the data set, from generator (seed, "replace", step,
    row, attempt), so the data order stays a function of (seed, step, row)."""
    g = generator(seed, "replace", key.step, key.row, attempt)
    return int(torch.randint(data_len, (), generator=g))


def judge_source(source: DataSource, seed: int, first: BadSample) -> None:
    """RunError unless at least 1 in MIN_READABLE_IN of PROBE_SAMPLES samples drawn with
    generator (seed, "probe") can be read (evaluation transform); `first` is the unreadable
    sample that called for the probe."""
    n = len(source)
    probe = torch.randperm(n, generator=generator(seed, "probe"))[:PROBE_SAMPLES].tolist()
    readable, example = 0, first
    for index in probe:
        try:
            source.get(index, None)
            readable += 1
        except BadSample as exc:
            example = exc
    if readable * MIN_READABLE_IN < len(probe):
        raise RunError(unreadable_message(
            source, f"{len(probe) - readable} of {len(probe)} samples probed cannot be read "
            f"(e.g. {example})"))


def unreadable_message(source: DataSource, what: str) -> str:
    """The paragraph of the RunError of a source that is (nearly) all unreadable."""
    where = getattr(source, "split", "") or type(source).__name__
    return (f"the training data ({where}) is nearly all unreadable: {what}. Unreadable "
            f"samples are skipped and counted only while at least 1 in {MIN_READABLE_IN} of "
            f"those probed reads. Fix or remove the broken files (an interrupted download "
            f"leaves empty ones: `find FOLDER -empty` lists them) or point the recipe at a "
            f"complete copy.")


DEFAULT_MASKS = "masks"  # the name of the mask set of a masker that returns one MaskBatch


@attrs.frozen
class Batch:
    """One micro-batch, as the method's `loss` receives it.

    views: {name: [b, C, H, W] float32} the images of each view, in the method's view order
        ([b, C, T, H, W] for a source of clips).
    labels: [b] int64 (-1 when unlabelled; never used in training).
    masks: {name: MaskBatch} the mask sets of these rows (empty without a masker); a masker
        returning one MaskBatch gives the set "masks".
    step: the global step (0-based); skipped: unreadable samples replaced in this batch.
    """

    views: dict
    labels: torch.Tensor
    masks: dict
    step: int
    skipped: int

    @property
    def images(self) -> torch.Tensor:
        """The first view, [b, C, H, W]."""
        return next(iter(self.views.values()))

    @property
    def mask(self) -> MaskBatch:
        """The only mask set, for methods that use one masker."""
        if len(self.masks) != 1:
            raise ValueError(f"this batch has {len(self.masks)} mask sets "
                             f"({', '.join(self.masks) or 'none'}), not one")
        return next(iter(self.masks.values()))

    def to(self, device: Any) -> Batch:
        """The same batch with every tensor on `device` (non-blocking copies)."""
        def move(t: Any) -> Any:
            return None if t is None else t.to(device, non_blocking=True)

        masks = {name: MaskBatch(move(m.context), move(m.targets), move(m.context_valid),
                                 move(m.targets_valid), m.packed)
                 for name, m in self.masks.items()}
        return Batch({k: move(v) for k, v in self.views.items()}, move(self.labels), masks,
                     self.step, self.skipped)


def mask_generator(seed: int, step: int) -> torch.Generator:
    """The generator the masker draws step `step`'s global batch from."""
    return generator(seed, "masks", step)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block, as in a DataLoader worker (torch gives
    each worker one), then the previous count again, also when the block raises.

    Masks are drawn inside it wherever they are drawn, so a masker costs the same in the
    trainer's own process (`num_workers: 0`) as in a worker: its small ops gain nothing from
    the pool, and on a busy machine waiting for the pool's threads costs far more than they do.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def draw_masks(masker: Any, batch_size: int, seed: int, step: int, *,
               with_stats: bool = False) -> Any:
    """masker(batch_size, generator of `step`) on one thread (`one_thread`); with_stats:
    masker.sample_with_stats(...) instead (a `MaskerWithStats`)."""
    with one_thread():
        draw = masker.sample_with_stats if with_stats else masker
        return draw(batch_size, mask_generator(seed, step))


def _trim(index: torch.Tensor,
          valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(index, valid) without the trailing columns that are padding everywhere; a `valid`
    that is then all True becomes None (the encoders' and predictor's fast path)."""
    if valid is None:
        return index, None
    used = valid.flatten(0, -2).any(0).nonzero()
    width = int(used.max()) + 1 if len(used) else valid.shape[-1]
    index, valid = index[..., :width], valid[..., :width]
    return index, (None if bool(valid.all()) else valid)


def _take_rows(masks: MaskBatch, rows: slice) -> MaskBatch:
    """These rows of a mask batch; padding columns no row here needs are dropped, and a
    validity mask that is all True becomes None. (The trainer's mask guard has checked the
    masker's output before any batch is collated.)"""
    def part(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[rows]

    context, valid = _trim(masks.context[rows], part(masks.context_valid))
    targets, targets_valid = _trim(masks.targets[rows], part(masks.targets_valid))
    return MaskBatch(context, targets, valid, targets_valid, masks.packed)


class MaskingCollate:
    """collate_fn: stacks samples (one tensor per view) and attaches their rows of the step's
    global mask batch (no masks without a masker)."""

    def __init__(self, masker: Masker | None, seed: int, global_batch: int,
                 view_names: tuple[str, ...] = ("image",)):
        self.masker, self.seed, self.global_batch = masker, seed, global_batch
        self.view_names = tuple(view_names)
        self._cache: tuple[int, dict] | None = None

    def step_masks(self, step: int) -> dict:
        """{name: MaskBatch} of the whole global batch of `step`."""
        if self.masker is None:
            return {}
        if self._cache is None or self._cache[0] != step:
            masks = draw_masks(self.masker, self.global_batch, self.seed, step)
            if isinstance(masks, MaskBatch):
                masks = {DEFAULT_MASKS: masks}
            self._cache = (step, dict(masks))
        return self._cache[1]

    def __call__(self, items: list[tuple[Key, Any]]) -> Batch | JepaError:
        failed = [s for _, s in items if isinstance(s, JepaError)]
        if failed:  # the source's error, raised by TrainLoader in the trainer's process
            return failed[0]
        keys = [k for k, _ in items]
        step = keys[0].step
        rows = slice(keys[0].row, keys[-1].row + 1)
        views = {name: torch.stack([s[0][v] for _, s in items])
                 for v, name in enumerate(self.view_names)}
        labels = torch.tensor([s[1] for _, s in items], dtype=torch.int64)
        skipped = sum(s[2] for _, s in items)
        masks = {name: _take_rows(m, rows) for name, m in self.step_masks(step).items()}
        return Batch(views, labels, masks, step, skipped)


class _Keyed(torch.utils.data.Dataset):
    """Dataset returning (key, sample) so the collate function knows the step and rows; a
    RunError or ConfigError of the source comes back in place of the sample (see
    TrainLoader)."""

    def __init__(self, samples: TrainSamples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> tuple[Key, Any]:
        try:
            return key, self.samples[key]
        except (RunError, ConfigError) as exc:
            return key, exc


class TrainLoader(torch.utils.data.DataLoader):
    """A DataLoader that raises a data source's RunError or ConfigError in the process that
    iterates it. Raised in a worker, torch would re-raise it built from a message holding the
    worker's traceback; carried back as a batch, it keeps its one paragraph."""

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, JepaError):
                raise batch
            yield batch


def leave_signals_to_trainer(_worker_id: int) -> None:
    """worker_init_fn: DataLoader workers ignore the stop signals. SLURM signals every process
    of the job step and Ctrl-C the whole terminal group; a worker that died of the signal would
    take the trainer down before it saves. The trainer finishes its step, checkpoints and then
    shuts its workers down itself; a worker whose trainer died exits on its own (torch checks)."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def train_loader(source: DataSource, masker: Masker | None, layout: BatchLayout, *, seed: int,
                 steps_per_epoch: int, start_step: int, stop_step: int, num_workers: int = 0,
                 pin_memory: bool = False,
                 view_names: tuple[str, ...] = ("image",)) -> TrainLoader:
    """Yields `Batch`es: `layout.accum_steps` consecutive micro-batches per step, each sample
    with one image per name in `view_names`; `masker` may be None (no mask sets)."""
    sampler = StepSampler(len(source), layout, steps_per_epoch, seed, start_step, stop_step)
    samples = TrainSamples(source, seed, num_views=len(view_names))
    return TrainLoader(
        _Keyed(samples), batch_sampler=sampler,
        collate_fn=MaskingCollate(masker, seed, layout.global_batch, view_names),
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False,
        prefetch_factor=4 if num_workers else None, worker_init_fn=leave_signals_to_trainer)
