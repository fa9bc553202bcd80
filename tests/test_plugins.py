"""Plugin discovery and the component registry, with real pluggy and real entry points.

Third-party distributions are made on the fly: a `*.dist-info` folder (METADATA,
entry_points.txt, top_level.txt) next to the plugin module in `tmp_path`, which goes on
`sys.path` (importlib.metadata finds distributions there) or on PYTHONPATH for the CLI.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import io
import json
import os
import subprocess
import sys
import textwrap
import uuid
from contextlib import redirect_stdout
from pathlib import Path

import attrs
import pytest
from conftest import FIRST_PARTY_PLUGINS

from jepa_core import KINDS, plugins
from jepa_core.commands.listing import plugins_json
from jepa_core.errors import PluginError, PluginFailed, UnknownComponentError
from jepa_core.hookspecs import REGISTRATION_HOOKS, hookimpl
from jepa_core.plugins import make_plugin_manager

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"image", "vit", "objectives", "eval", "video"}
FIRST_PARTY_MODULES = FIRST_PARTY_PLUGINS
OFF_SWITCH = "JEPA_DISABLE_PLUGIN_AUTOLOAD"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in (OFF_SWITCH, "JEPA_PLUGINS", "JEPA_TRACE_HOOKS"):
        monkeypatch.delenv(var, raising=False)


def masker_plugin(component: str, extra: str = "") -> str:
    """Source of a plugin module that registers one masker named `component`."""
    return textwrap.dedent(f'''
        import attrs
        from jepa_core.hookspecs import hookimpl

        @attrs.frozen
        class Config:
            """A test masker."""
            k: int = 1

        @hookimpl
        def register_maskers(register):
            register({component!r}, Config, "{{module}}_factories:build")
    ''') + textwrap.dedent(extra)


class Sandbox:
    """Throwaway plugin modules and distributions in tmp_path, importable in and out of process."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self.modules: list[str] = []
        monkeypatch.syspath_prepend(str(root))

    def write(self, relative: str, text: str) -> None:
        (self.root / relative).write_text(text)
        importlib.invalidate_caches()  # the folder is on sys.path already: rescan it

    def module(self, source: str, stem: str = "plug") -> str:
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        self.write(f"{name}.py", source.replace("{module}", name))
        self.modules.append(name)
        return name

    def distribution(self, dist: str, version: str, entry_points: dict[str, str]) -> None:
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = ["[jepa]", *(f"{k} = {v}" for k, v in entry_points.items())]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        tops = sorted({v.split(":")[0].split(".")[0] for v in entry_points.values()})
        (info / "top_level.txt").write_text("\n".join(tops) + "\n")
        importlib.invalidate_caches()  # importlib.metadata caches folder listings too

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in (OFF_SWITCH, "JEPA_PLUGINS", "JEPA_TRACE_HOOKS")}
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), env.get("PYTHONPATH", "")])
        env["COLUMNS"] = "200"  # rich wraps at 80 columns without a terminal
        env.update(extra)
        return env

    def cleanup(self) -> None:
        for name in self.modules:
            for mod in [m for m in sys.modules if m == name or m.startswith(name + "_")]:
                del sys.modules[mod]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    box = Sandbox(tmp_path, monkeypatch)
    yield box
    box.cleanup()


def jepa(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=60)


def broken_names(registry) -> list[str]:
    return [b.name for b in registry.broken]


# -- first-party plugins, metadata, no global state ------------------------------------------
def test_first_party_components_record_plugin_distribution_and_version():
    registry = make_plugin_manager()
    assert registry.broken == []
    version = md.version("jepa-core")
    specs = {(s.kind, s.name): s for s in registry.all_components()}
    assert specs[("masker", "multiblock")].plugin == "image"
    assert specs[("encoder", "vit")].plugin == "vit"
    assert specs[("loss", "smooth_l1")].plugin == "objectives"
    first_party = [spec for spec in specs.values() if spec.plugin in FIRST_PARTY]
    assert {spec.kind for spec in first_party} == set(KINDS)
    for spec in first_party:
        assert spec.distribution == "jepa-core"
        assert spec.version == version
        assert spec.description  # first line of the config docstring
    for name in FIRST_PARTY:
        info = registry.plugins[name]
        assert (info.source, info.distribution, info.version) == ("entry point", "jepa-core",
                                                                  version)


