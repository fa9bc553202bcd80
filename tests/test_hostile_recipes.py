"""Recipes and settings written to hurt: alias bombs, duplicate keys, binary and non-UTF-8
files, deep nesting, run names that are paths, `--nproc 0`, and on/off environment switches.
Each gets one clear message by path, exit code 2, no traceback, and no run directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIRST_PARTY_PLUGINS

from jepa_core import plugins, safe_yaml
from jepa_core.errors import ConfigError, RecipeError
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import apply_override, load_recipe, read_yaml, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"
# "Billion laughs": nine levels of nine aliases, 9**9 = 387 million strings once expanded.
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.fixture(scope="module")
def registry():
    return make_plugin_manager(FIRST_PARTY_PLUGINS, autoload=False)


def problems(path: Path, registry, overrides=()) -> list[tuple[str, str]]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry, list(overrides))
    return info.value.problems


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "recipe.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def jepa(*args: str, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout,
                          env={**_clean_env(), "COLUMNS": "200", **(env or {})})


def _clean_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items()
            if k not in ("JEPA_DISABLE_PLUGIN_AUTOLOAD", "JEPA_PLUGINS", "JEPA_TRACE_HOOKS")}


def flat(text: str) -> str:
    return " ".join(" ".join(line.strip(" │╭╮╰╯─") for line in text.splitlines()).split())


# -- aliases ---------------------------------------------------------------------------------
def test_alias_bomb_is_refused_at_once_by_jepa_check(tmp_path):
    path = write(tmp_path, BOMB)
    assert path.stat().st_size < 600
    result = jepa("check", str(path), timeout=30)  # it ran past 150 s and 2.9 GB before
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "expands to more than 100,000 values" in flat(result.stderr)
    assert "aliases (*name)" in flat(result.stderr)


def test_alias_bomb_in_an_override_is_refused():
    data: dict = {}
    apply_override(data, "a.b=[" + ",".join(["x"] * 400) + "]")  # large but honest: fine
    assert len(data["a"]["b"]) == 400
    with pytest.raises(RecipeError) as info:
        apply_override({}, "encoder.x={" + BOMB.replace("\n", ", ") + "}")
    [(where, message)] = info.value.problems
    assert where.startswith("$.encoder.x.") and "expands to more than" in message


def test_honest_anchors_and_merge_keys_still_work(registry, tmp_path):
    text = QUICKSTART.read_text().replace(
        "encoder:", "defaults: &shared {num_heads: 2}\nencoder:", 1)
    assert "defaults" in read_yaml(write(tmp_path, text))  # an unknown key, but it loads
    data = safe_yaml.load("base: &b {depth: 2, heads: 2}\nenc: {<<: *b, depth: 4}\n")
    assert data["enc"] == {"depth": 4, "heads": 2}  # a merge key may be overridden


def test_alias_inside_its_own_anchor_is_refused(registry, tmp_path):
    [(where, message)] = problems(write(tmp_path, "name: x\ntrain: &t {nested: *t}\n"),
                                  registry)
    assert where == "$.train.nested"
    assert "alias (*name) of a section that contains it" in message


# -- duplicate keys --------------------------------------------------------------------------
def test_duplicate_section_is_refused_with_both_lines(registry, tmp_path):
    text = QUICKSTART.read_text() + "optim:          {lr: 5.0e-3}\n"
    first = 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith("optim:"))
    last = len(text.splitlines())
    assert problems(write(tmp_path, text), registry) == [("$.optim", (
        f"key 'optim' is written twice in this section (lines {first} and {last}); YAML would "
        f"keep only the second, silently. Keep one of them"))]


def test_duplicate_nested_keys_are_all_reported(registry, tmp_path):
    text = "name: x\ntrain:\n  epochs: 1\n  epochs: 2\nmasker: {name: multiblock, name: random}\n"
    found = problems(write(tmp_path, text), registry)
    assert [where for where, _ in found] == ["$.train.epochs", "$.masker.name"]
    assert "(lines 3 and 4)" in found[0][1] and "(both on line 5)" in found[1][1]


# -- files that are not YAML text ------------------------------------------------------------
def test_binary_file_is_named_as_binary(registry, tmp_path):
    path = write(tmp_path, b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    assert problems(path, registry) == [
        ("$", "is a binary file (it holds NUL bytes), not a YAML recipe. Check the path")]


def test_non_utf8_text_says_where(registry, tmp_path):
    path = write(tmp_path, "name: x\nencoder: {name: vit}  # caf\xe9\n".encode("latin-1"))
    assert problems(path, registry) == [("$", (
        "is not UTF-8 text: byte 0xe9 at line 2, column 28 cannot be decoded. Save the file "
        "as UTF-8"))]


def test_control_character_says_where(registry, tmp_path):
    [(where, message)] = problems(write(tmp_path, "name: x\nseed: 1\x07\n"), registry)
    assert (where, message) == ("$", "holds the control character U+0007 at line 2, column 8, "
                                     "which YAML does not allow; is this a text recipe?")


def test_a_huge_file_is_not_read_as_a_recipe(registry, tmp_path):
    path = write(tmp_path, "# " + "x" * (2 << 20) + "\n")
    [(where, message)] = problems(path, registry)
    assert message.startswith("is 2.0 MiB; a recipe is a small text file")


@pytest.mark.parametrize("depth", [150, 600, 5000])
def test_deep_nesting_is_refused_not_a_recursion_error(registry, tmp_path, depth):
    block = "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, min(depth, 700)))
    for text in ("a: " + "[" * depth + "]" * depth, block):
        [(where, message)] = problems(write(tmp_path, text), registry)
        assert where == "$"
        assert message.startswith("nests sections or lists deeper than 100 levels (at line ")


def test_deep_override_key_is_refused():
    with pytest.raises(RecipeError, match="nests deeper than 100 sections"):
        apply_override({}, "a." * 3000 + "b=1")


# -- run names -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "/tmp/absolute", "a/b", "..", ".", "", "a b",
                                  "x\\y", "~user"])
def test_run_name_must_be_a_plain_name(registry, name):
    data = read_yaml(QUICKSTART) | {"name": name}
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data, registry, "r.yaml")
    [(where, message)] = info.value.problems
    assert where == "$.name"
    assert message.startswith(f"must be a plain name of letters, digits, '.', '_' and '-' "
                              f"(got {name!r})")
    assert "Choose the parent folder with out_dir instead" in message


@pytest.mark.parametrize("name", ["quickstart", "vit-h.16_run2", "0", "..x"])
def test_plain_run_names_pass(registry, name):
    assert load_recipe(QUICKSTART, registry, [f"name={name}"]).name == name


def test_run_with_a_path_as_name_writes_nothing(tmp_path):
    out = tmp_path / "deep" / "runs"
    result = jepa("run", "recipes/quickstart.yaml", "name=../../escaped", f"out_dir={out}",
                  "train.max_steps=1", "eval.after_train=false")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "$.name: must be a plain name" in flat(result.stderr)
    assert not (tmp_path / "escaped").exists() and not out.exists()


# -- --nproc ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_nproc_below_one_is_a_clear_error(tmp_path, value):
    result = jepa("run", "recipes/quickstart.yaml", f"--nproc={value}",
                  f"out_dir={tmp_path / 'runs'}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert (f"--nproc must be a number of processes of at least 1, or 'gpu' for one process "
            f"per visible GPU (got {value!r})") in flat(result.stderr)
    assert not (tmp_path / "runs").exists()


# -- on/off environment switches -------------------------------------------------------------
@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("YES", True), (" on ", True),
                                       ("0", False), ("false", False), ("No", False),
                                       ("off", False), ("", False)])
def test_autoload_switch_reads_a_boolean(monkeypatch, value, on):
    monkeypatch.setenv(plugins.AUTOLOAD_OFF_ENV, value)
    registry = make_plugin_manager()
    assert ("multiblock" in registry.components["masker"]) is (not on)


def test_autoload_switch_refuses_anything_else(monkeypatch):
    monkeypatch.setenv(plugins.AUTOLOAD_OFF_ENV, "maybe")
    with pytest.raises(ConfigError) as info:
        make_plugin_manager()
    assert str(info.value).startswith(
        "environment variable JEPA_DISABLE_PLUGIN_AUTOLOAD='maybe' is not a yes or no")


def test_autoload_switch_0_keeps_the_plugins_in_the_cli():
    import json

    result = jepa("plugins", "--json", env={"JEPA_DISABLE_PLUGIN_AUTOLOAD": "0"})
    assert result.returncode == 0, result.stderr
    assert "multiblock" in {c["name"] for c in json.loads(result.stdout)["components"]}
    bad = jepa("plugins", env={"JEPA_DISABLE_PLUGIN_AUTOLOAD": "2"})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "JEPA_DISABLE_PLUGIN_AUTOLOAD='2' is not a yes or no" in flat(bad.stderr)


def test_trace_switch_0_does_not_trace(monkeypatch, capsys):
    monkeypatch.delenv(plugins.AUTOLOAD_OFF_ENV, raising=False)
    monkeypatch.setenv(plugins.TRACE_ENV, "0")
    make_plugin_manager().pm.hook.on_train_end(run=None, metrics={})
    assert "on_train_end" not in capsys.readouterr().out


# -- data whose samples do not fit the encoder -----------------------------------------------
VIDEO = REPO / "recipes" / "quickstart_video.yaml"


@pytest.mark.parametrize("recipe, overrides, where, message", [
    (VIDEO, ["data.num_frames=6"], "$.data.num_frames",
     "is 6 but encoder.num_frames is 8: data source 'moving_digits' would make clips of 6 "
     "frames for encoder 'vit_video', which takes 8; set both to the same number (e.g. "
     "data.num_frames=8)"),
    (VIDEO, ["data.img_size=32"], "$.data.img_size",
     "is 32 but encoder.img_size is 24: data source 'moving_digits' would make 32 px samples "
     "for encoder 'vit_video', which takes 24 px; set both to the same size, or leave "
     "data.img_size out (it then follows encoder.img_size)"),
], ids=["frames", "img_size"])
def test_data_that_does_not_fit_the_encoder_is_refused_by_check_and_run(
        registry, tmp_path, capsys, recipe, overrides, where, message):
    """Was: the encoder's ValueError traceback at the first batch of `jepa check` and `jepa
    run`. Now: the recipe is refused where it is checked, by path, exit 2, no run folder."""
    from jepa_core.commands.cli import main

    path = recipe
    assert problems(path, registry, overrides) == [(where, message)]
    out = f"out_dir={tmp_path / 'runs'}"
    for command in (["check"], ["check", "--no-data"], ["run"]):
        assert main([*command, str(path), *overrides, out]) == 2
        err = flat(capsys.readouterr().err)
        assert f"{where}: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
