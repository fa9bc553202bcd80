"""The `jepa` command line, called the way a user calls it: in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "recipes/quickstart.yaml"
COMMANDS = ("plugins", "check", "run", "masks", "eval")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JEPA_DISABLE_PLUGIN_AUTOLOAD", "JEPA_PLUGINS", "JEPA_TRACE_HOOKS")}
    env["COLUMNS"] = "200"  # rich wraps at 80 columns without a terminal
    env.update(extra)
    return env


def jepa(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO
         ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                          text=True, env=env or clean_env(), cwd=cwd, timeout=60)


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def flat(text: str) -> str:
    """Panel text with the box characters and line breaks taken out (rich wraps long lines)."""
    lines = [line.strip(" │╭╮╰╯─") for line in text.splitlines()]
    return " ".join(line for line in lines if line)


@pytest.fixture
def plugin_dir(tmp_path):
    """A one-off plugin module `toy_masks` (not installed) that registers the masker `toy`."""
    (tmp_path / "toy_masks.py").write_text(textwrap.dedent('''
        import attrs
        from jepa_core.hookspecs import hookimpl
        from jepa_core.validate import at_least

        @attrs.frozen
        class ToyConfig:
            """Toy masker for CLI tests."""
            blocks: int = attrs.field(default=2, validator=at_least(1))

        @hookimpl
        def register_maskers(register):
            register("toy", ToyConfig, "toy_masks_impl:build")
    '''))
    # `jepa check` imports and builds the factory, as `jepa run` does: a real one is needed.
    (tmp_path / "toy_masks_impl.py").write_text(textwrap.dedent('''
        from jepa_image.configs import MultiBlockConfig
        from jepa_image.multiblock import build_masker

        def build(config, grid):
            return build_masker(MultiBlockConfig(num_targets=config.blocks), grid=grid)
    '''))
    return tmp_path


def toy_recipe(tmp_path: Path, blocks: int = 3) -> Path:
    text = (REPO / QUICKSTART).read_text()
    start = text.index("masker:")
    end = text.index("target_updater:")
    path = tmp_path / "toy.yaml"
    path.write_text(text[:start] + f"masker:\n  name: toy\n  blocks: {blocks}\n" + text[end:])
    return path


# -- help and version ------------------------------------------------------------------------
def test_help_lists_every_command():
    result = jepa("--help")
    assert result.returncode == 0 and result.stderr == ""
    for command in COMMANDS:
        assert command in result.stdout
    assert "-p MODULE" in result.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "jepa"
    if not script.exists():
        script = shutil.which("jepa")
    assert script, "the `jepa` console script is not installed"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            env=clean_env(), timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "jepa 0.1.0"


def test_no_command_prints_help_and_exits_2():
    result = jepa()
    assert result.returncode == 2 and "usage: jepa" in result.stdout


def test_unknown_command_exits_2():
    result = jepa("trian")
    assert result.returncode == 2
    assert "invalid choice: 'trian'" in result.stderr


# -- plugins ---------------------------------------------------------------------------------
def test_plugins_table():
    result = jepa("plugins")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    rows = {tuple(cell.strip() for cell in line.split("│")[1:-1])
            for line in result.stdout.splitlines() if line.startswith("│")}
    names = {row[:3] for row in rows}
    assert ("masker", "multiblock", "image") in names
    assert ("encoder", "vit", "vit") in names
    assert ("target_updater", "ema", "objectives") in names
    assert all(row[3] == "jepa-core" for row in rows if row[2] in ("image", "vit", "objectives"))


def test_plugins_json():
    result = jepa("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"components", "plugins", "broken", "refused", "blocked"}
    assert data["broken"] == []
    components = {(c["kind"], c["name"]): c for c in data["components"]}
    for key in [("masker", "multiblock"), ("masker", "random"), ("encoder", "vit"),
                ("predictor", "vit_predictor"), ("target_updater", "ema"),
                ("loss", "smooth_l1"), ("loss", "l2"), ("data_source", "digits")]:
        assert components[key]["distribution"] == "jepa-core"
        assert components[key]["version"] == "0.1.0"
    plugins = {p["name"]: p for p in data["plugins"]}
    assert plugins["image"] == {"name": "image", "source": "entry point",
                                "distribution": "jepa-core", "version": "0.1.0",
                                "module": "jepa_image.plugin"}


def test_plugins_json_is_clean_even_when_tracing():
    result = jepa("plugins", "--json", env=clean_env(JEPA_TRACE_HOOKS="1"))
    assert json.loads(result.stdout)["broken"] == []


# -- check -----------------------------------------------------------------------------------
def test_check_prints_the_resolved_recipe():
    result = jepa("check", QUICKSTART)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "recipe 'quickstart' is valid" in out
    assert "style: corrected" in out  # a default the file does not state
    assert "lr: 0.001" in out
    assert "masker: multiblock from plugin image (jepa-core 0.1.0)" in out


def test_check_with_overrides():
    result = jepa("check", QUICKSTART, "optim.lr=5e-4", "train.epochs=3",
                  "masker.target_scale=[0.1,0.2]")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.0005" in result.stdout and "epochs: 3.0" in result.stdout
    assert "target_scale:\n  - 0.1\n  - 0.2" in result.stdout


@pytest.mark.parametrize("switch", [["masker.name=random"], ["masker={name: random}"]])
def test_check_switches_a_component_on_the_command_line(switch):
    result = jepa("check", QUICKSTART, "--no-data", *switch)
    assert result.returncode == 0, result.stderr
    assert "masker: random from plugin image (jepa-core 0.1.0)" in result.stdout
    masker = result.stdout[result.stdout.index("\nmasker:\n"):]
    assert "name: random\n  context_ratio: 0.25\n" in masker
    note = flat(result.stderr)
    if switch == ["masker.name=random"]:  # the quickstart's num_targets: 4 is kept
        assert "num_targets: 4\n" in masker
        assert note == ("note: masker.name=random: the masker section starts again from the "
                        "defaults of masker 'random'; dropped the keys it does not have (from "
                        "'multiblock'): target_scale, target_aspect, context_scale, "
                        "context_equalize, min_keep; kept: num_targets")
    else:  # the whole section, as written
        assert "num_targets: 4\n" in masker and note == ""


def test_a_switch_note_is_printed_before_the_problems_of_a_recipe_that_fails():
    result = jepa("check", QUICKSTART, "--no-data", "masker.name=random",
                  "masker.context_ratio=2")
    assert result.returncode == 2
    text = flat(result.stderr)
    assert text.index("note: masker.name=random") < text.index("$.masker.context_ratio")
    no_traceback(result)


def test_a_check_error_is_titled_by_the_check_not_by_a_run(tmp_path):
    """Before: "jepa: run failed" over a `jepa check` that ran nothing."""
    result = jepa("check", QUICKSTART, "data.name=image_folder",
                  f"data.root={tmp_path / 'missing'}")
    assert result.returncode == 1
    no_traceback(result)
    err = flat(result.stderr)
    assert "jepa check: recipe refused" in err and "run failed" not in err
    assert "is not a directory" in err


def test_a_bad_override_is_blamed_on_the_command_line_not_the_file():
    """Before: "recipes/quickstart.yaml has 1 problem: $.optim.learning_rate ..."."""
    result = jepa("check", QUICKSTART, "--no-data", "optim.learning_rate=1")
    assert result.returncode == 2
    err = flat(result.stderr)
    assert f"{QUICKSTART} as changed on the command line has 1 problem:" in err
    assert "$.optim.learning_rate: unknown key" in err
    assert "(set on the command line: optim.learning_rate=1)" in err


def test_bad_recipe_exits_2_with_every_path_and_no_traceback(tmp_path):
    text = (REPO / QUICKSTART).read_text().replace("lr: 1.0e-3", "lr: 0")
    assert "target_scale: [0.1, 0.15]" in text
    text = text.replace("target_scale: [0.1, 0.15]", "target_scale: [0.15, 1.5]")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = jepa("check", str(path))
    assert result.returncode == 2
    no_traceback(result)
    assert result.stdout == ""
    err = flat(result.stderr)
    assert "jepa check: invalid recipe" in err
    assert f"{path} has 2 problems:" in err
    assert "$.masker.target_scale[1]: must be <= 1 (got 1.5)" in err
    assert "$.optim.lr: must be > 0 (got 0.0)" in err


@pytest.mark.parametrize("args, expected", [
    (("check", "missing.yaml"), "missing.yaml has 1 problem: $: file not found; check the path"),
    (("check", QUICKSTART, "optim.lr"),
     "command line has 1 problem: optim.lr: an override must look like key.sub=value"),
    (("check", QUICKSTART, "optim.lr=0"),
     "$.optim.lr: must be > 0 (got 0.0) (set on the command line: optim.lr=0)"),
    (("check", QUICKSTART, "masker.name=multiblok"), "Did you mean 'multiblock'?"),
    (("check", QUICKSTART, "name.x=1"), "$.name: is not a section; cannot set name.x"),
    (("masks", "missing.yaml"), "$: file not found; check the path"),
    (("run", "missing.yaml"), "$: file not found; check the path"),
    (("-p", "no_such_plugin_mod", "eval", "runs/nowhere"), "no_such_plugin_mod (command line)"),
])
def test_user_errors_exit_2_without_traceback(args, expected):
    result = jepa(*args)
    assert result.returncode == 2
    no_traceback(result)
    assert expected in flat(result.stderr)


def test_invalid_yaml_exits_2_with_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\noptim: {lr: 1\n")
    result = jepa("check", str(path))
    assert result.returncode == 2
    no_traceback(result)
    assert "$: is not valid YAML at line 3, column 1" in flat(result.stderr)


# -- loading plugins from the command line ---------------------------------------------------
@pytest.mark.slow  # two CLI runs that import torch (~33 s here)
def test_dash_p_loads_a_local_plugin(plugin_dir):
    env = clean_env(PYTHONPATH=str(plugin_dir))
    data = json.loads(jepa("-p", "toy_masks", "plugins", "--json", env=env).stdout)
    [toy] = [c for c in data["components"] if c["name"] == "toy"]
    assert (toy["kind"], toy["plugin"], toy["description"]) == ("masker", "toy_masks",
                                                                "Toy masker for CLI tests.")
    assert {"name": "toy_masks", "source": "command line", "distribution": None,
            "version": None, "module": "toy_masks"} in data["plugins"]
    result = jepa("-p", "toy_masks", "check", str(toy_recipe(plugin_dir)), env=env)
    assert result.returncode == 0, result.stderr
    assert "masker: toy from plugin toy_masks (no distribution" in result.stdout
    assert "blocks: 3" in result.stdout


def test_jepa_plugins_env_is_like_dash_p(plugin_dir):
    env = clean_env(PYTHONPATH=str(plugin_dir), JEPA_PLUGINS="toy_masks")
    result = jepa("check", str(toy_recipe(plugin_dir, blocks=0)), env=env)
    assert result.returncode == 2
    assert "$.masker.blocks: must be >= 1 (got 0)" in flat(result.stderr)


def test_without_the_plugin_the_component_is_unknown(plugin_dir):
    result = jepa("check", str(toy_recipe(plugin_dir)))
    assert result.returncode == 2
    no_traceback(result)
    err = flat(result.stderr)
    assert "$.masker.name: no masker named 'toy' is registered." in err
    assert "load it with `jepa -p MODULE`" in err


def test_dash_p_with_a_missing_module_is_listed_as_broken():
    result = jepa("-p", "no_such_plugin_mod", "plugins")
    assert result.returncode == 0
    assert "broken plugin no_such_plugin_mod (command line): import failed: " \
           "ModuleNotFoundError" in result.stdout
    run = jepa("-p", "no_such_plugin_mod", "run", QUICKSTART)
    assert run.returncode == 2
    no_traceback(run)
    assert "no_such_plugin_mod (command line): import failed" in flat(run.stderr)


# -- start-up cost: listing never imports torch or timm --------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["plugins", "--json"],
                                  ["-p", "no_such_plugin_mod", "run", QUICKSTART]])
def test_light_commands_do_not_import_torch_or_timm(argv):
    code = textwrap.dedent(f"""
        import sys
        from jepa_core.commands.cli import main
        try:
            code = main({argv!r})
        except SystemExit as exc:  # --help
            code = exc.code
        heavy = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
        print("HEAVY", heavy, "CODE", code, file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=clean_env(), cwd=REPO, timeout=60)
    assert "HEAVY [] CODE" in result.stderr, result.stderr