def test_each_call_builds_a_fresh_plugin_manager():
    a, b = make_plugin_manager(), make_plugin_manager()
    assert a.pm is not b.pm and a.components is not b.components
    a.components["masker"].clear()
    assert "multiblock" in b.components["masker"]


def test_every_registration_hook_reaches_its_kind():
    @attrs.frozen
    class Cfg:
        pass

    class AllKinds:
        @hookimpl
        def register_methods(self, register):
            register("t_method", Cfg, lambda cfg, parts: ("method", parts))

        @hookimpl
        def register_encoders(self, register):
            register("t_encoder", Cfg, lambda cfg: "encoder")

        @hookimpl
        def register_predictors(self, register):
            register("t_predictor", Cfg, lambda cfg, encoder: ("predictor", encoder))

        @hookimpl
        def register_maskers(self, register):
            register("t_masker", Cfg, lambda cfg, grid: ("masker", grid))

        @hookimpl
        def register_target_updaters(self, register):
            register("t_target_updater", Cfg, lambda cfg, total_steps: total_steps)

        @hookimpl
        def register_losses(self, register):
            register("t_loss", Cfg, lambda cfg: "loss")

        @hookimpl
        def register_data_sources(self, register):
            register("t_data_source", Cfg, lambda cfg, image_size, train: (image_size, train),
                     description="explicit description")

        @hookimpl
        def register_eval_protocols(self, register):
            register("t_eval_protocol", Cfg, lambda cfg: "protocol")

    registry = make_plugin_manager(autoload=False, objects=[("all_kinds", AllKinds())])
    assert set(REGISTRATION_HOOKS) == set(KINDS)
    for kind in KINDS:
        spec = registry.get(kind, f"t_{kind}")
        assert (spec.kind, spec.plugin, spec.distribution) == (kind, "all_kinds", None)
    assert registry.get("masker", "t_masker").build(Cfg(), grid=(4, 4)) == ("masker", (4, 4))
    assert registry.get("method", "t_method").build(Cfg(), parts=1) == ("method", 1)
    assert registry.get("data_source", "t_data_source").description == "explicit description"


def test_unknown_component_lists_registered_names_and_the_nearest():
    registry = make_plugin_manager(FIRST_PARTY_MODULES, autoload=False)
    with pytest.raises(UnknownComponentError) as info:
        registry.get("masker", "multiblok")
    message = str(info.value)
    assert "no masker named 'multiblok' is registered" in message
    assert "Did you mean 'multiblock'?" in message
    assert "Registered maskers: 'multiblock', 'multiblock3d', 'random'." in message
    assert "jepa -p MODULE" in message


