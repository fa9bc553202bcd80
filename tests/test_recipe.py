"""Recipes: loading, every error path with its `$.path`, overrides, interpolation, round trip."""

from __future__ import annotations

import copy
import string
from pathlib import Path

import attrs
import pytest
import yaml
from conftest import FIRST_PARTY_PLUGINS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jepa_core.errors import RecipeError
from jepa_core.hookspecs import hookimpl
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import (
    OptimConfig,
    Recipe,
    TrainConfig,
    apply_override,
    component_sections,
    load_recipe,
    read_yaml,
    recipe_from_dict,
    recipe_to_dict,
    recipe_to_yaml,
)
from jepa_core.structure import Component
from jepa_core.validate import at_least
from jepa_image.configs import MultiBlockConfig, RandomPatchConfig

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
TOP_KEYS = sorted(f.name for f in attrs.fields(Recipe))
OPTIM_KEYS = sorted(f.name for f in attrs.fields(OptimConfig))


@pytest.fixture(scope="module")
def registry():
    # The first-party plugins by name, so that other installed plugins cannot change the
    # "registered names" in the messages checked below.
    return make_plugin_manager(FIRST_PARTY_PLUGINS, autoload=False)


@pytest.fixture(scope="module")
def base() -> dict:
    return read_yaml(QUICKSTART)


def problems_of(data: dict, registry, overrides=()) -> list[tuple[str, str]]:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data, registry, "r.yaml", list(overrides))
    return info.value.problems


def with_(base: dict, dotted: str, value) -> dict:
    """A deep copy of `base` with `dotted` set to `value` (sections created as needed)."""
    data = copy.deepcopy(base)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


# -- every recipe we ship --------------------------------------------------------------------
@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in RECIPES])
def test_every_shipped_recipe_loads(path, registry):
    recipe = load_recipe(path, registry)
    assert recipe.name
    needs = recipe.method.config.needs()
    for kind in ("data", "encoder", "method", "predictor", "masker", "target_updater", "loss"):
        component = getattr(recipe, kind)
        if kind in ("predictor", "masker", "target_updater", "loss") and kind not in needs:
            assert component is None, kind
            continue
        assert isinstance(component, Component)
        assert registry.get(component.kind, component.name).config_class is type(component.config)


def test_quickstart_values(registry):
    recipe = load_recipe(QUICKSTART, registry)
    assert recipe.masker.name == "multiblock"
    assert recipe.masker.config.target_scale == (0.1, 0.15)
    assert (recipe.encoder.config.embed_dim, recipe.predictor.config.embed_dim) == (48, 32)
    assert recipe.optim.lr == 1e-3 and isinstance(recipe.optim.warmup_epochs, float)
    assert recipe.train == TrainConfig(epochs=20.0, global_batch_size=64, num_workers=0,
                                       log_every=20, checkpoint_every=110)
    assert (recipe.eval.every_checkpoints, recipe.eval.live_images) == (1, 500)
    assert recipe.run_dir == Path("runs/quickstart")


# -- round trip ------------------------------------------------------------------------------
def test_round_trip_recipe_yaml_recipe(registry, tmp_path):
    recipe = load_recipe(QUICKSTART, registry)
    text = recipe_to_yaml(recipe)
    again = load_recipe(write(tmp_path, text), registry)
    assert again == recipe
    assert recipe_to_yaml(again) == text
    assert recipe_to_dict(recipe)["masker"]["name"] == "multiblock"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lr=st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False),
       epochs=st.floats(min_value=1e-6, max_value=1e4),
       batch=st.integers(min_value=1, max_value=2**40),
       scale=st.tuples(st.floats(1e-6, 1.0), st.floats(1e-6, 1.0)).map(sorted).map(tuple),
       precision=st.sampled_from(["auto", "fp32", "bf16"]))
def test_round_trip_random_valid_values(registry, base, lr, epochs, batch, scale, precision):
    data = with_(with_(with_(base, "optim.lr", lr), "train.epochs", epochs),
                 "train.global_batch_size", batch)
    data = with_(with_(data, "masker.target_scale", list(scale)), "train.precision", precision)
    recipe = recipe_from_dict(data, registry)
    assert (recipe.optim.lr, recipe.train.epochs, recipe.train.global_batch_size) == (
        lr, epochs, batch)
    assert recipe.masker.config.target_scale == scale
    again = recipe_from_dict(yaml.safe_load(recipe_to_yaml(recipe)), registry)
    assert again == recipe


