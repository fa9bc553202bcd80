"""Config classes of the evaluation protocols (no torch here: imported by `jepa plugins`)."""

from __future__ import annotations

from typing import Literal

import attrs

from jepa_core.validate import at_least, between, each, greater

Pooled = Literal["pooled", "last4"]


@attrs.frozen
class KNNConfig:
    """Weighted kNN (as DINO): the k nearest training features by cosine similarity vote for
    their label with weight exp(similarity / temperature)."""

    k: int = attrs.field(default=20, validator=at_least(1))
    temperature: float = attrs.field(default=0.07, validator=greater(0.0))
    feature: Pooled = "pooled"
    # Ours: subtract the training mean before the cosine. Untrained ViT tokens share a large
    # offset that makes every cosine close to 1; DINO's features (after its head) do not.
    center: bool = True


@attrs.frozen
class LinearConfig:
    """Linear probe, the I-JEPA protocol: on average-pooled tokens of the last layer
    ("pooled") or the last 4 layers concatenated ("last4"), a linear head with or without a
    BatchNorm before it; a grid of learning rates x weight decays, all heads trained in one pass
    over the cached features, the best chosen on a held-out part of the training split."""

    features: tuple[Pooled, ...] = attrs.field(default=("pooled", "last4"),
                                               validator=each(lambda *a: None))
    batchnorm: tuple[bool, ...] = attrs.field(default=(False, True),
                                              validator=each(lambda *a: None))
    lrs: tuple[float, ...] = attrs.field(default=(1e-3, 1e-2, 1e-1), validator=each(greater(0.0)))
    weight_decays: tuple[float, ...] = attrs.field(default=(0.0, 5e-4, 5e-2),
                                                   validator=each(at_least(0.0)))
    epochs: int = attrs.field(default=20, validator=at_least(1))
    batch_size: int = attrs.field(default=256, validator=at_least(1))
    # Share of the training split held out to choose the head (never trained on).
    val_fraction: float = attrs.field(default=0.1, validator=between(0.01, 0.5))


@attrs.frozen
class AttentiveConfig:
    """Attentive probe (V-JEPA): one learnable query cross-attends to the frozen tokens of the
    last layer, an MLP block follows, then a linear head; a grid of learning rates x weight
    decays trained in one pass, the best chosen on a held-out part of the training split."""

    num_heads: int = attrs.field(default=4, validator=at_least(1))
    mlp_ratio: float = attrs.field(default=4.0, validator=greater(0.0))
    lrs: tuple[float, ...] = attrs.field(default=(1e-3, 1e-2), validator=each(greater(0.0)))
    weight_decays: tuple[float, ...] = attrs.field(default=(0.01,),
                                                   validator=each(at_least(0.0)))
    epochs: int = attrs.field(default=20, validator=at_least(1))
    batch_size: int = attrs.field(default=128, validator=at_least(1))
    val_fraction: float = attrs.field(default=0.1, validator=between(0.01, 0.5))


@attrs.frozen
class LowShotConfig:
    """Low-shot linear probes: logistic regression (scikit-learn) on a few labelled images,
    `per_class` images of each class and `fractions` of the labelled training images (each
    class in proportion, at least one image), on `splits` fixed seeded draws: mean +- std."""

    per_class: tuple[int, ...] = attrs.field(default=(1, 5),
                                             validator=each(at_least(1), allow_empty=True))
    fractions: tuple[float, ...] = attrs.field(
        default=(0.01,), validator=each(between(0.0, 1.0), allow_empty=True))
    splits: int = attrs.field(default=3, validator=at_least(1))
    feature: Pooled = "pooled"
    C: float = attrs.field(default=1.0, validator=greater(0.0))  # inverse L2 strength
    max_iter: int = attrs.field(default=1000, validator=at_least(1))


@attrs.frozen
class RankMeConfig:
    """RankMe: the effective rank of the features, exp of the entropy of the normalised
    singular values of the training feature matrix (at most `max_rows` rows, a seeded
    subset)."""

    feature: Pooled = "pooled"
    max_rows: int | None = attrs.field(default=25600, validator=at_least(2))
    # Ours: subtract the mean first. Average-pooled ViT tokens share a large offset, which
    # alone makes the uncentred rank close to 1 for any encoder, trained or not.
    center: bool = True