# -- discovery order -------------------------------------------------------------------------
def test_discovery_order_builtins_entry_points_command_line_objects(sandbox, monkeypatch):
    builtin = sandbox.module(masker_plugin("from_builtin"), "builtin")
    third = sandbox.module(masker_plugin("from_entry_point"), "third")
    env_mod = sandbox.module(masker_plugin("from_env"), "envmod")
    cli_mod = sandbox.module(masker_plugin("from_cli"), "climod")
    sandbox.distribution("acme-masks", "2.0.1", {"acme": third})
    monkeypatch.setattr(plugins, "BUILTIN_PLUGINS", (builtin,))
    monkeypatch.setenv("JEPA_PLUGINS", f" {env_mod} ,")

    class ObjectPlugin:
        @hookimpl
        def register_maskers(self, register):
            register("from_object", attrs.make_class("C", {}, frozen=True), lambda c: None)

    registry = make_plugin_manager([cli_mod], objects=[("obj", ObjectPlugin())])
    assert registry.broken == []
    names = list(registry.plugins)
    # other installed distributions may add entry points: look at ours and the first-party ones
    entry_points = names[1:-3]
    assert names[0] == builtin and names[-3:] == [env_mod, cli_mod, "obj"]
    assert {"acme", *FIRST_PARTY} <= set(entry_points)
    # jepa-core's own entry points first, then the others sorted by entry-point name
    first_party = [n for n in entry_points if registry.plugins[n].distribution == "jepa-core"]
    assert entry_points[:len(first_party)] == sorted(FIRST_PARTY)
    assert entry_points[len(first_party):] == sorted(entry_points[len(first_party):])
    sources = [registry.plugins[n].source for n in names]
    assert sources == (["builtin"] + ["entry point"] * len(entry_points)
                       + ["command line"] * 2 + ["object"])
    # hooks run in discovery order, so components appear in that order too
    ours = {"from_builtin", "from_entry_point", "multiblock", "random", "from_env", "from_cli",
            "from_object"}
    maskers = [s.name for s in registry.components["masker"].values() if s.name in ours]
    assert maskers == ["from_builtin", "multiblock", "random", "from_entry_point", "from_env",
                       "from_cli", "from_object"]
    acme = registry.get("masker", "from_entry_point")
    assert (acme.plugin, acme.distribution, acme.version) == ("acme", "acme-masks", "2.0.1")


def test_a_module_named_twice_is_loaded_once(sandbox, monkeypatch):
    mod = sandbox.module(masker_plugin("once"))
    monkeypatch.setenv("JEPA_PLUGINS", mod)
    registry = make_plugin_manager([mod, mod])
    assert registry.broken == []
    assert list(registry.plugins).count(mod) == 1


# -- the off switch --------------------------------------------------------------------------
def test_off_switch_loads_no_entry_points(monkeypatch):
    monkeypatch.setenv(OFF_SWITCH, "1")
    registry = make_plugin_manager()
    assert registry.plugins == {} and registry.all_components() == []
    assert make_plugin_manager(autoload=False).all_components() == []


def test_off_switch_then_dash_p_brings_the_maskers_back(monkeypatch):
    monkeypatch.setenv(OFF_SWITCH, "1")
    registry = make_plugin_manager(["jepa_image.plugin"])
    assert registry.broken == []
    assert sorted(registry.components["masker"]) == ["multiblock", "random"]
    assert registry.components["encoder"] == {}
    spec = registry.get("masker", "multiblock")
    # found through the module's distribution, even though it was not an entry point
    assert (spec.plugin, spec.distribution) == ("jepa_image.plugin", "jepa-core")
    assert registry.plugins["jepa_image.plugin"].source == "command line"


def test_off_switch_skips_a_broken_entry_point(sandbox, monkeypatch):
    bad = sandbox.module('raise RuntimeError("boom at import")\n', "kaput")
    sandbox.distribution("kaput-dist", "0.0.1", {"kaput": bad})
    assert broken_names(make_plugin_manager()) == ["kaput"]
    monkeypatch.setenv(OFF_SWITCH, "1")
    assert make_plugin_manager().broken == []


# -- duplicates ------------------------------------------------------------------------------
@pytest.mark.parametrize("entry_point", ["aa_beit", "zz_beit"])
def test_a_plugin_cannot_take_a_built_in_name_whatever_its_entry_point_sorts_as(sandbox,
                                                                              entry_point):
    """Before: entry points loaded sorted by name, so "aa_beit" came before jepa-core's
    "image", took `multiblock`, and `image` was marked broken (digits, synthetic and
    image_folder gone) with a message telling the user to fix or uninstall jepa-core."""
    dup = sandbox.module(masker_plugin("multiblock", '''
        @hookimpl
        def register_losses(register):
            register("beit_loss", Config, "nowhere:build")
    '''), "dup")
    sandbox.distribution("jepa-beit", "3.1", {entry_point: dup})
    registry = make_plugin_manager()
    assert registry.broken == []
    assert registry.get("masker", "multiblock").plugin == "image"
    assert {"digits", "synthetic", "image_folder"} <= set(registry.components["data_source"])
    # only the clashing component of the newcomer is refused; the rest of it loads
    assert registry.get("loss", "beit_loss").plugin == entry_point
    [refused] = registry.refused
    assert (refused.kind, refused.name, refused.plugin, refused.kept_by) == (
        "masker", "multiblock", entry_point, "image")
    assert refused.message == (
        f"plugin {entry_point!r} (jepa-beit) registers masker 'multiblock', a name plugin "
        f"'image' (jepa-core) registered first: recipes naming 'multiblock' get 'image''s, and "
        f"{entry_point!r}'s is ignored (its other components load). Rename the component in "
        f"{entry_point!r}, or leave one plugin out with `jepa -p no:{entry_point}`.")
    registry.raise_if_broken()  # a run is not refused for it
    assert plugins_json(registry)["refused"] == [
        {"kind": "masker", "name": "multiblock", "plugin": entry_point,
         "distribution": "jepa-beit", "kept_by": "image", "message": refused.message}]


