"""Seeds derived from (seed, purpose, step, sample, ...) so every random draw is reproducible.

Masks, data order and augmentations never draw from torch's, numpy's or Python's global RNG:
each draw has its own generator, seeded by hashing the run seed with what the draw is for:

    mask generator of step s          derive_seed(seed, "masks", s)
    data order of epoch e             derive_seed(seed, "order", e)
    augmentation of sample i, epoch e derive_seed(seed, "augment", e, i)
    model init                        derive_seed(seed, "init")

so the numbers do not depend on the number of workers, processes or GPUs. Two exceptions
use torch's global RNG: model init runs inside `torch.random.fork_rng` with the global RNG
seeded from derive_seed(seed, "init") (timm's init functions take no generator), and
stochastic layers (timm's drop_path, dropout; off in the shipped recipes) draw from it during
training, so a run with them on is not bit-identical across a resume.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any sequence of ints and strings (stable across runs and machines)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU torch.Generator seeded with derive_seed(*parts)."""
    import torch

    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g