# -- reading the file ------------------------------------------------------------------------
def test_file_not_found(registry, tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError) as info:
        load_recipe(missing, registry)
    assert info.value.problems == [("$", "file not found; check the path")]
    assert str(info.value).startswith(f"{missing} has 1 problem:")


def test_a_directory_is_not_a_recipe(registry, tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path, registry)
    assert info.value.problems == [("$", "cannot be read: Is a directory")]


def test_invalid_yaml_gives_line_and_column(registry, tmp_path):
    path = write(tmp_path, "name: x\nmasker:\n  name: multiblock\n  target_scale: [0.1, 0.2\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry)
    [(where, message)] = info.value.problems
    assert where == "$"
    assert message.startswith("is not valid YAML at line 5, column 1: ")


def test_bad_indentation_is_reported_where_it_is(registry, tmp_path):
    path = write(tmp_path, "name: x\noptim:\n  lr: 1\n lr2: 2\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry)
    assert info.value.problems[0][1].startswith("is not valid YAML at line 4, column 2: ")


def test_python_tags_are_refused(registry, tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RecipeError, match=r"is not valid YAML at line 1, column 7"):
        load_recipe(path, registry)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str"),
                                        ("3\n", "int")])
def test_top_level_must_be_a_mapping(registry, tmp_path, text, kind):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text), registry)
    assert info.value.problems == [("$", f"must be a mapping of sections (got {kind})")]


def test_empty_file_reports_every_required_key(registry, tmp_path):
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, ""), registry)
    # the structure's own keys, then the sections the default method (ijepa) needs
    assert info.value.problems == [
        (f"$.{key}", "is required but missing") for key in ("name", "data", "encoder")] + [
        (f"$.{key}", f"method 'ijepa' needs a {key} section (`{key}: {{name: ...}}`); add one, "
                     f"see `jepa plugins` for the registered ones")
        for key in ("predictor", "masker", "target_updater", "loss")]
    assert "has 7 problems" in str(info.value)


def test_yaml_1_1_exponent_without_dot_is_a_float(registry, tmp_path):
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"  # what YAML 1.1 hands us
    text = QUICKSTART.read_text().replace("lr: 1.0e-3", "lr: 1e-3\n  eps: 1e-8\n  grad_clip: 5e-1")
    recipe = load_recipe(write(tmp_path, text), registry)
    assert (recipe.optim.lr, recipe.optim.eps, recipe.optim.grad_clip) == (1e-3, 1e-8, 0.5)


# -- keys ------------------------------------------------------------------------------------
def test_unknown_top_level_key_suggests_the_nearest(registry, base):
    assert problems_of(with_(base, "optimm", {}), registry) == [
        ("$.optimm", f"unknown key; did you mean 'optim'? valid keys: {', '.join(TOP_KEYS)}")]


def test_unknown_nested_key_suggests_the_nearest(registry, base):
    assert problems_of(with_(base, "optim.lrr", 0.1), registry) == [
        ("$.optim.lrr", f"unknown key; did you mean 'lr'? valid keys: {', '.join(OPTIM_KEYS)}")]


def test_unknown_key_in_a_component_section(registry, base):
    [(where, message)] = problems_of(with_(base, "masker.target_scal", [0.1, 0.2]), registry)
    assert where == "$.masker.target_scal"
    assert message.startswith("unknown key; did you mean 'target_scale'? valid keys: ")
    assert "num_targets" in message and "name" not in message.split("valid keys: ")[1]


def test_unknown_key_far_from_everything_has_no_suggestion(registry, base):
    [(where, message)] = problems_of(with_(base, "train.zzzzqqq", 1), registry)
    assert where == "$.train.zzzzqqq"
    assert message.startswith("unknown key; valid keys: ")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=12), section=st.sampled_from(["", "optim", "masker"]))