def test_a_hookimpl_marked_tryfirst_does_not_jump_the_queue(sandbox):
    dup = sandbox.module(textwrap.dedent('''
        import attrs
        from jepa_core.hookspecs import hookimpl

        @attrs.frozen
        class Config:
            """Pushy."""

        @hookimpl(tryfirst=True)
        def register_maskers(register):
            register("random", Config, "nowhere:build")
    '''), "pushy")
    registry = make_plugin_manager([dup])
    assert registry.get("masker", "random").plugin == "image"
    assert [r.plugin for r in registry.refused] == [dup]


def test_duplicate_through_dash_p_names_both(sandbox):
    dup = sandbox.module(masker_plugin("random"), "dup")
    registry = make_plugin_manager([dup])
    assert registry.broken == []
    [refused] = registry.refused
    assert (f"plugin {dup!r} (no distribution) registers masker 'random', a name plugin "
            f"'image' (jepa-core) registered first" in refused.message)
    assert registry.get("masker", "random").plugin == "image"


def test_a_plugin_registering_one_name_twice_is_broken():
    @attrs.frozen
    class Cfg:
        pass

    class Twice:
        @hookimpl
        def register_maskers(self, register):
            register("twin", Cfg, "m:f")
            register("twin", Cfg, "m:g")

    registry = make_plugin_manager(autoload=False, objects=[("twice", Twice())])
    assert [(b.name, b.error) for b in registry.broken] == [
        ("twice", "plugin 'twice' registers masker 'twin' twice; register each name once.")]


def test_two_distributions_with_one_entry_point_name_the_second_is_named(sandbox):
    first = sandbox.module(masker_plugin("first_masker"), "first")
    second = sandbox.module(masker_plugin("second_masker"), "second")
    sandbox.distribution("aaa-dist", "1.0", {"same": first})
    sandbox.distribution("bbb-dist", "1.0", {"same": second})
    registry = make_plugin_manager()
    [broken] = registry.broken
    assert broken.distribution in ("aaa-dist", "bbb-dist")
    assert "the entry-point name 'same' is already taken by distribution" in broken.error
    assert "Rename its entry point" in broken.error


def test_cli_warns_about_a_refused_component_and_lists_it(sandbox):
    dup = sandbox.module(masker_plugin("multiblock"), "dup")
    sandbox.distribution("jepa-beit", "3.1", {"aa_beit": dup})
    env = sandbox.env()
    check = jepa("check", "recipes/quickstart.yaml", "--no-data", env=env)
    assert check.returncode == 0, check.stderr
    flat_err = " ".join(check.stderr.split())
    assert ("warning: plugin 'aa_beit' (jepa-beit) registers masker 'multiblock', a name plugin "
            "'image' (jepa-core) registered first" in flat_err)
    assert "masker: multiblock from plugin image (jepa-core" in check.stdout
    listing = jepa("plugins", env=env)
    assert "jepa -p no:aa_beit" in " ".join(listing.stdout.split())


