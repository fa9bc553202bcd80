"""The interfaces the core knows. Plugins implement them; the core never names a concrete one.

Notation used in the shapes below:
    B  images in a batch              C  image channels        H, W  image height, width (px)
    N  patches on the grid (gh * gw,  Nc context indices       M     target blocks per image
       or t * gh * gw for video)
    Nt indices per target block       D  encoder width

Patch indices are int64 positions in the flattened (row-major, raster order) patch grid, in
[0, N). A grid has any rank: (gh, gw) for images, (t, gh, gw) for video, where the index of
patch (t, h, w) is (t * gh + h) * gw + w.

Every interface is a `typing.Protocol`: implement the methods and attributes, no base class
is needed (models are usually `torch.nn.Module`s). torch is imported for type checking only,
so that importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:  # pragma: no cover
    import torch


@attrs.frozen
class MaskBatch:
    """One batch of masks, as a masker returns it and the collator hands it to the trainer.

    context: [B, Nc] int64, patch indices the context encoder sees (unique per row).
    targets: [B, M, Nt] int64, patch indices of each target block (unique per block).
    context_valid: optional [B, Nc] bool, False where a context index is padding. A masker that
        pads rows to equal length repeats a real index there; encoders and predictors that
        receive `context_valid` must ignore those positions (key-padding mask). None: all valid.
    targets_valid: optional [B, M, Nt] bool, False where a target index is padding, for target
        blocks of unequal size padded to the longest (repeat a real index of the block there).
        Predictors that receive it ignore padded target queries as attention keys, and losses
        average over valid target tokens only. Every block keeps at least one valid index.
        None: all valid.
    packed: bool, a compute layout the masker asks for (the masks are the same either way):
        True lets encoders and predictors that say `supports_packing = True` run only the
        valid context tokens of the batch, packed into one stream without padding, instead
        of the padded [B, Nc] rows; methods then pass them `pack=True` (by keyword). The
        outputs at valid positions, the loss and the gradients are those of the padded
        computation (to float tolerance). Meaningful only with `context_valid` (or
        `targets_valid`); False: the padded computation.

    A masker whose context and targets may share patches says so with an attribute
    `allow_overlap = True`; otherwise the trainer refuses masks that leak targets into the
    context (`jepa_core.runtime.mask_guard`).
    """

    context: torch.Tensor
    targets: torch.Tensor
    context_valid: torch.Tensor | None = None
    targets_valid: torch.Tensor | None = None
    packed: bool = False

    @property
    def batch_size(self) -> int:
        """B, the number of mask rows."""
        return int(self.context.shape[0])

    @property
    def num_targets(self) -> int:
        """M, the number of target blocks per row."""
        return int(self.targets.shape[1])


@runtime_checkable
class Masker(Protocol):
    """Samples context and target blocks on a patch grid.

    grid: the patch grid, a tuple of any rank ((gh, gw), (t, gh, gw), ...), fixed at
        construction (the encoder's `patch_grid`).
    __call__(batch_size, generator) -> MaskBatch (or a non-empty {name: MaskBatch} for several
        mask sets, each checked and collated on its own). Every random draw comes from `generator`
        (a CPU `torch.Generator` seeded by the core from (seed, global step)); a masker never
        touches the global RNG, so the same generator state gives the same masks.
    """

    grid: tuple[int, ...]

    def __call__(self, batch_size: int,
                 generator: torch.Generator) -> MaskBatch | dict[str, MaskBatch]: ...


@runtime_checkable
class MaskStats(Protocol):
    """What a masker reports about one draw, beside the masks (`jepa masks` prints it).

    context_sizes: [B] int64, context patches of each sample before its row was cut or padded
        to the batch's common length (equal to the valid counts when nothing is equalised).
    fallbacks: int, samples for which the masker gave up a promise of its config to stay
        bounded (e.g. kept some context-target overlap after its redraws ran out); 0 if none.
    Any other attribute is the masker's own (an attrs class is the usual record).
    """

    context_sizes: torch.Tensor
    fallbacks: int


@runtime_checkable
class MaskerWithStats(Masker, Protocol):
    """Optional: a `Masker` that also reports what happened while drawing.

    sample_with_stats(batch_size, generator) -> (MaskBatch, MaskStats): exactly the masks
        `__call__` returns for the same generator state, plus their statistics. `jepa masks`
        (`jepa_core.commands.mask_preview`) uses it when `isinstance(masker,
        MaskerWithStats)` and shows "context before equalisation" and the fallback count;
        without it the first reads "n/a" and the second is left out. A malformed result is a
        PluginError naming the masker.
    """

    def sample_with_stats(self, batch_size: int,
                          generator: torch.Generator) -> tuple[MaskBatch, MaskStats]:
        """The masks `__call__` returns for this generator state, and what happened while
        drawing them."""


@runtime_checkable
class Encoder(Protocol):
    """A ViT-like encoder (a `torch.nn.Module`).

    embed_dim: D. num_heads: attention heads (the predictor copies it by default).
    image_size: (H, W) px. patch_grid: (gh, gw), or (t, gh, gw) for a video encoder (any
    rank, raster order; N is its product).
    forward(images [B, C, H, W], keep [B, K] int64 | None, keep_valid [B, K] bool | None)
        -> [B, K, D] tokens of the kept patches (all N patches when keep is None), in the order
        of `keep`. Positional embeddings are added before tokens are dropped.
    Optional, for the "last4" features of `jepa eval`: layer_tokens(images, n) -> list of the
        last n blocks' outputs [B, N, D], oldest first, each through the final norm.
    Optional: an encoder with `supports_packing = True` also takes `pack=True` (with
        keep_valid), computes the valid tokens only (see `MaskBatch.packed`) and returns the
        same [B, K, D] (values at padded positions meaningless).
    """

    embed_dim: int
    num_heads: int
    image_size: tuple[int, int]
    patch_grid: tuple[int, ...]

    def __call__(self, images: torch.Tensor, keep: torch.Tensor | None = None,
                 keep_valid: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class Predictor(Protocol):
    """Predicts target-block representations from context tokens (a `torch.nn.Module`).

    forward(context_tokens [B, Nc, D], context_idx [B, Nc], target_idx [B, M, Nt],
            context_valid [B, Nc] bool | None, targets_valid=[B, M, Nt] bool | None)
        -> [B, M, Nt, D] predictions, one prediction per target index, in the encoder's
        width D. Methods pass `targets_valid` (by keyword) only when a masker pads its target
        blocks; padded target queries must then not be attended to, and their predictions
        are ignored. Optional: a predictor with `supports_packing = True` also takes
        `pack=True`, as the encoder does (see `Encoder` and `MaskBatch.packed`).
    """

    def __call__(self, context_tokens: torch.Tensor, context_idx: torch.Tensor,
                 target_idx: torch.Tensor, context_valid: torch.Tensor | None = None,
                 targets_valid: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class TargetUpdater(Protocol):
    """Moves the target encoder towards the online (context) encoder after each optimizer step.

    momentum(step) -> float: a pure function of the step (for logging and for resume).
    update(online, target, step): in place, under no_grad, parameters only.
    """

    def momentum(self, step: int) -> float:
        """The momentum used after optimizer step `step`, a pure function of the step."""

    def update(self, online: Any, target: Any, step: int) -> None:
        """Move `target`'s parameters towards `online`'s, in place and without gradients."""


@runtime_checkable
class Loss(Protocol):
    """Scalar loss between predictions and targets.

    __call__(predictions [B, M, Nt, D], targets [B, M, Nt, D], valid=[B, M, Nt] bool)
        -> [] float tensor. Targets arrive already normalised (parameter-free layer norm over
        D) and detached. Methods pass `valid` (by keyword) only when the masks mark padded
        target positions (`MaskBatch.targets_valid`): the loss is then over valid tokens only.
    """

    def __call__(self, predictions: torch.Tensor, targets: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor: ...


@runtime_checkable
class DataSource(Protocol):
    """A source of images (or clips) and labels.

    num_classes: number of labels (0 when unlabelled).
    get(index, generator) -> (sample float32, normalised: an image [C, H, W] at the size the
        factory was given, or a clip [C, T, H, W] of T frames of that size; label int, -1
        when unlabelled). Every sample of a source has the same shape (the core stacks
        them). With a generator, apply the training transform and draw all of its randomness
        from that generator (the core seeds it from (seed, epoch, sample index), so data do
        not depend on worker count); with None, apply the deterministic evaluation transform.
    """

    num_classes: int

    def __len__(self) -> int: ...

    def get(self, index: int,
            generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """(image [C, H, W] or clip [C, T, H, W], label) of sample `index`: the training
        transform drawn from `generator`, or the evaluation transform when it is None."""


FEATURE_KINDS = ("pooled", "last4", "tokens")


@runtime_checkable
class FeatureSet(Protocol):
    """Frozen features of one split, as the feature cache holds them (in shards on disk).

    kind: "pooled" ([n, D] mean of the last layer's tokens), "last4" ([n, 4D] the means of the
        last 4 layers, concatenated) or "tokens" ([n, N, D] the last layer's tokens).
    labels: [n] int64, all of them (small). item_shape: the shape of one sample's features.
    shards() -> iterator of (x [b, ...] float32, y [b]) in a fixed order, one shard in memory
        at a time: protocols that stream stay within bounded memory. shard_sizes: images per
        shard; shard(s) -> (x, y) of shard s alone (for shuffled passes).
    take(rows) -> x [len(rows), ...] of those rows (sorted positions in [0, n)).
    load() -> x [n, ...]: everything at once, for sets known to be small.
    """

    kind: str
    labels: torch.Tensor
    item_shape: tuple[int, ...]

    def __len__(self) -> int: ...

    @property
    def shard_sizes(self) -> list[int]:
        """Images per shard, in order."""

    def shard(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of shard s."""

    def shards(self) -> Any:
        """(x, y) per shard, in order."""

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """x of the given sorted rows."""

    def load(self) -> torch.Tensor:
        """All of x at once."""


@attrs.frozen
class EvalContext:
    """What a protocol is told besides its features.

    num_classes: labels are in [0, num_classes). seed: the recipe's seed (derive generators
    from it: `jepa_core.seeding.generator(seed, "my-protocol", ...)`). device: where to train
    heads. console: a rich console for progress (None: silent); `progress(description, total,
    unit)` gives a context manager with `.advance(n)`.
    """

    num_classes: int
    seed: int
    device: Any
    console: Any = None
    # progress(description, total, unit) -> context manager with .advance(n); the runner
    # passes the core's ticker. None: silent.
    ticker: Any = None

    def progress(self, description: str, total: int, unit: str) -> Any:
        """A progress ticker (`with context.progress("probe", 20, "epochs") as t:
        t.advance()`); silent without one."""
        if self.ticker is None:
            return _Silent()
        return self.ticker(description, total, unit)


class _Silent:
    """A progress ticker that shows nothing."""

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        """Nothing to show."""


@runtime_checkable
class EvalProtocol(Protocol):
    """An evaluation protocol on frozen features, registered with `register_eval_protocols`.

    feature_kinds: the kinds of `FeatureSet` it reads (see `FEATURE_KINDS`); `jepa eval`
        extracts each kind any listed protocol needs, once per encoder, into the cache.
    run(features, context) -> list of results. `features` maps each of its kinds that the
        encoder offers to (train FeatureSet, test FeatureSet) of that kind (raw pixels offer
        "pooled" and "tokens" only; skip a missing kind: return [] when none is left). Each
        split holds at least one image; a protocol that needs more (kNN's k, a held-out part,
        n images per class) raises `jepa_core.errors.ConfigError` saying which setting to
        change. A result is a dict, checked by the core (`jepa_core.evaluation.protocols`):
          "feature_kind": one of the kinds it was given;
          "accuracy": {split: fraction in [0, 1]}, "test" among the splits (e.g. "val" for
              held-out training rows), for a classifier; or "value": a finite float, for a
              diagnostic (e.g. an effective rank); exactly one of the two;
          optional "protocol" (a name; default: the registered one), "params" (a dict of
              hyper-parameters), "setting" (a few words telling apart several results of one
              protocol on one kind), "std" ({split: finite float >= 0}, e.g. over splits);
          anything else JSON can hold (no NaN). The core adds "features" (which encoder).
        A protocol that raises, or returns anything else, is recorded in eval.json's
        "failed" with the plugin that registered it; the other protocols' results are kept.
    """

    feature_kinds: tuple[str, ...]

    def run(self, features: dict, context: EvalContext) -> list[dict]:
        """The protocol's results on these features."""


@attrs.frozen
class MethodOutput:
    """What a method's `loss` returns for one micro-batch.

    loss: [] float tensor, the value to minimise (the trainer calls backward on it).
    metrics: {name: [] tensor}, each term logged on its own (detached by the trainer), e.g.
        {"prediction": ..., "sigreg": ...}; averaged over micro-batches and ranks.
    features: optional [b, D] pooled features of this micro-batch, for the representation
        health figures (std across the batch, effective rank) in metrics.jsonl.
    """

    loss: torch.Tensor
    metrics: dict = attrs.Factory(dict)
    features: torch.Tensor | None = None


@runtime_checkable
class Method(Protocol):
    """A JEPA: which modules it has, the loss of one micro-batch, what follows a step.

    modules: {name: torch.nn.Module}, every module the method owns, e.g. "encoder",
        "predictor", "target_encoder", "projector". Checkpoints store them by these names.
    trainable: names (a subset of `modules`) the optimizer trains, in a fixed order; the
        trainer wraps them for DDP / FSDP2 by name. The others are never handed to the
        optimizer (a target encoder, a frozen teacher).
    eval_module: the name of the module `jepa eval` probes and `jepa export` writes (an encoder
        of the recipe's encoder section, e.g. "target_encoder" for I-JEPA).
    views: names of the image views each sample brings (`Batch.views`), e.g. ("image",) or
        ("view0", "view1", ...); every view is drawn by the data source's training transform
        from the sample's own generator, in this order.
    loss(modules, batch) -> MethodOutput. `modules` maps the same names to what the loop calls
        (DDP- or compile-wrapped where the trainer wrapped them): call those, not your own
        references, in the forward pass. `batch` is a `jepa_core.runtime.data.Batch` on the device.
    after_step(step): after each successful optimizer step (`step` counts completed steps
        before this one, 0-based), e.g. the EMA update of a target encoder. May do nothing.
    schedule_metrics(step) -> {name: float}: figures that are pure functions of the step,
        logged with the step (e.g. the EMA momentum).
    """

    modules: dict
    trainable: tuple[str, ...]
    eval_module: str
    views: tuple[str, ...]

    def loss(self, modules: dict, batch: Any) -> MethodOutput:
        """The loss, metrics and optional features of one micro-batch, computed with the
        (possibly wrapped) `modules`."""

    def after_step(self, step: int) -> None:
        """Called after each successful optimizer step (e.g. the EMA update); may do nothing."""

    def schedule_metrics(self, step: int) -> dict:
        """{name: value} of figures that depend on the step only (e.g. EMA momentum), logged
        with it."""


# -- conformance -----------------------------------------------------------------------------
# The interface each component kind's factory must return (`jepa_core.runtime.build` checks it).
PROTOCOLS: dict[str, type] = {
    "method": Method, "encoder": Encoder, "predictor": Predictor, "masker": Masker,
    "target_updater": TargetUpdater, "loss": Loss, "data_source": DataSource,
    "eval_protocol": EvalProtocol,
}

_CALLABLE_DUNDERS = ("__call__", "__len__")


def protocol_members(protocol: type) -> list[str]:
    """The attributes and methods `protocol` requires, in declaration order (its own and those
    of the protocols it extends): annotated attributes, public methods, `__call__`, `__len__`."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if cls is object or cls is Protocol or not getattr(cls, "_is_protocol", False):
            continue
        own = [*vars(cls).get("__annotations__", {}),
               *(n for n, v in vars(cls).items() if callable(v)
                 and (not n.startswith("_") or n in _CALLABLE_DUNDERS))]
        names += [n for n in own if n not in names]
    return names


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of `protocol` that `obj` lacks (a method counts only if callable); empty
    when `obj` satisfies it. Unlike `isinstance`, attributes served by `__getattr__` (a
    `torch.nn.Module`'s submodules and buffers) count as present, as they do for the core."""
    missing = []
    for name in protocol_members(protocol):
        method = callable(getattr(protocol, name, None))
        if name == "__call__":  # looked up on the type, as a call does
            present = callable(obj)
        else:
            present = hasattr(obj, name) and (not method or callable(getattr(obj, name)))
        if not present:
            missing.append(f"{name}()" if method else name)
    return missing
