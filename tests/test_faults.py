"""Faults that must never lose work: kills, preemption, corrupt files, full or read-only disks,
unreadable images."""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from jepa_core import checkpoint as ckpt
from jepa_core.errors import RunError
from jepa_core.launch import find_resume
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.trainer import train

from conftest import TINY

STEPS = 8


def _recipe_file(tmp_path: Path, name: str, **train_cfg) -> tuple[Path, Path]:
    d = copy.deepcopy(TINY)
    d["name"] = name
    d["out_dir"] = str(tmp_path)
    d["train"].update(device="cpu", max_steps=STEPS, checkpoint_every=1, keep_last=2,
                      **train_cfg)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path, tmp_path / name


def _start(recipe: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "jepa_core", "run", str(recipe), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_steps(proc: subprocess.Popen, run_dir: Path, steps: int, limit: float = 120):
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.02)


def _final_weights(run_dir: Path) -> dict:
    state = ckpt.load(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])
    assert state["step"] == STEPS
    return state


def _assert_same(a: dict, b: dict) -> None:
    for part in ("encoder", "predictor", "target_encoder"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k} differs"
    # optimizer moments too: the resumed run is the same run
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(va["exp_avg"], vb["exp_avg"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    recipe, run_dir = _recipe_file(tmp, "straight")
    proc = _start(recipe)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    return _final_weights(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_points_then_resume_matches(seed, tmp_path, uninterrupted):
    recipe, run_dir = _recipe_file(tmp_path, "killed")
    rng = random.Random(seed)
    kills = 0
    for attempt in range(6):
        proc = _start(recipe, "--resume", "auto")
        if attempt < 2:  # kill twice at random points, then let it finish
            _wait_for_steps(proc, run_dir, rng.randint(1, STEPS - 2))
            time.sleep(rng.uniform(0, 0.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate(timeout=60)
            continue
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
        break
    assert kills >= 1
    _assert_same(uninterrupted, _final_weights(run_dir))
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_for_requeue(tmp_path, uninterrupted):
    recipe, run_dir = _recipe_file(tmp_path, "preempted")
    proc = _start(recipe)
    _wait_for_steps(proc, run_dir, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "stopped by SIGTERM" in " ".join(err.split()) and "Traceback" not in err
    saved = ckpt.load(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])
    assert 2 <= saved["step"] < STEPS
    proc = _start(recipe, "--resume", "auto")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    _assert_same(uninterrupted, _final_weights(run_dir))


def _short_run(tmp_path, steps=3, **train_cfg):
    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path)
    d["train"].update(max_steps=steps, checkpoint_every=1, keep_last=3, **train_cfg)
    registry = make_plugin_manager()
    recipe = recipe_from_dict(d, registry, "tiny")
    return recipe, registry


def test_truncated_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    recipe, registry = _short_run(tmp_path)
    train(recipe, registry)
    files = ckpt.list_checkpoints(recipe.run_dir / "checkpoints")
    latest = files[-1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    state = find_resume(recipe, "auto", force=False)
    assert state["step"] == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    with pytest.raises(RunError, match="truncated or corrupt"):
        ckpt.load(latest)


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    recipe, registry = _short_run(tmp_path)
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            real_save(obj, f, *a, **k)  # part of the data reaches the disk, then:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RunError, match="No space left on device.*previous checkpoints.*untouched"):
        train(recipe, registry)
    directory = recipe.run_dir / "checkpoints"
    assert [ckpt.step_of(p) for p in ckpt.list_checkpoints(directory)] == [1]
    assert ckpt.load(ckpt.list_checkpoints(directory)[0])["step"] == 1
    assert not list(directory.glob(".*tmp*"))


def _make_readonly(path: Path) -> bool:
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        return True
    path.chmod(0o555)
    probe = path / ".probe"
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink()
    return False


def _undo_readonly(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def test_readonly_checkpoint_dir_fails_clearly_and_keeps_checkpoint(tmp_path):
    recipe, registry = _short_run(tmp_path, steps=1)
    train(recipe, registry)
    directory = recipe.run_dir / "checkpoints"
    if not _make_readonly(directory):
        pytest.skip("cannot make a directory read-only here")
    try:
        recipe2, _ = _short_run(tmp_path, steps=2)
        state = find_resume(recipe2, "auto", force=True)
        with pytest.raises(RunError, match="could not write checkpoint.*untouched"):
            train(recipe2, registry, resume=state)
    finally:
        _undo_readonly(directory)
    assert ckpt.load(ckpt.list_checkpoints(directory)[-1])["step"] == 1


def test_milestones_survive_pruning(tmp_path):
    recipe, registry = _short_run(tmp_path, steps=6, milestone_every=2)
    d = recipe.run_dir / "checkpoints"
    train(recipe, registry)  # keep_last=3 keeps 4, 5, 6; milestone 2 stays too
    assert [ckpt.step_of(p) for p in ckpt.list_checkpoints(d)] == [2, 4, 5, 6]
