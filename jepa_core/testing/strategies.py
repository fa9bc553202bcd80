"""Hypothesis strategies for masker tests.

    from hypothesis import given
    from jepa_core.testing import check_masker, strategies as js

    @given(js.grids(), js.batch_sizes(), js.seeds())   # js.video_grids(): (t, gh, gw)
    def test_my_masker(grid, batch_size, seed):
        check_masker(MyMasker(grid), batch_size, seed)

`masker_configs(spec, grid)` draws varied configs of any registered masker that its factory
accepts on `grid`: from the strategy the masker offers, else from its config class's fields
(`configs_from_fields`: each field's type and `jepa_core.validate` limits, the default first).

A masker offers a strategy through its config class: a class attribute
`hypothesis_configs: ClassVar[str] = "my_plugin.strategies:my_configs"` names a function
`my_configs(grid) -> SearchStrategy[config]`. It is a "module:attribute" string, imported only
here, so the plugin's entry module (which holds the config class) imports neither hypothesis
nor torch, and hypothesis stays a test dependency.
"""

from __future__ import annotations

import functools
import importlib
import math
import types
import typing
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Union

import attrs
from hypothesis import reject
from hypothesis import strategies as st

from jepa_core.errors import ConfigError, PluginError
from jepa_core.validate import Bounds

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry


def grids(min_side: int = 2, max_side: int = 32) -> st.SearchStrategy[tuple[int, int]]:
    """(gh, gw) patch grids, square or not."""
    side = st.integers(min_side, max_side)
    return st.tuples(side, side)


def video_grids(max_t: int = 8, min_side: int = 2,
                max_side: int = 16) -> st.SearchStrategy[tuple[int, int, int]]:
    """(t, gh, gw) patch grids of a video encoder: 1..max_t time steps of a (gh, gw) frame."""
    side = st.integers(min_side, max_side)
    return st.tuples(st.integers(1, max_t), side, side)


def nd_grids(min_rank: int = 1, max_rank: int = 4, min_side: int = 1,
             max_side: int = 6) -> st.SearchStrategy[tuple[int, ...]]:
    """Patch grids of any rank (raster order), for checks that must not assume 2-D."""
    return st.integers(min_rank, max_rank).flatmap(
        lambda rank: st.tuples(*[st.integers(min_side, max_side)] * rank))


def grids_for(spec: Any, min_side: int = 2,
              max_side: int = 32) -> st.SearchStrategy[tuple[int, ...]]:
    """Grids of the rank the registered masker `spec` works on: its config class's
    `grid_rank` (a ClassVar; 2 when absent: `grids`, 3: `video_grids` of up to 4 time steps,
    other ranks: `nd_grids`), so tests over the registry give every masker grids it accepts."""
    rank = getattr(spec.config_class, "grid_rank", 2)
    if rank == 2:
        return grids(min_side, max_side)
    if rank == 3:
        return video_grids(4, min_side, max_side)
    return nd_grids(rank, rank, min_side, max_side)


def square_grids(min_side: int = 2, max_side: int = 32) -> st.SearchStrategy[tuple[int, int]]:
    """(s, s) square patch grids."""
    return st.integers(min_side, max_side).map(lambda s: (s, s))


def batch_sizes(max_size: int = 32) -> st.SearchStrategy[int]:
    """Batch sizes from 1 to max_size."""
    return st.integers(1, max_size)


def seeds() -> st.SearchStrategy[int]:
    """Generator seeds (torch accepts 64-bit seeds; these stay below 2**63)."""
    return st.integers(0, 2**63 - 1)


@functools.cache
def _registry() -> Registry:
    from jepa_core.plugins import make_plugin_manager

    return make_plugin_manager()


def builds_on(spec: Any, config: Any, grid: tuple[int, ...]) -> bool:
    """True when the component's factory accepts `config` on `grid` (no ConfigError)."""
    try:
        spec.build(config, grid=grid)
    except ConfigError:
        return False
    return True


def config_strategy(spec: Any) -> Callable[[tuple[int, ...]], st.SearchStrategy] | None:
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


def masker_configs(spec: Any, grid: tuple[int, ...]) -> st.SearchStrategy:
    """Configs of the registered component `spec` that its factory accepts on `grid`: drawn
    from the strategy its config class offers (`hypothesis_configs`), else from the config
    class's fields (`configs_from_fields`); either way they shrink towards simple values."""
    function = config_strategy(spec)
    if function is None:
        offered = configs_from_fields(spec.config_class)
    else:
        offered = function(grid)
        if not isinstance(offered, st.SearchStrategy):
            raise _strategy_error(spec, f"{spec.config_class.hypothesis_configs!r}, whose "
                                        f"function returned a {type(offered).__name__}, not a "
                                        f"strategy")
    return offered.filter(lambda config: builds_on(spec, config, grid))


# -- configs drawn from a config class's fields ------------------------------------------
_DEFAULT = object()  # "leave the field at its default" (also right for attrs.Factory ones)