# -- leaving a plugin out by name --------------------------------------------------------------
@pytest.fixture
def beit(sandbox):
    bad = sandbox.module('raise RuntimeError("beit is broken")\n', "beit")
    sandbox.distribution("jepa-beit", "0.2", {"beit": bad})
    return sandbox


@pytest.mark.parametrize("how", ["entry point", "distribution", "env"])
def test_a_plugin_can_be_left_out_by_name(beit, monkeypatch, how):
    assert broken_names(make_plugin_manager()) == ["beit"]
    if how == "env":
        monkeypatch.setenv("JEPA_DISABLE_PLUGINS", " beit , ")
        registry = make_plugin_manager()
    else:
        registry = make_plugin_manager(["no:beit" if how == "entry point" else "no:jepa-beit"])
    assert registry.broken == [] and registry.blocked == ["beit"]
    registry.raise_if_broken()
    assert "multiblock" in registry.components["masker"]
    assert plugins_json(registry)["blocked"] == ["beit"]


def test_a_dash_p_module_can_be_left_out_too(sandbox):
    mod = sandbox.module(masker_plugin("mine"))
    registry = make_plugin_manager([mod, f"no:{mod}"])
    assert "mine" not in registry.components["masker"] and registry.blocked == [mod]


def test_leaving_out_a_name_that_is_not_there_is_an_error_with_the_nearest(beit):
    with pytest.raises(PluginError) as info:
        make_plugin_manager(["no:beat"])
    message = str(info.value)
    assert message.startswith("`-p no:beat` (or JEPA_DISABLE_PLUGINS) names no installed "
                              "plugin, so nothing would be left out. Did you mean 'beit'?")
    assert "jepa-beit" in message and "image" in message


def test_cli_leaves_a_broken_plugin_out_for_run_and_its_workers(beit, tmp_path):
    env = beit.env()
    assert jepa("check", "recipes/quickstart.yaml", "--no-data", env=env).returncode == 2
    check = jepa("-p", "no:beit", "check", "recipes/quickstart.yaml", "--no-data", env=env)
    assert check.returncode == 0, check.stderr
    listing = jepa("-p", "no:beit", "plugins", env=env)
    assert "left out: beit" in listing.stdout and "broken" not in listing.stdout
    typo = jepa("-p", "no:bet", "plugins", env=env)
    assert typo.returncode == 2 and "Did you mean 'beit'?" in typo.stderr
    assert "Traceback" not in typo.stderr


# -- plugins that fail -----------------------------------------------------------------------
def test_plugin_that_fails_to_import_is_reported_by_name_with_the_off_switch(sandbox):
    bad = sandbox.module('raise RuntimeError("boom at import")\n', "kaput")
    sandbox.distribution("kaput-dist", "0.0.1", {"kaput": bad})
    registry = make_plugin_manager()
    [broken] = registry.broken
    assert (broken.name, broken.source, broken.distribution) == ("kaput", "entry point",
                                                                 "kaput-dist")
    assert broken.error.startswith("import failed: RuntimeError: boom at import (at ")
    assert f"{bad}.py:1). The fault is in the plugin: fix that line" in broken.error
    # the other plugins still work
    assert registry.get("masker", "multiblock").plugin == "image"
    with pytest.raises(PluginError) as info:
        registry.raise_if_broken()
    message = str(info.value)
    assert "1 plugin(s) failed to load: kaput (entry point): import failed" in message
    assert f"{OFF_SWITCH}=1" in message and "jepa -p MODULE" in message


def test_missing_dash_p_module_is_broken_not_fatal():
    registry = make_plugin_manager(["no_such_jepa_plugin_module"])
    [broken] = registry.broken
    assert broken.source == "command line"
    assert broken.error == ("import failed: ModuleNotFoundError: No module named "
                            "'no_such_jepa_plugin_module'. Check the module name.")
    assert "multiblock" in registry.components["masker"]