def test_random_unknown_keys_are_reported_with_their_path(registry, base, key, section):
    valid = {"": TOP_KEYS, "optim": OPTIM_KEYS,
             "masker": ["name", *attrs.fields_dict(MultiBlockConfig)]}[section]
    assume(key not in valid)
    data = copy.deepcopy(base)
    (data[section] if section else data)[key] = 1
    problems = problems_of(data, registry)
    assert [p for p, _ in problems] == [f"$.{section}.{key}" if section else f"$.{key}"]
    assert problems[0][1].startswith("unknown key; ")


def test_missing_required_key(registry, base):
    data = copy.deepcopy(base)
    del data["loss"], data["name"]
    assert problems_of(data, registry) == [
        ("$.name", "is required but missing"),
        ("$.loss", "method 'ijepa' needs a loss section (`loss: {name: ...}`); add one, see "
                   "`jepa plugins` for the registered ones")]


def test_missing_required_key_inside_a_component(registry, base):
    data = with_(base, "data", {"name": "image_folder"})
    assert problems_of(data, registry) == [("$.data.root", "is required but missing")]


# -- types -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dotted, value, expected", [
    ("train.global_batch_size", "many", "must be an integer (got 'many')"),
    ("train.global_batch_size", 64.5, "must be an integer (got 64.5)"),
    ("train.global_batch_size", True, "must be an integer (got True)"),
    ("optim.lr", "fast", "must be a number (got 'fast')"),
    ("optim.lr", None, "must be a number (got None)"),
    ("optim.lr", False, "must be a number (got False)"),
    ("optim.lr", [1], "must be a number (got [1])"),
    ("optim.grad_clip", "abc", "must be a number (got 'abc')"),
    ("train.compile", 1, "must be true or false (got 1)"),
    ("train.compile", "sure", "must be true or false (got 'sure')"),
    ("name", [1], "must be a string (got [1])"),
    ("name", {"a": 1}, "must be a string (got {'a': 1})"),
    ("optim.betas", 0.9, "must be a list (got 0.9)"),
    ("optim.betas", {"a": 1}, "must be a list (got {'a': 1})"),
    ("optim.betas", [0.9], "must have 2 items (got 1)"),
    ("optim.betas", [0.9, 0.99, 0.999], "must have 2 items (got 3)"),
    ("optim", [1], "must be a mapping of OptimConfig fields (got [1])"),
    ("optim", "adamw", "must be a mapping of OptimConfig fields (got 'adamw')"),
    ("encoder.img_size", "big", "must be an integer (got 'big')"),
])
def test_wrong_types(registry, base, dotted, value, expected):
    assert problems_of(with_(base, dotted, value), registry) == [(f"$.{dotted}", expected)]


def test_wrong_type_inside_a_pair_points_at_the_element(registry, base):
    assert problems_of(with_(base, "optim.betas", ["a", 0.9]), registry) == [
        ("$.optim.betas[0]", "must be a number (got 'a')")]


@pytest.mark.parametrize("dotted, value, expected", [
    ("train.global_batch_size", 64.0, 64),
    ("train.global_batch_size", "64", 64),
    ("name", 123, "123"),
    ("optim.grad_clip", None, None),
    ("optim.grad_clip", 1, 1.0),
    ("train.epochs", 3, 3.0),
    ("optim", None, OptimConfig()),
])
def test_accepted_conversions(registry, base, dotted, value, expected):
    recipe = recipe_from_dict(with_(base, dotted, value), registry)
    node = recipe
    for part in dotted.split("."):
        node = getattr(node, part)
    assert node == expected and type(node) is type(expected)


@pytest.mark.parametrize("dotted, value, choices", [
    ("train.precision", "fp16", "'auto', 'fp32', 'bf16'"),
    ("train.device", "tpu", "'auto', 'cpu', 'cuda'"),
    ("dist.strategy", "zero3", "'ddp', 'fsdp'"),
    ("masker.style", "official", "'corrected', 'reference'"),
])
def test_literal_choices(registry, base, dotted, value, choices):
    assert problems_of(with_(base, dotted, value), registry) == [
        (f"$.{dotted}", f"must be one of {choices} (got {value!r})")]


