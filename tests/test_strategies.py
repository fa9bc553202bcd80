"""jepa_core.testing.strategies: a masker plugin offers its own config strategy through its
config class (`hypothesis_configs`, a "module:function" string imported only by the tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Literal

import attrs
import pytest
from hypothesis import HealthCheck, find, given, settings

from jepa_core.errors import PluginError
from jepa_core.plugins import make_plugin_manager
from jepa_core.testing import check_masker
from jepa_core.testing import strategies as js
from jepa_core.validate import Bounds, at_least, at_most, between, greater, range_pair


@attrs.frozen
class Inner:
    size: int = 0


PLUGIN = '''
from typing import ClassVar

import attrs
from jepa_core.hookspecs import hookimpl


@attrs.frozen
class BandConfig:
    """A band of rows as the target, the rest as the context (a strategy test masker)."""

    hypothesis_configs: ClassVar[str] = "{strategy}"

    rows: int = 1


@hookimpl
def register_maskers(register):
    register("band", BandConfig, "band_impl:build")
'''

IMPL = '''
import torch

from jepa_core.errors import ConfigError
from jepa_core.interfaces import MaskBatch


class Band:
    def __init__(self, config, grid):
        self.config, self.grid = config, tuple(grid)

    def __call__(self, batch_size, generator):
        gh, gw = self.grid
        rows = self.config.rows
        top = int(torch.randint(gh - rows + 1, (1,), generator=generator))
        patches = torch.arange(gh * gw)
        inside = (patches // gw >= top) & (patches // gw < top + rows)
        return MaskBatch(patches[~inside].expand(batch_size, -1),
                         patches[inside].expand(batch_size, 1, -1))


def build(config, grid):
    if config.rows >= grid[0]:
        raise ConfigError(f"masker band: rows: {config.rows} leaves no context row")
    return Band(config, grid)
'''

STRATEGIES = '''
from hypothesis import strategies as st

from band import BandConfig


def band_configs(grid):
    return st.integers(1, 12).map(lambda rows: BandConfig(rows=rows))


def not_a_strategy(grid):
    return BandConfig(rows=2)
'''


def _band(tmp_path, monkeypatch, strategy: str):
    """The spec of masker "band", from a plugin module written to tmp_path."""
    for name in ("band", "band_impl", "band_strategies"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "band.py").write_text(PLUGIN.format(strategy=strategy))
    (tmp_path / "band_impl.py").write_text(IMPL)
    (tmp_path / "band_strategies.py").write_text(STRATEGIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return make_plugin_manager(["band"], autoload=False).get("masker", "band")


def test_a_third_party_masker_offers_its_own_configs(tmp_path, monkeypatch):
    spec = _band(tmp_path, monkeypatch, "band_strategies:band_configs")
    spec.build(spec.config_class(), grid=(4, 4))
    assert "band_strategies" not in sys.modules  # imported by the tests only, on first use
    grid, drawn = (6, 5), set()

    @settings(max_examples=40, database=None, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.filter_too_much])
    @given(js.masker_configs(spec, grid), js.batch_sizes(8), js.seeds())
    def contract(config, batch_size, seed):
        drawn.add(config.rows)
        check_masker(spec.build(config, grid=grid), batch_size, seed, allow_overlap=False)

    contract()
    assert drawn == {1, 2, 3, 4, 5}  # varied, and only what the factory accepts on 6 rows


@pytest.mark.parametrize("strategy, problem", [
    ("band_strategies", "not a \"module:function\" string"),
    ("no_such_module:band_configs", "No module named 'no_such_module'"),
    ("band_strategies:missing", "has no attribute 'missing'"),
    ("band_strategies:not_a_strategy", "returned a BandConfig, not a strategy"),
])
def test_a_broken_hypothesis_configs_names_the_plugin(tmp_path, monkeypatch, strategy, problem):
    spec = _band(tmp_path, monkeypatch, strategy)
    with pytest.raises(PluginError) as caught:
        js.masker_configs(spec, (4, 4))
    message = str(caught.value)
    assert message.startswith(f"plugin 'band': masker 'band': BandConfig.hypothesis_configs "
                              f"is '{strategy}', ")
    assert problem in message and "Set it to a \"module:function\" string" in message


def test_a_masker_without_a_strategy_gets_varied_configs_from_its_fields(tmp_path, monkeypatch):
    spec = _band(tmp_path, monkeypatch, "band_strategies:band_configs")
    monkeypatch.delattr(spec.config_class, "hypothesis_configs")
    assert js.config_strategy(spec) is None
    strategy = js.masker_configs(spec, (4, 4))
    assert find(strategy, lambda c: True) == spec.config_class()  # shrinks to the default
    drawn = set()

    @settings(max_examples=60, database=None, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.filter_too_much])
    @given(strategy)
    def collect(config):
        drawn.add(config.rows)

    collect()
    assert {1, 2, 3} <= drawn and drawn <= {0, 1, 2, 3}  # more than the default; all build


@attrs.frozen
class Knobs:
    """Every kind of field configs_from_fields draws, with validators limiting them."""

    mode: Literal["a", "b", "c"] = "a"
    flag: bool = False
    count: int = attrs.field(default=3, validator=at_least(1))
    ratio: float = attrs.field(default=0.5, validator=[greater(0), at_most(1)])
    span: tuple[float, float] = attrs.field(default=(0.2, 0.4), validator=range_pair(0, 1))
    group: int | None = attrs.field(default=None, validator=between(2, 6))
    label: str = "fixed"
    inner: Inner = Inner()


def test_configs_from_fields_draw_every_field_within_its_validators():
    seen = {field.name: set() for field in attrs.fields(Knobs)}

    @settings(max_examples=150, database=None, derandomize=True, deadline=None)
    @given(js.configs_from_fields(Knobs))
    def collect(config):
        assert config.count >= 1 and 0 < config.ratio <= 1
        assert 0 <= config.span[0] <= config.span[1] <= 1
        assert config.group is None or 2 <= config.group <= 6
        assert config.inner.size >= 0
        for name in seen:
            seen[name].add(repr(getattr(config, name)))

    collect()
    assert seen["label"] == {"'fixed'"}  # strings keep their default
    assert seen["flag"] == {"True", "False"}
    assert [name for name, values in seen.items()
            if len(values) < 3 and name not in ("label", "flag")] == []
    assert {repr(v) for v in ("a", "b", "c")} <= seen["mode"]


def test_configs_from_fields_reads_the_limits_of_combined_validators():
    ratio = next(f for f in attrs.fields(Knobs) if f.name == "ratio")
    assert js.field_bounds(ratio) == Bounds(lo=0, hi=1, lo_open=True)
    span = next(f for f in attrs.fields(Knobs) if f.name == "span")
    assert js.field_bounds(span) == Bounds(lo=0, hi=1, pair=True)


def test_multiblock_configs_still_works_but_is_deprecated():
    with pytest.deprecated_call():
        strategy = js.multiblock_configs((14, 14))
    from jepa_image.configs import MultiBlockConfig

    assert isinstance(find(strategy, lambda c: c.style == "reference"), MultiBlockConfig)


def test_entry_modules_and_the_registry_import_neither_hypothesis_nor_torch():
    code = textwrap.dedent("""
        import sys
        from jepa_core.plugins import make_plugin_manager
        registry = make_plugin_manager()
        assert registry.get("masker", "multiblock").config_class.hypothesis_configs
        heavy = sorted(m for m in ("hypothesis", "torch") if m in sys.modules)
        assert not heavy, heavy
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