def configs_from_fields(config_class: type) -> st.SearchStrategy:
    """Instances of the attrs `config_class`, each field drawn from its type (bool, int, float,
    str, Literal, X | None, tuples, lists, nested attrs classes) within the limits of its
    `jepa_core.validate` validators, or left at its default (what examples shrink to). Strings
    and mappings keep their defaults; instances the class's validators refuse are dropped."""
    attrs.resolve_types(config_class)
    fields = {}
    for field in attrs.fields(config_class):
        if not field.init:
            continue
        drawn = _values(field.type, field.default, field_bounds(field))
        if field.default is attrs.NOTHING:
            if drawn is None:
                raise TypeError(f"{config_class.__name__}.{field.name}: no default and a type "
                                f"({field.type!r}) configs_from_fields cannot draw")
            fields[field.alias or field.name] = drawn
        else:
            default = st.just(_DEFAULT)
            fields[field.alias or field.name] = default if drawn is None else default | drawn
    return _instances(config_class, fields)


@st.composite
def _instances(draw: Any, config_class: type, fields: dict[str, st.SearchStrategy]) -> Any:
    kwargs = {name: value for name, strategy in fields.items()
              if (value := draw(strategy)) is not _DEFAULT}
    try:
        return config_class(**kwargs)
    except (ValueError, TypeError):  # jepa_core.validate.Invalid is a ValueError
        reject()


def field_bounds(field: Any) -> Bounds:
    """The limits all of a field's validators agree on (their `bounds`; see validate.py)."""
    validator = field.validator
    parts = getattr(validator, "_validators", None) or ((validator,) if validator else ())
    lo = hi = None
    lo_open = hi_open = pair = False
    for part in parts:
        b = getattr(part, "bounds", None)
        if b is None:
            continue
        pair = pair or b.pair
        if b.lo is not None and (lo is None or b.lo > lo or (b.lo == lo and b.lo_open)):
            lo, lo_open = b.lo, b.lo_open
        if b.hi is not None and (hi is None or b.hi < hi or (b.hi == hi and b.hi_open)):
            hi, hi_open = b.hi, b.hi_open
    return Bounds(lo, hi, lo_open, hi_open, pair)


def _values(tp: Any, default: Any, bounds: Bounds) -> st.SearchStrategy | None:
    """A strategy of values of type `tp` within `bounds`, or None for a type left alone."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if attrs.has(tp):
        return configs_from_fields(tp)
    if origin in (Union, types.UnionType):
        options = [_values(a, default, bounds) for a in args if a is not type(None)]
        drawn = [o for o in options if o is not None]
        if not drawn:
            return None
        return st.one_of(([st.none()] if type(None) in args else []) + drawn)
    if origin is Literal:
        return st.sampled_from(args)
    if origin is tuple:
        if bounds.pair and len(args) == 2:
            item = _number(args[0], _item(default, 1), attrs.evolve(bounds, pair=False))
            return None if item is None else st.tuples(item, item).map(lambda p: tuple(sorted(p)))
        if len(args) == 2 and args[1] is Ellipsis:
            item = _values(args[0], _item(default, 0), bounds)
            return None if item is None else st.lists(item, max_size=4).map(tuple)
        items = [_values(a, _item(default, i), bounds) for i, a in enumerate(args)]
        if any(i is None for i in items):
            return None
        return st.tuples(*items)
    if origin is list:
        item = _values(args[0], _item(default, 0), bounds) if args else None
        return None if item is None else st.lists(item, max_size=4)
    if tp is bool:
        return st.booleans()
    if tp in (int, float):
        return _number(tp, default, bounds)
    if tp is str and default is attrs.NOTHING:
        return st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
    return None


def _item(default: Any, i: int) -> Any:
    if isinstance(default, (tuple, list)) and len(default) > i:
        return default[i]
    return attrs.NOTHING


def _number(tp: Any, default: Any, b: Bounds) -> st.SearchStrategy | None:
    """ints or floats within the bounds; an open side reaches twice the default (or the other
    limit plus a few), so drawn values stay the size a recipe would use."""
    if tp not in (int, float):
        return None
    ref = default if isinstance(default, (int, float)) and not isinstance(default, bool) else None
    lo = b.lo if b.lo is not None else (0 if ref is None or ref >= 0 else 2 * ref - 1)
    hi = b.hi if b.hi is not None else max(2 * abs(ref or 0), lo + 4 if tp is int else lo + 1)
    if tp is int:
        first = math.floor(lo) + 1 if b.lo_open or lo != math.floor(lo) else int(lo)
        last = math.ceil(hi) - 1 if b.hi_open or hi != math.ceil(hi) else int(hi)
        return st.integers(first, last) if first <= last else None
    return st.floats(lo, hi, exclude_min=b.lo_open, exclude_max=b.hi_open,
                     allow_nan=False, allow_infinity=False).map(lambda x: round(x, 4))


def multiblock_configs(grid: tuple[int, int],
                       registry: Registry | None = None) -> st.SearchStrategy:
    """Deprecated: use `masker_configs(registry.get("masker", "multiblock"), grid)`."""
    warnings.warn("jepa_core.testing.strategies.multiblock_configs is deprecated; use "
                  "masker_configs(registry.get('masker', 'multiblock'), grid)",
                  DeprecationWarning, stacklevel=2)
    return masker_configs((registry or _registry()).get("masker", "multiblock"), grid)


def replace(config: Any, **changes: Any) -> Any:
    """attrs.evolve, re-exported for tests that tweak one field of a drawn config."""
    return attrs.evolve(config, **changes)