# -- validators ------------------------------------------------------------------------------
@pytest.mark.parametrize("dotted, value, where, expected", [
    ("optim.lr", 0, "$.optim.lr", "must be > 0 (got 0.0)"),
    ("optim.lr", -1e-3, "$.optim.lr", "must be > 0 (got -0.001)"),
    ("seed", -1, "$.seed", "must be >= 0 (got -1)"),
    ("train.global_batch_size", 0, "$.train.global_batch_size", "must be >= 1 (got 0)"),
    ("masker.target_scale", [0.1, 1.5], "$.masker.target_scale[1]", "must be <= 1 (got 1.5)"),
    ("masker.target_scale", [0.0, 0.5], "$.masker.target_scale[0]", "must be > 0 (got 0.0)"),
    ("masker.target_scale", [0.3, 0.2], "$.masker.target_scale",
     "low end 0.3 is above high end 0.2; write [low, high]"),
    ("optim.betas", [0.9, 1.2], "$.optim.betas[1]", "must be <= 1 (got 1.2)"),
    ("target_updater.momentum", [1.0, 0.996], "$.target_updater.momentum",
     "low end 1.0 is above high end 0.996; write [low, high]"),
    ("encoder.drop_path_rate", 1.5, "$.encoder.drop_path_rate", "must be in [0, 1] (got 1.5)"),
])
def test_validators_report_by_path(registry, base, dotted, value, where, expected):
    assert problems_of(with_(base, dotted, value), registry) == [(where, expected)]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(low=st.floats(-1, 2, allow_nan=False), high=st.floats(-1, 2, allow_nan=False))
def test_range_pair_accepts_exactly_the_valid_pairs(registry, base, low, high):
    data = with_(base, "masker.target_scale", [low, high])
    if 0 < low <= high <= 1:
        assert recipe_from_dict(data, registry).masker.config.target_scale == (low, high)
    else:
        [(where, _)] = problems_of(data, registry)
        assert where.startswith("$.masker.target_scale")


def test_third_party_section_is_validated_by_its_own_config_class():
    @attrs.frozen
    class ToyConfig:
        """A toy masker."""
        blocks: int = attrs.field(default=2, validator=at_least(1))

    class Toy:
        @hookimpl
        def register_maskers(self, register):
            register("toy", ToyConfig, "toy_module:build")

    registry = make_plugin_manager(FIRST_PARTY_PLUGINS, autoload=False,
                                   objects=[("toy", Toy())])
    data = with_(read_yaml(QUICKSTART), "masker", {"name": "toy", "blocks": 0, "size": 3})
    assert problems_of(data, registry) == [
        ("$.masker.size", "unknown key; valid keys: blocks"),
        ("$.masker.blocks", "must be >= 1 (got 0)")]
    data["masker"] = {"name": "toy", "blocks": 5}
    assert recipe_from_dict(data, registry).masker == Component("masker", "toy", ToyConfig(5))


# -- component sections ----------------------------------------------------------------------
def test_unknown_component_lists_registered_names_and_nearest(registry, base):
    [(where, message)] = problems_of(with_(base, "masker.name", "multiblok"), registry)
    assert where == "$.masker.name"
    assert message == ("no masker named 'multiblok' is registered. Did you mean 'multiblock'? "
                       "Registered maskers: 'multiblock', 'multiblock3d', 'random'. Install "
                       "the plugin that provides it, or load it with `jepa -p MODULE`.")


@pytest.mark.parametrize("value", [[5], {"a": 1}, 5, None])
def test_component_name_that_is_not_a_string(registry, base, value):
    [(where, message)] = problems_of(with_(base, "data.name", value), registry)
    assert where == "$.data.name"
    assert message.startswith(f"no data_source named {value!r} is registered.")


@pytest.mark.parametrize("section", [{"num_targets": 4}, "multiblock", []])
def test_component_section_without_a_name(registry, base, section):
    assert problems_of(with_(base, "masker", section), registry) == [
        ("$.masker", "must be a mapping with a `name:` of a registered masker")]


def test_a_null_section_is_an_absent_one(registry, base):
    assert problems_of(with_(base, "masker", None), registry) == [
        ("$.masker", "method 'ijepa' needs a masker section (`masker: {name: ...}`); add one, "
                     "see `jepa plugins` for the registered ones")]


