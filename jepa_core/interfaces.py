"""The interfaces the core knows. Plugins implement them; the core never names a concrete one.

Notation used in the shapes below:
    B  images in a batch              C  image channels        H, W  image height, width (px)
    N  patches on the grid (gh * gw)  Nc context indices       M     target blocks per image
    Nt indices per target block       D  encoder width

Patch indices are int64 positions in the flattened (row-major) patch grid, in [0, N).

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
    """

    context: "torch.Tensor"
    targets: "torch.Tensor"
    context_valid: "torch.Tensor | None" = None

    @property
    def batch_size(self) -> int:
        return int(self.context.shape[0])

    @property
    def num_targets(self) -> int:
        return int(self.targets.shape[1])


@runtime_checkable
class Masker(Protocol):
    """Samples context and target blocks on a patch grid.

    grid: (gh, gw) patches, fixed at construction.
    __call__(batch_size, generator) -> MaskBatch. Every random draw comes from `generator`
        (a CPU `torch.Generator` seeded by the core from (seed, global step)); a masker never
        touches the global RNG, so the same generator state gives the same masks.
    """

    grid: tuple[int, int]

    def __call__(self, batch_size: int, generator: "torch.Generator") -> MaskBatch: ...


@runtime_checkable
class Encoder(Protocol):
    """A ViT-like encoder (a `torch.nn.Module`).

    embed_dim: D. num_heads: attention heads (the predictor copies it by default).
    image_size: (H, W) px. patch_grid: (gh, gw).
    forward(images [B, C, H, W], keep [B, K] int64 | None, keep_valid [B, K] bool | None)
        -> [B, K, D] tokens of the kept patches (all N patches when keep is None), in the order
        of `keep`. Positional embeddings are added before tokens are dropped.
    """

    embed_dim: int
    num_heads: int
    image_size: tuple[int, int]
    patch_grid: tuple[int, int]

    def __call__(self, images: "torch.Tensor", keep: "torch.Tensor | None" = None,
                 keep_valid: "torch.Tensor | None" = None) -> "torch.Tensor": ...


@runtime_checkable
class Predictor(Protocol):
    """Predicts target-block representations from context tokens (a `torch.nn.Module`).

    forward(context_tokens [B, Nc, D], context_idx [B, Nc], target_idx [B, M, Nt],
            context_valid [B, Nc] bool | None) -> [B, M, Nt, D] predictions,
        one prediction per target index, in the encoder's width D.
    """

    def __call__(self, context_tokens: "torch.Tensor", context_idx: "torch.Tensor",
                 target_idx: "torch.Tensor",
                 context_valid: "torch.Tensor | None" = None) -> "torch.Tensor": ...


@runtime_checkable
class TargetUpdater(Protocol):
    """Moves the target encoder towards the online (context) encoder after each optimizer step.

    momentum(step) -> float: a pure function of the step (for logging and for resume).
    update(online, target, step): in place, under no_grad, parameters only.
    """

    def momentum(self, step: int) -> float: ...

    def update(self, online: Any, target: Any, step: int) -> None: ...


@runtime_checkable
class Loss(Protocol):
    """Scalar loss between predictions and targets.

    __call__(predictions [B, M, Nt, D], targets [B, M, Nt, D]) -> [] float tensor.
    Targets arrive already normalised (parameter-free layer norm over D) and detached.
    """

    def __call__(self, predictions: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor": ...


@runtime_checkable
class DataSource(Protocol):
    """A source of images and labels.

    num_classes: number of labels (0 when unlabelled).
    get(index, generator) -> (image [C, H, W] float32, normalised, at the size the factory was
        given; label int, -1 when unlabelled). With a generator, apply the training transform
        and draw all of its randomness from that generator (the core seeds it from (seed,
        epoch, sample index), so data do not depend on worker count); with None, apply the
        deterministic evaluation transform.
    """

    num_classes: int

    def __len__(self) -> int: ...

    def get(self, index: int,
            generator: "torch.Generator | None") -> tuple["torch.Tensor", int]: ...
