"""Hypothesis strategies for masker tests.

    from hypothesis import given
    from jepa_core.testing import check_masker, strategies as js

    @given(js.grids(), js.batch_sizes(), js.seeds())
    def test_my_masker(grid, batch_size, seed):
        check_masker(MyMasker(grid), batch_size, seed)

`multiblock_configs(grid)` draws configurations of the registered "multiblock" masker that are
valid on `grid` (its factory accepts them); `masker_configs(spec, grid)` does the same for any
registered masker, starting from its default config.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
from hypothesis import strategies as st

from jepa_core.errors import ConfigError


def grids(min_side: int = 2, max_side: int = 32) -> st.SearchStrategy[tuple[int, int]]:
    """(gh, gw) patch grids, square or not."""
    side = st.integers(min_side, max_side)
    return st.tuples(side, side)


def square_grids(min_side: int = 2, max_side: int = 32) -> st.SearchStrategy[tuple[int, int]]:
    return st.integers(min_side, max_side).map(lambda s: (s, s))


def batch_sizes(max_size: int = 32) -> st.SearchStrategy[int]:
    return st.integers(1, max_size)


def seeds() -> st.SearchStrategy[int]:
    """Generator seeds (torch accepts 64-bit seeds; these stay below 2**63)."""
    return st.integers(0, 2**63 - 1)


@functools.lru_cache(maxsize=None)
def _registry() -> Any:
    from jepa_core.plugins import make_plugin_manager

    return make_plugin_manager()


def builds_on(spec: Any, config: Any, grid: tuple[int, int]) -> bool:
    """True when the component's factory accepts `config` on `grid` (no ConfigError)."""
    try:
        spec.build(config, grid=grid)
    except ConfigError:
        return False
    return True


def _pair(lo: st.SearchStrategy[float], width: st.SearchStrategy[float], top: float):
    return st.tuples(lo, width).map(lambda p: (round(p[0], 3), round(min(top, p[0] + p[1]), 3)))


@st.composite
def _multiblock_fields(draw: Any, grid: tuple[int, int]) -> dict[str, Any]:
    n = grid[0] * grid[1]
    return dict(
        style=draw(st.sampled_from(["corrected", "reference"])),
        num_targets=draw(st.integers(1, 6)),
        target_scale=draw(_pair(st.floats(0.02, 0.4), st.floats(0, 0.2), 1.0)),
        target_aspect=draw(st.tuples(st.floats(0.3, 1.0), st.floats(1.0, 3.0)).map(
            lambda p: (round(p[0], 3), round(p[1], 3)))),
        num_context=draw(st.integers(1, 2)),
        context_scale=draw(_pair(st.floats(0.5, 1.0), st.floats(0, 0.5), 1.0)),
        context_aspect=draw(st.sampled_from([(1.0, 1.0), (0.75, 1.5), (0.5, 2.0)])),
        min_keep=draw(st.integers(1, max(1, n // 8))),
        allow_overlap=draw(st.booleans()),
        context_equalize=draw(st.sampled_from(["subset", "pad"])),
    )


def multiblock_configs(grid: tuple[int, int], registry: Any = None) -> st.SearchStrategy:
    """Configs of the registered "multiblock" masker that its factory accepts on `grid`."""
    spec = (registry or _registry()).get("masker", "multiblock")
    return _multiblock_fields(grid).map(lambda f: spec.config_class(**f)).filter(
        lambda config: builds_on(spec, config, grid))


def masker_configs(spec: Any, grid: tuple[int, int]) -> st.SearchStrategy:
    """The component's default config, if its factory accepts it on `grid` (else nothing):
    a starting point every registered masker supports without knowing its fields."""
    config = spec.config_class()
    if not builds_on(spec, config, grid):
        return st.nothing()
    return st.just(config)


def replace(config: Any, **changes: Any) -> Any:
    """attrs.evolve, re-exported for tests that tweak one field of a drawn config."""
    return attrs.evolve(config, **changes)