def test_several_problems_are_reported_at_once(registry, tmp_path):
    text = QUICKSTART.read_text()
    text = text.replace("lr: 1.0e-3", "lr: 0").replace("name: multiblock", "name: multiblok")
    text = text.replace("name: smooth_l1", "name: smooth_l1\n  betaa: 2").replace("seed: 0", "")
    text += "trian:\n  epochs: 3\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text), registry)
    paths = [p for p, _ in info.value.problems]
    assert sorted(paths) == sorted(["$.trian", "$.masker.name", "$.loss.betaa", "$.optim.lr"])
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'recipe.yaml'} has 4 problems:\n  $.")
    assert "$.optim.lr: must be > 0 (got 0.0)" in message
    assert "$.trian: unknown key; did you mean 'train'?" in message


# -- overrides -------------------------------------------------------------------------------
def test_overrides(registry):
    recipe = load_recipe(QUICKSTART, registry, ["optim.lr=1e-3", "train.epochs=3",
                                                "name=tuned", "train.compile=true"])
    assert recipe.optim.lr == 1e-3 and recipe.train.epochs == 3.0
    assert recipe.name == "tuned" and recipe.train.compile is True
    # later overrides win
    assert load_recipe(QUICKSTART, registry, ["seed=1", "seed=2"]).seed == 2


# -- switching a component with `<section>.name=...` ---------------------------------------
def test_renaming_a_component_starts_it_from_the_new_defaults(registry):
    notes: list[str] = []
    recipe = load_recipe(QUICKSTART, registry, ["masker.name=random"], notes)
    assert recipe.masker == Component("masker", "random", RandomPatchConfig(num_targets=4))
    assert notes == ["masker.name=random: the masker section starts again from the defaults of "
                     "masker 'random'; dropped the keys it does not have (from 'multiblock'): "
                     "target_scale, target_aspect, context_scale, context_equalize, min_keep; "
                     "kept: num_targets"]
    # the same as writing the whole section, which keeps working
    whole = load_recipe(QUICKSTART, registry, ["masker={name: random, num_targets: 4}"])
    assert whole == recipe


def test_overrides_apply_in_order_around_a_switch(registry):
    notes: list[str] = []
    recipe = load_recipe(QUICKSTART, registry, ["masker.min_keep=2", "masker.name=random",
                                                "masker.context_ratio=0.5",
                                                "masker.num_targets=2"], notes)
    assert recipe.masker.config == RandomPatchConfig(context_ratio=0.5, num_targets=2)
    assert "min_keep" in notes[0] and "context_ratio" not in notes[0]
    # back again: multiblock's own defaults, not the quickstart's
    back = load_recipe(QUICKSTART, registry, ["masker.name=random", "masker.name=multiblock"])
    assert back.masker.config == MultiBlockConfig(num_targets=4)


def test_the_same_name_or_an_unknown_one_changes_nothing(registry):
    notes: list[str] = []
    same = load_recipe(QUICKSTART, registry, ["masker.name=multiblock"], notes)
    assert same == load_recipe(QUICKSTART, registry) and notes == []
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, registry, ["masker.name=randon"], notes)
    [(where, message)] = info.value.problems  # only the name: not every key as unknown
    assert where == "$.masker.name" and "Did you mean 'random'?" in message


@attrs.frozen
class AltConfig:
    """A second component of every kind, sharing some keys with the first-party ones."""

    img_size: int = 32
    depth: int = 1
    momentum: tuple[float, float] = (0.99, 1.0)


def _register_alt(register):
    register("alt", AltConfig, lambda config, **context: None)  # never built here


class Alternatives:
    """Registers `alt` for every kind of component, so every section can be switched."""

    @hookimpl
    def register_methods(self, register):
        _register_alt(register)

    @hookimpl
    def register_encoders(self, register):
        _register_alt(register)

    @hookimpl
    def register_predictors(self, register):
        _register_alt(register)

    @hookimpl
    def register_maskers(self, register):
        _register_alt(register)

    @hookimpl
    def register_target_updaters(self, register):
        _register_alt(register)

    @hookimpl
    def register_losses(self, register):
        _register_alt(register)

    @hookimpl
    def register_data_sources(self, register):
        _register_alt(register)


