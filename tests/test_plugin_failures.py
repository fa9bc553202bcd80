"""Plugins whose code raises at run time, and `jepa check` refusing what `jepa run` refuses.

A factory or lifecycle hook that raises is reported as `PluginFailed` (exit 1): the plugin,
the component (kind, name) or the hook, the exception's type and message, and the file:line
in the plugin where it was raised. Checkpoints written before stay.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest
import yaml
from conftest import FIRST_PARTY_PLUGINS, TINY

from jepa_core.errors import ConfigError, PluginError, PluginFailed, RunError
from jepa_core.hookspecs import hookimpl
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.trainer import train

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = FIRST_PARTY_PLUGINS


def flat(text: str) -> str:
    return " ".join(" ".join(line.strip(" │╭╮╰╯─") for line in text.splitlines()).split())


def jepa(*args: str, path: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JEPA_DISABLE_PLUGIN_AUTOLOAD", "JEPA_PLUGINS", "JEPA_TRACE_HOOKS")}
    env.update(COLUMNS="250", PYTHONPATH=str(path))
    return subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


def line_of(path: Path, text: str) -> int:
    return 1 + next(i for i, line in enumerate(path.read_text().splitlines()) if text in line)


@attrs.frozen
class LossConfig:
    """A loss for these tests."""


def _helper_that_parses(text: str) -> dict:
    return json.loads(text)  # raises inside the json module, called from the plugin


def factory_that_raises(config: LossConfig) -> object:
    return _helper_that_parses("{not json")


class LossPlugin:
    @hookimpl
    def register_losses(self, register):
        register("json_loss", LossConfig, factory_that_raises)
        register("config_loss", LossConfig, self.refuses)

    @staticmethod
    def refuses(config):
        raise ConfigError("this loss needs a predictor of depth 2")


# -- factories -------------------------------------------------------------------------------
def test_factory_that_raises_names_plugin_component_and_line():
    registry = make_plugin_manager(FIRST_PARTY, autoload=False, objects=[("lossy", LossPlugin())])
    spec = registry.get("loss", "json_loss")
    with pytest.raises(PluginFailed) as info:
        spec.build(LossConfig())
    message = str(info.value)
    line = inspect.getsourcelines(_helper_that_parses)[1] + 1
    assert message.startswith("plugin 'lossy' (no distribution) failed to build loss "
                              "'json_loss': JSONDecodeError: Expecting property name enclosed "
                              "in double quotes: line 1 column 2 (char 1) (raised at ")
    assert f"(raised at {__file__}:{line})" in message  # the plugin's line, not json's
    assert info.value.exit_code == 1 and isinstance(info.value, PluginError)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_factory_errors_meant_for_the_user_pass_unchanged():
    registry = make_plugin_manager(FIRST_PARTY, autoload=False, objects=[("lossy", LossPlugin())])
    with pytest.raises(ConfigError, match="^this loss needs a predictor of depth 2$"):
        registry.get("loss", "config_loss").build(LossConfig())


# -- lifecycle hooks -------------------------------------------------------------------------
class Quiet:
    @hookimpl
    def on_train_end(self, run, metrics):
        pass


class Wrapping:
    @hookimpl(wrapper=True)
    def on_train_end(self, run, metrics):
        return (yield)


class Raising:
    @hookimpl
    def on_train_end(self, run, metrics):
        raise OSError(28, "No space left on device")


def test_hook_that_raises_names_the_plugin_among_others(tmp_path):
    registry = make_plugin_manager(autoload=False, objects=[
        ("quiet", Quiet()), ("raiser", Raising()), ("wrapper", Wrapping())])
    run = types.SimpleNamespace(run_dir=tmp_path / "runs" / "r")
    with pytest.raises(PluginFailed) as info:
        registry.hooks.on_train_end(run=run, metrics={})
    line = inspect.getsourcelines(Raising.on_train_end)[1] + 2
    assert str(info.value) == (
        f"plugin 'raiser' raised in its on_train_end hook: OSError: [Errno 28] No space left on "
        f"device (raised at {__file__}:{line}). The run stopped; the fault is in the plugin. "
        f"Checkpoints already written in {run.run_dir}/checkpoints stay: once the plugin is "
        f"fixed (or left out), continue with `jepa run RECIPE --resume auto`.")
    assert info.value.exit_code == 1


def test_hooks_that_pass_return_what_pluggy_returns():
    registry = make_plugin_manager(autoload=False, objects=[("quiet", Quiet())])
    assert registry.hooks.on_train_end(run=None, metrics={}) == []


class StopsTheRun:
    @hookimpl
    def on_step_end(self, run, step, metrics):
        if step == 3:
            raise ZeroDivisionError("division by zero")


def test_training_with_a_raising_hook_keeps_the_checkpoints(tiny_dict):
    tiny_dict["train"].update(checkpoint_every=1, keep_last=5, max_steps=3)
    registry = make_plugin_manager(FIRST_PARTY, autoload=False, objects=[("stops", StopsTheRun())])
    recipe = recipe_from_dict(tiny_dict, registry)
    with pytest.raises(PluginFailed, match=r"^plugin 'stops' raised in its on_step_end hook: "
                                           r"ZeroDivisionError: division by zero \(raised at "):
        train(recipe, registry)
    paths = ckpt.list_checkpoints(recipe.run_dir / "checkpoints")
    assert [p.name for p in paths] == [ckpt.checkpoint_name(1), ckpt.checkpoint_name(2)]
    assert ckpt.load(paths[-1])["step"] == 2


HOOK_PLUGIN = '''
from jepa_core.hookspecs import hookimpl

@hookimpl
def on_step_end(run, step, metrics):
    if step == 2:
        raise ValueError(f"cannot log step {step}")
'''


@pytest.mark.slow
def test_cli_run_with_a_raising_hook_exits_1_naming_it(tmp_path):
    (tmp_path / "bad_hook.py").write_text(HOOK_PLUGIN)
    recipe = copy.deepcopy(TINY)
    recipe["out_dir"] = str(tmp_path / "runs")
    recipe["train"].update(checkpoint_every=1, max_steps=4)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    result = jepa("-p", "bad_hook", "run", str(tmp_path / "tiny.yaml"), path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    where = f"{tmp_path / 'bad_hook.py'}:{line_of(tmp_path / 'bad_hook.py', 'raise')}"
    assert (f"plugin 'bad_hook' raised in its on_step_end hook: ValueError: cannot log step 2 "
            f"(raised at {where})") in flat(result.stderr)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "runs" / "tiny" / "checkpoints")] \
        == [ckpt.checkpoint_name(1)]


# -- `jepa check` refuses what `jepa run` refuses --------------------------------------------
BROKEN_AT_IMPORT = 'raise RuntimeError("boom at import")\n'
UNIMPORTABLE_LOSS = '''
import attrs
from jepa_core.hookspecs import hookimpl

@attrs.frozen
class Cfg:
    """A loss whose factory module is missing."""

@hookimpl
def register_losses(register):
    register("ghost_loss", Cfg, "no_such_loss_module:build")
'''
RAISING_LOSS = UNIMPORTABLE_LOSS.replace('"no_such_loss_module:build"', "build") + '''
def build(config):
    return [][0]
'''


def test_check_refuses_a_broken_plugin(tmp_path):
    (tmp_path / "kaput.py").write_text(BROKEN_AT_IMPORT)
    result = jepa("-p", "kaput", "check", "recipes/quickstart.yaml", path=tmp_path)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr and "is valid" not in result.stdout
    assert ("1 plugin(s) failed to load: kaput (command line): import failed: RuntimeError: "
            "boom at import") in flat(result.stderr)


@pytest.mark.slow  # a CLI run that imports torch
def test_check_refuses_a_factory_that_cannot_be_imported(tmp_path):
    (tmp_path / "ghost.py").write_text(UNIMPORTABLE_LOSS)
    result = jepa("-p", "ghost", "check", "recipes/quickstart.yaml", "loss.name=ghost_loss",
                  path=tmp_path)
    assert result.returncode == 2, result.stdout
    assert "is valid" not in result.stdout
    assert ("plugin 'ghost' registered loss 'ghost_loss' with factory "
            "'no_such_loss_module:build', which cannot be imported: No module named "
            "'no_such_loss_module'") in flat(result.stderr)


@pytest.mark.slow  # a CLI run that imports torch
def test_check_refuses_a_factory_that_raises(tmp_path):
    (tmp_path / "raising.py").write_text(RAISING_LOSS)
    result = jepa("-p", "raising", "check", "recipes/quickstart.yaml", "loss.name=ghost_loss",
                  path=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr and "is valid" not in result.stdout
    where = f"{tmp_path / 'raising.py'}:{line_of(tmp_path / 'raising.py', 'return [][0]')}"
    assert ("plugin 'raising' (no distribution) failed to build loss 'ghost_loss': IndexError: "
            f"list index out of range (raised at {where})") in flat(result.stderr)


@pytest.mark.slow  # two CLI runs that import torch
def test_check_refuses_a_missing_data_root_unless_no_data(tmp_path):
    missing = tmp_path / "no-images"
    args = ["check", "recipes/quickstart.yaml", f"data={{name: image_folder, root: {missing}}}"]
    result = jepa(*args, path=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr and "is valid" not in result.stdout
    err = flat(result.stderr)
    assert f"data.root '{missing}' is not a directory" in err
    assert "`jepa check --no-data` plans the run without reading the data." in err
    planned = jepa(*args, "--no-data", path=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "recipe 'quickstart' is valid" in planned.stdout
    assert "assumed: ImageNet-1K's 1,281,167 (--no-data: the data was not read;" in \
        flat(planned.stdout)
    assert not missing.exists()


def test_check_plan_refuses_like_run_in_process():
    from jepa_core.commands.plan import check

    registry = make_plugin_manager(FIRST_PARTY, autoload=False, objects=[("lossy", LossPlugin())])
    recipe = recipe_from_dict({**TINY, "loss": {"name": "json_loss"}}, registry)
    with pytest.raises(PluginFailed, match="failed to build loss 'json_loss'"):
        check(recipe, registry)
    missing = recipe_from_dict({**TINY, "data": {"name": "image_folder", "root": "/no/such"}},
                               registry)
    with pytest.raises(RunError, match="is not a directory"):
        check(missing, registry)
    assert check(missing, registry, read_data=False).data_note.startswith("assumed")


class GhostLoss:
    @hookimpl
    def register_losses(self, register):
        register("ghost_loss", LossConfig, "no_such_loss_module:build")


def test_check_imports_every_factory_and_refuses_a_broken_plugin(tmp_path, monkeypatch):
    from jepa_core.commands.plan import check

    registry = make_plugin_manager(FIRST_PARTY, autoload=False, objects=[("ghost", GhostLoss())])
    ghost = recipe_from_dict({**TINY, "loss": {"name": "ghost_loss"}}, registry)
    with pytest.raises(PluginError, match="'no_such_loss_module:build', which cannot be "
                                          "imported: No module named 'no_such_loss_module'"):
        check(ghost, registry, read_data=False)
    (tmp_path / "kaput_mod.py").write_text(BROKEN_AT_IMPORT)
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = make_plugin_manager([*FIRST_PARTY, "kaput_mod"], autoload=False)
    with pytest.raises(PluginError, match="kaput_mod .command line.: import failed"):
        check(recipe_from_dict(TINY, broken), broken)
