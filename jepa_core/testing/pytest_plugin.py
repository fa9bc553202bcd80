"""Opt-in pytest plugin for jepa plugin authors: `pytest -p jepa_core.testing.pytest_plugin`
(or `pytest_plugins = ["jepa_core.testing.pytest_plugin"]` in a conftest.py).

Fixtures (none is function-scoped, so all work inside hypothesis `@given` tests):
    jepa_registry        a registry of every installed plugin, built once per test module;
                         treat it as read-only (build your own with make_plugin_manager()
                         to register test plugins).
    masker_contract      `jepa_core.testing.check_masker`.
    jepa_mask_generator  `jepa_core.runtime.data.mask_generator`: (seed, step) -> torch.Generator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry


@pytest.fixture(scope="module")
def jepa_registry() -> Registry:
    """A registry of every installed plugin, built once per test module."""
    from jepa_core.plugins import make_plugin_manager

    return make_plugin_manager()


@pytest.fixture(scope="session")
def masker_contract() -> Callable[..., Any]:
    """`jepa_core.testing.check_masker`, the masker contract check."""
    from jepa_core.testing.contract import check_masker

    return check_masker


@pytest.fixture(scope="session")
def jepa_mask_generator() -> Callable[[int, int], Any]:
    """`jepa_core.runtime.data.mask_generator`: (seed, step) -> the generator the trainer
    gives the masker."""
    from jepa_core.runtime.data import mask_generator

    return mask_generator