@pytest.mark.parametrize("section", sorted(component_sections()))
def test_every_component_section_switches_by_name(section):
    registry = make_plugin_manager(FIRST_PARTY_PLUGINS, autoload=False,
                                   objects=[("alternatives", Alternatives())])
    data = read_yaml(QUICKSTART)
    data.setdefault(section, {"name": "ijepa"})  # the quickstart has no method section
    old_keys = [k for k in data[section] if k != "name"]
    notes: list[str] = []
    recipe = recipe_from_dict(data, registry, "r.yaml", [f"{section}.name=alt"], notes)
    component = getattr(recipe, section)
    assert component.name == "alt"
    kept = {k: data[section][k] for k in old_keys if k in ("img_size", "depth", "momentum")}
    assert attrs.asdict(component.config) == {**attrs.asdict(AltConfig()),
                                              **{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in kept.items()}}
    dropped = [k for k in old_keys if k not in kept]
    if dropped:
        [note] = notes
        assert note.startswith(f"{section}.name=alt: the {section} section starts again")
        assert f"does not have (from {data[section]['name']!r}): {', '.join(dropped)}" in note
    else:
        assert notes == []


def test_override_list_value(registry):
    recipe = load_recipe(QUICKSTART, registry, ["masker.target_scale=[0.1,0.2]"])
    assert recipe.masker.config.target_scale == (0.1, 0.2)


def test_override_creates_missing_sections(registry):
    recipe = load_recipe(QUICKSTART, registry, ["dist.strategy=fsdp", "eval.max_images=100"])
    assert recipe.dist.strategy == "fsdp" and recipe.eval.max_images == 100


def test_override_of_a_new_nested_key_is_validated(registry):
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, registry, ["train.extra.depth=3"])
    assert info.value.problems[0][0] == "$.train.extra"
    assert info.value.problems[0][1].startswith("unknown key; valid keys: ")


def test_overrides_do_not_touch_the_callers_data(registry, base):
    before = copy.deepcopy(base)
    recipe_from_dict(base, registry, overrides=["optim.lr=0.5", "masker.num_targets=2"])
    assert base == before


@pytest.mark.parametrize("override", ["optim.lr", "=1", "optim..lr=1", ".=1", "optim.=1"])
def test_bad_override_syntax(registry, override):
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, registry, [override])
    assert info.value.source == "command line"
    assert info.value.problems == [(override, "an override must look like key.sub=value")]


@pytest.mark.parametrize("override, where", [("name.first=x", "$.name"),
                                             ("optim.lr.peak=1", "$.optim.lr"),
                                             ("masker.target_scale.0=0.1",
                                              "$.masker.target_scale")])
def test_override_into_a_non_section(registry, override, where):
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, registry, [override])
    key = override.split("=")[0]
    assert info.value.problems == [(where, f"is not a section; cannot set {key}")]


def test_override_value_that_is_not_yaml(registry):
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, registry, ["optim.lr=[1,"])
    [(where, message)] = info.value.problems
    assert where == "$.optim.lr" and message.startswith("value '[1,' is not valid YAML: ")


def test_override_value_is_validated_like_the_file(registry):
    with pytest.raises(RecipeError) as info:
        load_recipe(QUICKSTART, registry, ["masker.target_scale=[0.1,1.5]"])
    assert info.value.problems == [("$.masker.target_scale[1]", "must be <= 1 (got 1.5)")]
    assert str(info.value) == (
        f"{QUICKSTART} as changed on the command line has 1 problem:\n  "
        f"$.masker.target_scale[1]: must be <= 1 (got 1.5) (set on the command line: "
        f"masker.target_scale=[0.1,1.5])")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lr=st.floats(min_value=0, max_value=1e9, exclude_min=True, allow_nan=False))
def test_float_overrides_round_trip(registry, base, lr):
    recipe = recipe_from_dict(base, registry, overrides=[f"optim.lr={lr!r}"])
    assert recipe.optim.lr == lr
    assert recipe_from_dict(yaml.safe_load(recipe_to_yaml(recipe)), registry) == recipe


@settings(max_examples=30, deadline=None)
@given(key=st.text(string.ascii_lowercase, min_size=1, max_size=6), value=st.integers())
def test_apply_override_sets_nested_keys(key, value):
    data: dict = {}
    apply_override(data, f"a.{key}.b={value}")
    assert data == {"a": {key: {"b": value}}}