def test_misspelt_hook_is_caught_by_check_pending(sandbox):
    typo = sandbox.module(masker_plugin("never_seen", '''
        @hookimpl
        def register_masker(register):  # missing "s"
            register("typo", Config, "nowhere:build")
    '''), "typo")
    registry = make_plugin_manager([typo])
    [broken] = registry.broken
    assert broken.name == typo
    assert "unknown hook 'register_masker'" in broken.error
    assert "Did you mean 'register_maskers'?" in broken.error
    assert "Hook names must match `jepa_core.hookspecs` (misspelt?)" in broken.error
    # nothing of the plugin is registered, not even its correctly spelt hook
    assert "never_seen" not in registry.components["masker"]
    assert not registry.pm.has_plugin(typo)
    assert registry.get("masker", "multiblock").plugin == "image"


def test_hook_with_wrong_argument_name_is_invalid(sandbox):
    wrong = sandbox.module(textwrap.dedent('''
        from jepa_core.hookspecs import hookimpl

        @hookimpl
        def register_maskers(reg):
            pass
    '''), "wrongarg")
    registry = make_plugin_manager([wrong], autoload=False)
    [broken] = registry.broken
    assert broken.error.startswith("invalid hook: ")
    assert "reg" in broken.error


def test_register_hook_that_raises_is_reported():
    @attrs.frozen
    class Cfg:
        pass

    class Raising:
        @hookimpl
        def register_encoders(self, register):
            register("fine_before_the_crash", Cfg, lambda c: None)

        @hookimpl
        def register_maskers(self, register):
            raise ValueError("masker table is corrupt")

    registry = make_plugin_manager(objects=[("raising", Raising())])
    [broken] = registry.broken
    assert broken == plugins.BrokenPlugin(
        "raising", "object", None, "register_maskers raised ValueError: masker table is corrupt")
    assert "fine_before_the_crash" not in registry.components["encoder"]
    assert "raising" not in plugins_json(registry)["plugins"]


@pytest.mark.parametrize("args, expected", [
    (("toy", dict, "m:f"), "plugin 'bad' registered masker 'toy' with config class <class "
                           "'dict'>, which is not an attrs class. Decorate it with "
                           "@attrs.frozen."),
    (("", "attrs", "m:f"), "plugin 'bad' registered a masker with name ''; names must be "
                           "non-empty strings."),
    ((7, "attrs", "m:f"), "plugin 'bad' registered a masker with name 7; names must be "
                          "non-empty strings."),
    (("toy", "attrs", 42), "plugin 'bad' registered masker 'toy' with factory 42; pass a "
                           "callable or a 'module:attribute' string."),
    (("toy", "attrs", "no_colon"), "plugin 'bad' registered masker 'toy' with factory "
                                   "'no_colon'; pass a callable or a 'module:attribute' "
                                   "string."),
])
def test_bad_register_calls_are_errors(args, expected):
    @attrs.frozen
    class Cfg:
        pass

    name, config, factory = args

    class Bad:
        @hookimpl
        def register_maskers(self, register):
            register(name, Cfg if config == "attrs" else config, factory)

    registry = make_plugin_manager(autoload=False, objects=[("bad", Bad())])
    assert [(b.name, b.error) for b in registry.broken] == [("bad", expected)]
    with pytest.raises(PluginError, match="bad"):
        registry.raise_if_broken()


# -- lazy factories --------------------------------------------------------------------------
def test_string_factory_is_imported_only_when_built(sandbox):
    mod = sandbox.module(masker_plugin("lazy"))
    sandbox.write(f"{mod}_factories.py", textwrap.dedent('''
        def build(config, **context):
            return ("built", config.k, context)
    '''))
    registry = make_plugin_manager([mod], autoload=False)
    spec = registry.get("masker", "lazy")
    assert spec.factory == f"{mod}_factories:build"
    assert f"{mod}_factories" not in sys.modules
    assert spec.build(spec.config_class(k=3), grid=(2, 2)) == ("built", 3, {"grid": (2, 2)})
    assert f"{mod}_factories" in sys.modules


