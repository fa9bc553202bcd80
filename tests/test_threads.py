"""jepa_core/runtime/threads.py: OpenMP defaults set before torch starts, a user's setting wins,
and the run's header and checkpoints say which is in effect and where it comes from."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml
from conftest import TINY
from hypothesis import given
from hypothesis import strategies as st

from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime import threads

OMP = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", threads.MARK_ENV)


def test_defaults_fill_only_what_the_user_left_unset():
    env: dict[str, str] = {}
    threads.add_defaults(env)
    assert env["GOMP_SPINCOUNT"] == "5000" and "OMP_WAIT_POLICY" not in env
    assert threads.origin("GOMP_SPINCOUNT", env) == "jepa default"
    child = dict(env)  # a child process inherits them, still as jepa's
    threads.add_defaults(child)
    assert child == env and threads.origin("GOMP_SPINCOUNT", child) == "jepa default"
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"},
                 {"KMP_BLOCKTIME": "0"}):
        env = dict(mine)
        threads.add_defaults(env)
        assert env == mine  # the user chose how the pool waits: nothing added
    env = {"OMP_WAIT_POLICY": "ACTIVE", threads.MARK_ENV: "OMP_WAIT_POLICY=PASSIVE"}
    assert threads.origin("OMP_WAIT_POLICY", env) == "environment"  # changed since


USER_VALUES = st.dictionaries(st.sampled_from(OMP[:4]),
                              st.sampled_from(["1", "2", "ACTIVE", "PASSIVE", "0", ""]))


@given(USER_VALUES)
def test_what_the_user_set_is_never_changed_and_reported_as_theirs(user):
    env = dict(user)
    threads.add_defaults(env)
    threads.set_default("OMP_NUM_THREADS", "1", env)  # as the --nproc launcher does
    assert {k: env[k] for k in user} == user
    assert all(threads.origin(k, env) == "environment" for k in user)
    threads.unset_default("OMP_NUM_THREADS", env)
    assert {k: v for k, v in env.items() if k != threads.MARK_ENV} == (
        user if any(k in user for k in threads.WAIT_VARIABLES)
        else {**user, **threads.DEFAULTS})


def test_a_default_count_is_taken_back_but_never_the_users():
    env = {"OMP_NUM_THREADS": "3"}
    assert not threads.set_default("OMP_NUM_THREADS", "1", env)
    threads.unset_default("OMP_NUM_THREADS", env)
    assert env["OMP_NUM_THREADS"] == "3"
    env = {}
    assert threads.set_default("OMP_NUM_THREADS", "1", env)
    assert threads.origin("OMP_NUM_THREADS", env) == "jepa default"
    threads.unset_default("OMP_NUM_THREADS", env)
    assert "OMP_NUM_THREADS" not in env


def _recipe(tmp_path, **train):
    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path / "runs")
    d["train"].update(device="cpu", max_steps=1, **train)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path, tmp_path / "runs" / "tiny"


def _run(recipe, *args, **env_vars):
    """`jepa run` in a process of its own, with only `env_vars` of the OpenMP settings, and
    the OpenMP runtime's own account of what it read when torch loaded it (on stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in OMP}
    env.update(env_vars, OMP_DISPLAY_ENV="verbose", COLUMNS="200")
    out = subprocess.run([sys.executable, "-m", "jepa_core", "run", str(recipe), *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _spin_counts(out) -> list[str]:
    """libgomp's GOMP_SPINCOUNT of each process, as it read it on start (0: threads sleep at
    once; 300000: its own default; OMP_WAIT_POLICY=ACTIVE: 30000000000)."""
    counts = [line.split("'")[1] for line in out.stderr.splitlines()
              if line.strip().startswith("GOMP_SPINCOUNT =")]
    if not counts:
        pytest.skip("torch's OpenMP runtime is not libgomp (it displays no GOMP_SPINCOUNT)")
    return counts


def _final(run_dir):
    return ckpt.load(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])


def test_jepa_run_sets_a_short_spin_before_torch_starts(tmp_path):
    recipe, run_dir = _recipe(tmp_path)
    out = _run(recipe)
    assert _spin_counts(out) == ["5000"]  # the runtime itself read it when torch loaded
    assert "GOMP_SPINCOUNT=5000 (jepa default)" in out.stdout
    assert "per process (torch default)" in out.stdout
    saved = _final(run_dir)["threads"]
    assert saved["GOMP_SPINCOUNT"] == "5000" and saved["GOMP_SPINCOUNT_from"] == "jepa default"
    assert saved["wait_policy"] is None
    assert saved["count_from"] == "torch default"


def test_the_users_settings_win_and_are_reported_as_theirs(tmp_path):
    recipe, run_dir = _recipe(tmp_path, threads=1)  # and train.threads wins over the count
    out = _run(recipe, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="ACTIVE")
    assert _spin_counts(out) == ["30000000000"]
    assert "threads: 1 per process (train.threads), OMP_WAIT_POLICY=ACTIVE (environment)" \
        in out.stdout
    assert _final(run_dir)["threads"] == {"count": 1, "count_from": "train.threads",
                                          "wait_policy": "ACTIVE",
                                          "wait_policy_from": "environment"}


def test_the_header_names_where_each_setting_comes_from():
    import torch

    env = {"OMP_NUM_THREADS": "3", "GOMP_SPINCOUNT": "1000"}
    found = threads.settings(None, env)
    assert found == {"count": torch.get_num_threads(), "count_from": "OMP_NUM_THREADS",
                     "wait_policy": None, "wait_policy_from": "OpenMP default",
                     "GOMP_SPINCOUNT": "1000", "GOMP_SPINCOUNT_from": "environment"}
    assert threads.header(found).endswith(
        "per process (OMP_NUM_THREADS), GOMP_SPINCOUNT=1000 (environment)")
    bare = threads.settings(None, {})
    assert threads.header(bare).endswith("the OpenMP runtime's own waiting (nothing set)")


@pytest.mark.slow
def test_nproc_workers_start_with_the_defaults(tmp_path):
    recipe, run_dir = _recipe(tmp_path)
    out = _run(recipe, "--nproc", "2")
    assert _spin_counts(out) == ["5000"] * 3  # the launcher and both workers
    assert _final(run_dir)["threads"] == {
        "count": max(1, (os.cpu_count() or 1) // 2), "count_from": "jepa default",
        "wait_policy": None, "wait_policy_from": "OpenMP default",
        "GOMP_SPINCOUNT": "5000", "GOMP_SPINCOUNT_from": "jepa default"}


@pytest.mark.slow
def test_eval_nproc_keeps_the_users_thread_count(tmp_path):
    import json

    recipe, run_dir = _recipe(tmp_path)
    _run(recipe, OMP_NUM_THREADS="1")
    share = max(1, (os.cpu_count() or 1) // 2)  # what 2 processes get when the user sets none
    mine = 2 if share == 1 else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(mine)}
    out = subprocess.run([sys.executable, "-m", "jepa_core", "eval", str(run_dir), "--nproc",
                          "2", "--no-baseline", "eval.protocols=[{name: knn, k: 5}]"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((run_dir / "eval.json").read_text())["source"]["threads"] == mine
