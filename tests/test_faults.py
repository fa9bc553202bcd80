"""Faults that must never lose work: kills, preemption, corrupt files, full or read-only disks,
unreadable images."""

from __future__ import annotations

import copy
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import torch
import yaml
from conftest import TINY, assert_same_training

from jepa_core.errors import RunError
from jepa_core.hookspecs import hookimpl
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict, recipe_to_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.launch import find_resume
from jepa_core.runtime.trainer import train

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
    assert sorted(a["modules"]) == ["encoder", "predictor", "target_encoder"]
    assert_same_training(a, b)  # optimizer moments too: the resumed run is the same run


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
    d["train"].update({"max_steps": steps, "checkpoint_every": 1, "keep_last": 3, **train_cfg})
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
    assert not latest.exists()  # moved aside: later resumes and pruning ignore it
    with pytest.raises(RunError, match="truncated or corrupt"):
        ckpt.load(latest.with_name(latest.name + ".corrupt"))


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


# -- preemption and Ctrl-C with DataLoader workers (issue 13, items 1 and 6) ---------------------
def _start_own_group(recipe: Path, *extra: str) -> subprocess.Popen:
    """`jepa run` as a job step or terminal job: its own session and process group."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "jepa_core", "run", str(recipe), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _resume_to_end_matches(recipe: Path, run_dir: Path, uninterrupted: dict) -> None:
    proc = _start(recipe, "--resume", "auto")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    _assert_same(uninterrupted, _final_weights(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_whole_process_group_with_workers_checkpoints(sig, tmp_path,
                                                                     uninterrupted):
    """SLURM signals every process of the step, a terminal's Ctrl-C the whole foreground group:
    the DataLoader workers must leave the signal to the trainer, which saves and exits."""
    recipe, run_dir = _recipe_file(tmp_path, "group")
    proc = _start_own_group(recipe, "train.num_workers=2", "train.checkpoint_every=0")
    _wait_for_steps(proc, run_dir, 2)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out + err
    assert "Traceback" not in err and "stopped by" in err
    saved = ckpt.load(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])
    assert 2 <= saved["step"] < STEPS
    _resume_to_end_matches(recipe, run_dir, uninterrupted)


class _FakeDist:
    is_main = False  # keeps the handler's note off the test's stderr


def test_first_ctrl_c_asks_for_a_checkpoint_the_second_stops_at_once():
    from jepa_core.runtime.trainer import StopOnSignal

    run = type("Run", (), {"stop_signal": 0, "dist": _FakeDist()})()
    with StopOnSignal(run):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs in the main thread between bytecodes
        except KeyboardInterrupt:
            pytest.fail("the first Ctrl-C stopped the run at once, without a checkpoint")
        assert run.stop_signal == signal.SIGINT  # first: finish the step and save
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_auto_says_when_there_is_nothing_to_resume(tmp_path, capsys):
    recipe, _ = _short_run(tmp_path)
    assert find_resume(recipe, "auto", force=False) is None
    err = " ".join(capsys.readouterr().err.split())
    assert f"found no checkpoint in {recipe.run_dir / 'checkpoints'}; starting from step 0" in err


# -- pruning next to unreadable checkpoints (item 5) -------------------------------------------
def test_pruning_never_counts_unreadable_checkpoints(tmp_path):
    for step in (1, 2, 3):
        torch.save({"step": step}, tmp_path / ckpt.checkpoint_name(step))
    good = (tmp_path / ckpt.checkpoint_name(3)).read_bytes()
    (tmp_path / ckpt.checkpoint_name(4)).write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / ckpt.checkpoint_name(5)).write_bytes(b"\0" * 100)  # overwritten
    ckpt.prune(tmp_path, keep_last=1)
    assert [ckpt.step_of(p) for p in ckpt.list_checkpoints(tmp_path)] == [3, 4, 5]


def test_resume_past_a_corrupt_checkpoint_keeps_a_readable_one(tmp_path, capsys):
    recipe, registry = _short_run(tmp_path, steps=4)
    train(recipe, registry)  # keep_last=3: 2, 3, 4
    directory = recipe.run_dir / "checkpoints"
    newest = ckpt.list_checkpoints(directory)[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    recipe2, _ = _short_run(tmp_path, steps=3, keep_last=1)  # a kill right after step 3's save
    train(recipe2, registry, resume=find_resume(recipe2, "auto", force=False))
    assert "moved it aside" in " ".join(capsys.readouterr().err.split()).lower()
    assert find_resume(recipe2, "auto", force=False)["step"] == 3
    assert (directory / f"{newest.name}.corrupt").exists()


# -- divergence (item 8) -----------------------------------------------------------------------
def test_divergence_leaves_a_checkpoint_that_gives_a_finite_loss(tmp_path):
    """lr warming up to 1e30 in 8 steps: step 2's forward is still finite but its update blows
    the weights up, so the checkpoint saved right after it gives a non-finite loss."""
    recipe, registry = _short_run(tmp_path, steps=12, max_nonfinite_steps=3)
    recipe = attrs.evolve(recipe, optim=attrs.evolve(recipe.optim, lr=1e30))
    with pytest.raises(RunError, match="non-finite") as stop:
        train(recipe, registry)
    directory = recipe.run_dir / "checkpoints"
    named = " ".join(str(stop.value).split())
    state = find_resume(recipe, "auto", force=False)
    one_more = attrs.evolve(recipe, train=attrs.evolve(recipe.train, max_steps=state["step"] + 1))
    run = train(one_more, registry, resume=state)
    assert math.isfinite(run.metrics["loss"]) and run.metrics["step"] == state["step"] + 1
    assert str(directory / ckpt.checkpoint_name(state["step"])) in named
    assert list(directory.glob("*.diverged"))


@attrs.frozen
class NanLossConfig:
    """A loss that is NaN whatever the weights (a broken plugin)."""


class NanLossPlugin:
    @hookimpl
    def register_losses(self, register):
        register("nan_loss", NanLossConfig,
                 lambda config: lambda predictions, targets, valid=None: (
                     (predictions - targets).mean() * float("nan")))


def test_a_loss_non_finite_from_a_resumed_checkpoint_keeps_that_checkpoint(tmp_path):
    """Resume a healthy step-4 checkpoint with a loss switched (--force) to one that is NaN from
    the first step: the checkpoint keeps its name, and the message says what happened."""
    recipe, _ = _short_run(tmp_path, steps=4, checkpoint_every=2, max_nonfinite_steps=2)
    registry = make_plugin_manager(objects=[("nan_plugin", NanLossPlugin())])
    train(recipe, registry)
    directory = recipe.run_dir / "checkpoints"
    before = sorted(p.name for p in directory.iterdir())
    d = recipe_to_dict(recipe)
    d["loss"] = {"name": "nan_loss"}
    d["train"]["max_steps"] = 8
    broken = recipe_from_dict(d, registry, "nan")
    with pytest.raises(RunError) as stop:
        train(broken, registry, resume=find_resume(broken, "auto", force=True))
    said = " ".join(str(stop.value).split())
    assert sorted(p.name for p in directory.iterdir()) == before  # nothing renamed .diverged
    assert (f"non-finite from the first step after resuming from step 4 "
            f"({directory / ckpt.checkpoint_name(4)}), whose own last loss was finite") in said
    assert "the checkpoint is fine" in said and "loss.name: 'smooth_l1' → 'nan_loss'" in said
    assert "still finite but its update" not in said and "start again" not in said


def test_a_loss_non_finite_from_the_first_step_of_a_fresh_run_says_so(tmp_path):
    recipe, _ = _short_run(tmp_path, steps=4, max_nonfinite_steps=2)
    registry = make_plugin_manager(objects=[("nan_plugin", NanLossPlugin())])
    d = recipe_to_dict(recipe)
    d["loss"] = {"name": "nan_loss"}
    with pytest.raises(RunError, match="non-finite") as stop:
        train(recipe_from_dict(d, registry, "nan"), registry)
    assert "from the very first step, before any update" in " ".join(str(stop.value).split())


def test_learning_rates_float32_cannot_hold_are_refused_up_front(tiny_dict, registry):
    from jepa_core.errors import RecipeError

    tiny_dict["optim"]["lr"] = 1e39
    with pytest.raises(RecipeError, match=r"\$\.optim\.lr: must be <="):
        recipe_from_dict(tiny_dict, registry, "tiny")


# -- unusable checkpoint files (item 13) -------------------------------------------------------
def test_checkpoint_with_the_tag_but_missing_keys_names_them(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"format": ckpt.FORMAT, "version": 1, "step": 3}, path)
    with pytest.raises(RunError, match="no 'encoder', 'predictor', 'target_encoder', 'recipe'"):
        ckpt.load(path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("code from the checkpoint ran",))


def test_checkpoint_that_pickles_code_is_refused_for_what_it_is(tmp_path, capsys):
    path = tmp_path / ckpt.checkpoint_name(1)
    torch.save({"format": ckpt.FORMAT, "version": 1, "x": _RunsCode()}, path)
    with pytest.raises(RunError) as refused:
        ckpt.load(path)
    message = " ".join(str(refused.value).split())
    assert "pickled code" in message and "builtins.print" in message
    assert "weights_only" not in message and "truncated or corrupt" not in message
    assert "code from the checkpoint ran" not in capsys.readouterr().out


def test_eval_of_a_run_dir_falls_back_past_an_unreadable_checkpoint(tmp_path, capsys):
    from jepa_core.commands.cli import main

    recipe, registry = _short_run(tmp_path, steps=2)
    train(recipe, registry)
    newest = ckpt.list_checkpoints(recipe.run_dir / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    code = main(["eval", str(recipe.run_dir), "--no-baseline", "eval.max_images=40",
                 "eval.protocols=[knn]"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "step_000000001.pt: step 1" in " ".join(out.split())
    assert "truncated or corrupt" in err and "Trying the previous checkpoint" in err
    assert newest.exists()  # eval reads; only the run that owns the directory moves files


# -- the `--nproc` launcher (item 7) -----------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_launcher(tmp_path: Path) -> tuple[subprocess.Popen, Path, list[int]]:
    """`jepa run --nproc 2` on CPU, long enough to be signalled while training; its workers."""
    recipe, run_dir = _recipe_file(tmp_path, "launched")
    proc = _start_own_group(recipe, "--nproc", "2", "train.max_steps=400", "train.epochs=100",
                            "train.checkpoint_every=0")
    _wait_for_steps(proc, run_dir, 2, limit=180)
    workers = _children(proc.pid)
    assert len(workers) == 2 and proc.poll() is None, proc.communicate()
    return proc, run_dir, workers


def _assert_stopped_with_checkpoint(run_dir: Path, workers: list[int]) -> None:
    deadline = time.time() + 60
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "workers outlived their launcher"
    saved = ckpt.load(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])
    assert 2 <= saved["step"] < 400
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))


@pytest.mark.slow
def test_sigterm_to_the_nproc_launcher_stops_its_workers_and_exits_143(tmp_path):
    proc, run_dir, workers = _start_launcher(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    err = " ".join(err.split())
    assert "the launcher got SIGTERM" in err and "a worker process failed" not in err
    assert "--nproc 2 --resume auto" in err
    _assert_stopped_with_checkpoint(run_dir, workers)


@pytest.mark.slow
def test_sigkill_of_the_nproc_launcher_leaves_no_orphans(tmp_path):
    proc, run_dir, workers = _start_launcher(tmp_path)
    proc.kill()  # nothing runs in the launcher: the workers must notice by themselves
    proc.communicate(timeout=180)  # returns once the workers closed the inherited pipes too
    _assert_stopped_with_checkpoint(run_dir, workers)