# -- ${ENV} interpolation --------------------------------------------------------------------
def test_env_interpolation(registry, base, monkeypatch):
    monkeypatch.setenv("JEPA_TEST_RUN", "probe")
    monkeypatch.setenv("JEPA_TEST_BATCH", "32")
    monkeypatch.delenv("JEPA_TEST_UNSET", raising=False)
    data = with_(with_(base, "name", "run-${JEPA_TEST_RUN}"), "out_dir",
                 "${JEPA_TEST_UNSET:-/scratch/runs}")
    data = with_(with_(data, "train.global_batch_size", "${JEPA_TEST_BATCH}"), "optim.lr",
                 "${JEPA_TEST_UNSET:-5e-4}")
    recipe = recipe_from_dict(data, registry)
    assert recipe.name == "run-probe" and recipe.out_dir == "/scratch/runs"
    assert recipe.train.global_batch_size == 32 and recipe.optim.lr == 5e-4


def test_env_interpolation_in_a_file_and_in_overrides(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("JEPA_TEST_DATA", str(tmp_path / "images"))
    monkeypatch.setenv("JEPA_TEST_EPOCHS", "7")
    text = QUICKSTART.read_text().replace("name: digits", "name: image_folder\n  root: "
                                          "${JEPA_TEST_DATA}")
    recipe = load_recipe(write(tmp_path, text), registry, ["train.epochs=${JEPA_TEST_EPOCHS}"])
    assert recipe.data.config.root == str(tmp_path / "images")
    assert recipe.train.epochs == 7.0


def test_env_default_paths_expand_the_home_directory(registry, base, monkeypatch):
    monkeypatch.setenv("HOME", "/home/tester")
    monkeypatch.delenv("JEPA_TEST_UNSET", raising=False)
    recipe = recipe_from_dict(with_(base, "out_dir", "${JEPA_TEST_UNSET:-~/runs}"), registry)
    assert recipe.out_dir == "/home/tester/runs"


def test_missing_env_variable(registry, base, monkeypatch):
    monkeypatch.delenv("JEPA_TEST_UNSET", raising=False)
    data = with_(base, "data", {"name": "image_folder", "root": "${JEPA_TEST_UNSET}/train"})
    assert problems_of(data, registry) == [(
        "$.data.root", "environment variable JEPA_TEST_UNSET is not set; set it, or write "
                       "${JEPA_TEST_UNSET:-default} to give a default")]


def test_text_without_braces_is_left_alone(registry, base):
    # out_dir, not name: a run name is a plain folder name, without '$'
    assert recipe_from_dict(with_(base, "out_dir", "$HOME-$1"), registry).out_dir == "$HOME-$1"


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan"])
def test_non_finite_numbers_are_refused(registry, value):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(read_yaml(QUICKSTART), registry, "r", [f"optim.lr={value}"])
    assert any(p == "$.optim.lr" and "finite" in m for p, m in info.value.problems)


def test_booleans_from_environment_strings(registry, monkeypatch):
    monkeypatch.setenv("JEPA_TEST_COMPILE", "true")
    recipe = recipe_from_dict(read_yaml(QUICKSTART), registry, "r",
                              ["train.compile=${JEPA_TEST_COMPILE}"])
    assert recipe.train.compile is True


def test_a_run_name_or_out_dir_past_the_file_systems_limits_is_refused_by_key(registry, base):
    longest = recipe_from_dict(base, registry, "r.yaml", ["name=" + "a" * 255])
    assert longest.run_dir.name == "a" * 255  # the longest folder name there can be
    (path, message), = problems_of(base, registry, ["name=" + "a" * 256])
    assert path == "$.name" and "256 characters long" in message and "at most 255" in message
    (path, message), = problems_of(base, registry, ["out_dir=/tmp/" + "é" * 128 + "/runs"])
    assert path == "$.out_dir" and "256 bytes" in message and "at most 255" in message
    (path, message), = problems_of(base, registry, ["out_dir=" + "/a" * 2000])
    assert path == "$.out_dir" and "limit of 4096 bytes" in message
