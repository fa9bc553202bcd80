"""Hypothesis strategies for masker tests.

    from hypothesis import given
    from jepa_core.testing import check_masker, strategies as js

    @given(js.grids(), js.batch_sizes(), js.seeds())
    def test_my_masker(grid, batch_size, seed):
        check_masker(MyMasker(grid), batch_size, seed)

`masker_configs(spec, grid)` draws configs of any registered masker that its factory accepts
on `grid`: varied ones when the masker offers a strategy, else its default config.

A masker offers one through its config class: a class attribute
`hypothesis_configs: ClassVar[str] = "my_plugin.strategies:my_configs"` names a function
`my_configs(grid) -> SearchStrategy[config]`. It is a "module:attribute" string, imported only
here, so the plugin's entry module (which holds the config class) imports neither hypothesis
nor torch, and hypothesis stays a test dependency.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any, Callable

import attrs
from hypothesis import strategies as st

from jepa_core.errors import ConfigError, PluginError


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


def config_strategy(spec: Any) -> Callable[[tuple[int, int]], st.SearchStrategy] | None:
    """The function named by the config class's `hypothesis_configs`, or None if it has none;
    PluginError naming the component when the name cannot be imported."""
    name = getattr(spec.config_class, "hypothesis_configs", None)
    if name is None:
        return None
    try:
        module_name, colon, attr = name.partition(":") if isinstance(name, str) else ("", "", "")
        if not (module_name and colon and attr):
            raise ValueError('not a "module:function" string')
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise _strategy_error(spec, f"{name!r}, which cannot be imported ({exc})") from exc


def _strategy_error(spec: Any, problem: str) -> PluginError:
    return PluginError(
        f"plugin {spec.plugin!r}: {spec.kind} {spec.name!r}: "
        f"{spec.config_class.__name__}.hypothesis_configs is {problem}. Set it to a "
        "\"module:function\" string naming a function (grid) -> SearchStrategy of configs, or "
        "remove it to draw the default config.")


def masker_configs(spec: Any, grid: tuple[int, int]) -> st.SearchStrategy:
    """Configs of the registered component `spec` that its factory accepts on `grid`: drawn
    from the strategy its config class offers (`hypothesis_configs`), else its default config
    (nothing when the factory refuses the default on `grid`)."""
    function = config_strategy(spec)
    if function is None:
        config = spec.config_class()
        return st.just(config) if builds_on(spec, config, grid) else st.nothing()
    offered = function(grid)
    if not isinstance(offered, st.SearchStrategy):
        raise _strategy_error(spec, f"{spec.config_class.hypothesis_configs!r}, whose function "
                                    f"returned a {type(offered).__name__}, not a strategy")
    return offered.filter(lambda config: builds_on(spec, config, grid))


def multiblock_configs(grid: tuple[int, int], registry: Any = None) -> st.SearchStrategy:
    """Deprecated: use `masker_configs(registry.get("masker", "multiblock"), grid)`."""
    warnings.warn("jepa_core.testing.strategies.multiblock_configs is deprecated; use "
                  "masker_configs(registry.get('masker', 'multiblock'), grid)",
                  DeprecationWarning, stacklevel=2)
    return masker_configs((registry or _registry()).get("masker", "multiblock"), grid)


def replace(config: Any, **changes: Any) -> Any:
    """attrs.evolve, re-exported for tests that tweak one field of a drawn config."""
    return attrs.evolve(config, **changes)
