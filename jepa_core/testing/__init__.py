"""Test helpers for plugin authors: the masker contract and hypothesis strategies.

    from jepa_core.testing import check_masker, strategies as js

Public API:
    check_masker(masker, batch_size=8, seed=0, **declared)
                    run every check a `Masker` must pass; AssertionError naming the check
    MaskerTimeout   raised when one masker call runs past `time_limit_s` (stopped in place)
    strategies      hypothesis strategies: grids, square_grids, video_grids, nd_grids,
                    grids_for(spec),
                    batch_sizes, seeds, and
                    masker_configs(spec, grid) / configs_from_fields(config_class) for configs
    contract        the contract's single checks (check_structure, check_deterministic, ...)
    pytest_plugin   `pytest -p jepa_core.testing.pytest_plugin`: the fixtures jepa_registry,
                    masker_contract and jepa_mask_generator

Importing this package is cheap: torch and hypothesis load on first use of an attribute.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MaskerTimeout", "check_masker", "contract", "strategies"]

_MODULES = ("contract", "strategies", "pytest_plugin", "deadline")
_FROM_CONTRACT = ("check_masker", "MaskerTimeout")


def __getattr__(name: str) -> Any:
    """Loads the public names on first use (so `import jepa_core.testing` stays cheap)."""
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _FROM_CONTRACT:
        return getattr(importlib.import_module(f"{__name__}.contract"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names too, so that help() and dir() show them."""
    return sorted({*globals(), *__all__})
