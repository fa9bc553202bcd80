"""Test helpers for plugin authors: the masker contract and hypothesis strategies.

    from jepa_core.testing import check_masker, strategies

`check_masker(masker, batch_size, seed, ...)` runs every check a `Masker` must pass (see
`jepa_core.testing.contract`); `strategies` holds hypothesis strategies for grids, batch sizes,
seeds and masker configs. `pytest -p jepa_core.testing.pytest_plugin` adds the fixtures
`jepa_registry`, `masker_contract` and `jepa_mask_generator`.

Importing this package is cheap: torch and hypothesis load on first use of an attribute.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["check_masker", "contract", "strategies"]


def __getattr__(name: str) -> Any:
    if name in ("contract", "strategies"):
        return importlib.import_module(f"{__name__}.{name}")
    if name == "check_masker":
        return importlib.import_module(f"{__name__}.contract").check_masker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
