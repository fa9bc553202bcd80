"""The core checks what a plugin's factory returns against the kind's interface
(`jepa_core.interfaces.PROTOCOLS`): a wrong object is a PluginError naming the plugin, the
component and the missing members, raised when the component is built, not later as an
AttributeError deep in the trainer."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
from conftest import FIRST_PARTY_PLUGINS, TINY
from hypothesis import given
from hypothesis import strategies as st

from jepa_core.errors import PluginError
from jepa_core.hookspecs import hookimpl
from jepa_core.interfaces import PROTOCOLS, Encoder, Masker, missing_members, protocol_members
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.build import build_components, build_data, build_encoder
from jepa_core.runtime.trainer import train

FIRST_PARTY = FIRST_PARTY_PLUGINS


@attrs.frozen
class NoConfig:
    """A config with no settings."""


class GridlessMasker:
    """Draws nothing and has no `grid`: not a Masker."""

    def __call__(self, batch_size, generator):
        raise AssertionError("never called: the core refuses the masker first")


class WrongPlugin:
    @hookimpl
    def register_maskers(self, register):
        register("gridless", NoConfig, lambda config, grid: GridlessMasker())

    @hookimpl
    def register_encoders(self, register):
        register("linear_encoder", NoConfig, lambda config: torch.nn.Linear(4, 4))

    @hookimpl
    def register_losses(self, register):
        register("number_loss", NoConfig, lambda config: 0.0)


@pytest.fixture(scope="module")
def registry():
    return make_plugin_manager(FIRST_PARTY, autoload=False, objects=[("wrong", WrongPlugin())])


def recipe_with(registry, tmp_path, **sections):
    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path)
    d.update({k: {"name": v} for k, v in sections.items()})
    return recipe_from_dict(d, registry)


def test_a_masker_without_grid_is_refused_naming_plugin_and_member(registry, tmp_path):
    recipe = recipe_with(registry, tmp_path, masker="gridless")
    with pytest.raises(PluginError) as info:
        build_data(recipe, registry)
    message = str(info.value)
    assert "plugin 'wrong' built masker 'gridless'" in message
    assert "GridlessMasker" in message and "jepa_core.interfaces.Masker" in message
    assert "it lacks `grid`." in message  # __call__ is there: only grid is missing
    assert "must have `grid`, `__call__()`" in message
    assert "Fix the factory of masker 'gridless'" in message


def test_a_run_with_a_wrong_masker_stops_before_training(registry, tmp_path):
    recipe = recipe_with(registry, tmp_path, masker="gridless")
    with pytest.raises(PluginError, match="lacks `grid`"):
        train(recipe, registry)
    assert not (tmp_path / "tiny" / "checkpoints").exists()


def test_an_encoder_that_is_not_an_encoder_is_refused(registry, tmp_path):
    recipe = recipe_with(registry, tmp_path, encoder="linear_encoder")
    with pytest.raises(PluginError) as info:
        build_encoder(recipe, registry)
    message = str(info.value)
    assert "plugin 'wrong' built encoder 'linear_encoder'" in message
    assert "torch.nn.modules.linear.Linear" in message
    assert "lacks `embed_dim`, `num_heads`, `image_size`, `patch_grid`." in message


def test_a_loss_that_cannot_be_called_is_refused_when_the_method_builds_it(registry, tmp_path):
    recipe = recipe_with(registry, tmp_path, loss="number_loss")
    with pytest.raises(PluginError, match=r"built loss 'number_loss'.*lacks `__call__\(\)`"):
        build_components(recipe, registry)


def test_first_party_components_conform(registry, tmp_path):
    parts = build_components(recipe_with(registry, tmp_path), registry)
    assert isinstance(parts.masker, Masker) and isinstance(parts.source, PROTOCOLS["data_source"])
    assert missing_members(parts.method, PROTOCOLS["method"]) == []
    encoder = parts.method.modules["encoder"]
    assert isinstance(encoder, Encoder) and missing_members(encoder, Encoder) == []


def _stub(protocol: type, present: set[str]) -> object:
    """An object of a fresh class with exactly the members `present` of `protocol`."""
    methods = {n for n in protocol_members(protocol) if callable(getattr(protocol, n, None))}
    body = {n: (lambda self, *a, **k: None) if n in methods else 1 for n in present}
    return type("Stub", (), body)()


@given(st.sampled_from(sorted(PROTOCOLS)), st.data())
def test_missing_members_is_exactly_what_was_left_out(kind, data):
    protocol = PROTOCOLS[kind]
    members = protocol_members(protocol)
    present = data.draw(st.sets(st.sampled_from(members)))
    missing = missing_members(_stub(protocol, present), protocol)
    assert [m.removesuffix("()") for m in missing] == [m for m in members if m not in present]
    # on plain objects (no __getattr__) the check agrees with the runtime protocol check
    assert (missing == []) == isinstance(_stub(protocol, present), protocol)