def test_missing_factory_module_lists_fine_but_build_names_the_plugin(sandbox):
    mod = sandbox.module(masker_plugin("ghost"))  # "<mod>_factories" is never written
    registry = make_plugin_manager([mod])
    assert registry.broken == []
    listed = {c["name"]: c for c in plugins_json(registry)["components"]}
    assert listed["ghost"]["plugin"] == mod
    spec = registry.get("masker", "ghost")
    with pytest.raises(PluginError) as info:
        spec.build(spec.config_class(), grid=(2, 2))
    message = str(info.value)
    assert f"plugin {mod!r} registered masker 'ghost' with factory '{mod}_factories:build', " \
           f"which cannot be imported: No module named '{mod}_factories'" in message
    assert "fix the factory path" in message


def test_missing_factory_attribute_names_the_plugin(sandbox):
    mod = sandbox.module(masker_plugin("half"))
    sandbox.write(f"{mod}_factories.py", "def other(config):\n    return 1\n")
    registry = make_plugin_manager([mod], autoload=False)
    spec = registry.get("masker", "half")
    with pytest.raises(PluginError, match=f"plugin '{mod}' registered masker 'half'"):
        spec.build(spec.config_class())


def test_factory_module_that_raises_is_a_plugin_fault_with_its_line_not_a_wrong_path(sandbox):
    """Before: "which cannot be imported: name 'torhc' is not defined. Reinstall ... or fix
    the factory path", when the path was right and line 3 of the module was wrong."""
    mod = sandbox.module(masker_plugin("buggy"))
    sandbox.write(f"{mod}_factories.py", "import math\n\nSCALE = torhc.pi\n\n"
                                          "def build(config):\n    return 1\n")
    spec = make_plugin_manager([mod], autoload=False).get("masker", "buggy")
    with pytest.raises(PluginFailed) as info:
        spec.build(spec.config_class())
    message = str(info.value)
    assert "fix the factory path" not in message
    assert (f"the path is right, but importing module '{mod}_factories' raised NameError: "
            f"name 'torhc' is not defined (at ") in message
    assert f"{mod}_factories.py:3). The fault is in the plugin" in message


def test_factory_module_missing_a_dependency_says_what_to_install(sandbox):
    mod = sandbox.module(masker_plugin("needy"))
    sandbox.write(f"{mod}_factories.py", "import not_installed_dep_xyz\n")
    spec = make_plugin_manager([mod], autoload=False).get("masker", "needy")
    with pytest.raises(PluginFailed) as info:
        spec.build(spec.config_class())
    assert "it needs 'not_installed_dep_xyz', which is not installed" in str(info.value)
    assert f"{mod}_factories.py:1)" in str(info.value)


def test_misspelt_factory_attribute_gets_the_nearest_name(sandbox):
    mod = sandbox.module(masker_plugin("near"))
    sandbox.write(f"{mod}_factories.py", "def built(config):\n    return 1\n")
    spec = make_plugin_manager([mod], autoload=False).get("masker", "near")
    with pytest.raises(PluginError) as info:
        spec.build(spec.config_class())
    assert f"has no attribute 'build' (did you mean {mod}_factories:built?)" in str(info.value)
    assert "fix the factory path" in str(info.value)


@pytest.mark.parametrize("source, line, kind", [
    ("import attrs\n\nx = 1\nprint(undefined_name)\n", 4, "NameError"),
    ("import attrs\n\ndef f(:\n    pass\n", 3, "SyntaxError"),
    ("from jepa_core.hookspecs import hookimpl\nimport not_there_abc\n", 2,
     "ModuleNotFoundError"),
])
def test_plugin_import_errors_give_file_and_line(sandbox, source, line, kind):
    """Before: `import failed: NameError: ...` and nothing to say where."""
    mod = sandbox.module(source, "badimport")
    [broken] = make_plugin_manager([mod], autoload=False).broken
    assert broken.error.startswith(f"import failed: {kind}: ")
    assert f"{mod}.py:{line})" in broken.error
    if kind == "ModuleNotFoundError":
        assert "it needs 'not_there_abc', which is not installed" in broken.error


def test_an_entry_point_to_a_module_that_is_gone_says_reinstall(sandbox):
    sandbox.distribution("half-installed", "1.0", {"half": "gone_module_xyz.plugin"})
    [broken] = make_plugin_manager().broken
    assert broken.error == ("import failed: ModuleNotFoundError: No module named "
                            "'gone_module_xyz'. The distribution half-installed is installed "
                            "incompletely: reinstall it.")


# -- tracing ---------------------------------------------------------------------------------
def test_trace_env_writes_hook_calls(monkeypatch):
    monkeypatch.setenv("JEPA_TRACE_HOOKS", "1")
    out = io.StringIO()
    with redirect_stdout(out):
        registry = make_plugin_manager()
        seen: list[str] = []
        registry.pm.hook.register_maskers(register=lambda name, *a, **k: seen.append(name))
    assert sorted(seen) == ["multiblock", "multiblock3d", "random"]
    assert "register_maskers [hook]" in out.getvalue()


# -- through the command line, in a subprocess -----------------------------------------------
@pytest.fixture
def kaput(sandbox):
    bad = sandbox.module('raise RuntimeError("boom at import")\n', "kaput")
    sandbox.distribution("kaput-dist", "0.0.1", {"kaput": bad})
    return sandbox


def test_cli_lists_with_a_broken_entry_point_but_run_refuses(kaput):
    env = kaput.env()
    listing = jepa("plugins", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "broken plugin kaput (entry point, kaput-dist): import failed: RuntimeError: " \
           "boom at import" in listing.stdout
    assert f"{OFF_SWITCH}=1" in listing.stdout and "multiblock" in listing.stdout

    data = json.loads(jepa("plugins", "--json", env=env).stdout)
    assert [b["name"] for b in data["broken"]] == ["kaput"]
    assert {c["name"] for c in data["components"]} >= {"multiblock", "vit", "ema"}

    assert jepa("--help", env=env).returncode == 0

    run = jepa("run", "recipes/quickstart.yaml", env=env)
    assert run.returncode == 2
    assert "kaput" in run.stderr and "plugin error" in run.stderr
    assert OFF_SWITCH in " ".join(run.stderr.split())
    assert "Traceback" not in run.stdout + run.stderr


def test_cli_off_switch_and_dash_p_work_around_a_broken_entry_point(kaput):
    env = kaput.env(**{OFF_SWITCH: "1"})
    bare = json.loads(jepa("plugins", "--json", env=env).stdout)
    assert bare == {"components": [], "plugins": [], "broken": [], "refused": [], "blocked": []}
    loaded = [arg for module in FIRST_PARTY_PLUGINS for arg in ("-p", module)]
    check = jepa(*loaded, "check", "recipes/quickstart.yaml", env=env)
    assert check.returncode == 0, check.stderr
    assert "masker: multiblock from plugin jepa_image.plugin (jepa-core" in check.stdout


def test_cli_entry_point_plugin_component_is_listed_with_its_distribution(sandbox):
    mod = sandbox.module(masker_plugin("acme_masker"))
    sandbox.distribution("acme-masks", "2.0.1", {"acme": mod})
    data = json.loads(jepa("plugins", "--json", env=sandbox.env()).stdout)
    [acme] = [c for c in data["components"] if c["name"] == "acme_masker"]
    assert acme == {"kind": "masker", "name": "acme_masker", "plugin": "acme",
                    "distribution": "acme-masks", "version": "2.0.1",
                    "description": "A test masker."}
    assert {"name": "acme", "source": "entry point", "distribution": "acme-masks",
            "version": "2.0.1", "module": mod} in data["plugins"]


def test_undecorated_hook_function_is_ignored_silently():
    """pluggy only collects @hookimpl functions: documented in docs/hooks.md "When it breaks"."""
    @attrs.frozen
    class Cfg:
        pass

    class Forgot:
        def register_maskers(self, register):  # no @hookimpl
            register("forgotten", Cfg, "m:f")

    registry = make_plugin_manager(autoload=False, objects=[("forgot", Forgot())])
    assert registry.broken == [] and "forgot" in registry.plugins
    assert registry.components["masker"] == {}
