"""The run directory: one run at a time, never two runs mixed, clear failures on bad folders."""

from __future__ import annotations

import copy
import errno
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import TINY

import jepa_core.runtime.trainer
from jepa_core.commands.cli import main
from jepa_core.errors import RunError
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.distributed import DistEnv
from jepa_core.runtime.lineage import drop_rows_after, history_kept, retire_later
from jepa_core.runtime.rundir import Lock, RunDirError, claim
from jepa_core.runtime.trainer import train

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                 "SLURM_PROCID", "SLURM_NTASKS")


@contextmanager
def read_only(path: Path):
    """`path` (a directory) made unwritable, even for root (chattr +i), or the test skipped."""
    path.mkdir(parents=True, exist_ok=True)
    immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    if not immutable:
        path.chmod(0o555)
        if os.access(path, os.W_OK):  # root without chattr: permissions do not bind
            path.chmod(0o755)
            pytest.skip("cannot make a directory read-only here")
    try:
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755)


@pytest.fixture(autouse=True)
def _plain_process(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)


def _recipe_file(tmp_path: Path, name: str = "tiny", **train_cfg) -> Path:
    d = copy.deepcopy(TINY)
    d["name"] = name
    d["out_dir"] = str(tmp_path / "runs")
    d["train"].update(device="cpu", **train_cfg)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _flat(text: str) -> str:
    return " ".join(line.strip(" │╭╮╰╯─") for line in text.splitlines() if line.strip(" │╭╮╰╯─"))


# -- a new run never mixes with an old one --------------------------------------------------
def test_rerun_without_resume_is_refused_and_says_how_to_continue(tmp_path, capsys):
    recipe = _recipe_file(tmp_path, max_steps=2)
    run_dir = tmp_path / "runs" / "tiny"
    assert main(["run", str(recipe)]) == 0
    assert not (run_dir / ".lock").exists()  # released with the run
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    rows = _steps(run_dir)
    capsys.readouterr()

    assert main(["run", str(recipe), "optim.lr=5e-4"]) == 2
    err = _flat(capsys.readouterr().err)
    assert f"run directory {run_dir} already holds a run" in err
    assert "--resume auto" in err and "name=NEW_NAME" in err and f"delete {run_dir}" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    assert _steps(run_dir) == rows  # nothing appended

    assert main(["run", str(recipe), "name=tiny_lr5e-4", "optim.lr=5e-4"]) == 0
    assert _steps(tmp_path / "runs" / "tiny_lr5e-4") == [1, 2]


def test_the_refusal_and_the_summary_count_metrics_rows_alike(tmp_path):
    """Before: a reused run name counted "444 row(s) of metrics.jsonl" where the run's summary
    said 440 rows plus 4 in-training kNN rows; and the summary left out features/."""
    from jepa_core.runtime.rundir import refuse_earlier_run
    from jepa_core.runtime.runlog import describe_outputs

    run_dir = tmp_path / "quickstart"
    run_dir.mkdir()
    rows = [{"step": s, "loss": 0.5} for s in range(1, 441)]
    rows += [{"step": s, "live_knn": 0.7} for s in (110, 220, 330, 440)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shard = run_dir / "features" / "trained" / "train" / "pooled-00000.pt"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"x" * 3 * 2**20)
    with pytest.raises(RunDirError) as info:
        refuse_earlier_run(run_dir)
    assert "440 step row(s) and 4 in-training kNN row(s) in metrics.jsonl" in str(info.value)
    summary = "\n".join(describe_outputs(run_dir))
    assert "metrics.jsonl   440 row(s)" in summary and "4 in-training kNN row(s)" in summary
    assert "features/       3.0 MiB: the evaluation's feature cache" in summary


def test_resume_auto_into_an_empty_directory_starts_fresh(tmp_path):
    recipe = _recipe_file(tmp_path, max_steps=2)
    assert main(["run", str(recipe), "--resume", "auto"]) == 0  # first run of a requeued job
    assert _steps(tmp_path / "runs" / "tiny") == [1, 2]


def test_resumed_rows_are_not_repeated_in_metrics(tmp_path):
    recipe = _recipe_file(tmp_path, max_steps=3, checkpoint_every=2)
    run_dir = tmp_path / "runs" / "tiny"
    assert main(["run", str(recipe)]) == 0
    # as if killed after logging step 3 but before its checkpoint, in the middle of a row
    (run_dir / "checkpoints" / ckpt.checkpoint_name(3)).unlink()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"lr": 0.001, "st')
    assert main(["run", str(recipe), "--resume", "auto"]) == 0
    assert _steps(run_dir) == [1, 2, 3]


def test_resume_leaves_out_rows_with_impossible_steps_with_a_note(tmp_path, capsys):
    """metrics.jsonl rows whose step is NaN, infinite or huge (edited, or written by another
    tool) do not stop a resume: they are left out, named by line."""
    recipe = _recipe_file(tmp_path, max_steps=2)
    run_dir = tmp_path / "runs" / "tiny"
    assert main(["run", str(recipe)]) == 0
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": NaN}\n{"step": Infinity, "loss": 1}\n{"step": 1e400}\n'
                '{"step": 1e308, "loss": -1e308}\n{"step": 2.5}\n')
    capsys.readouterr()
    assert main(["run", str(recipe), "--resume", "auto", "train.max_steps=3"]) == 0
    assert _steps(run_dir) == [1, 2, 3]
    err = _flat(capsys.readouterr().err)
    assert "left out 5 row(s) without a valid step (line(s) 3, 4, 5, 6, 7" in err


def test_drop_rows_after_keeps_earlier_rows_and_drops_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6))
                    + '{"step": 6, "lo')
    assert drop_rows_after(path, 3) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert drop_rows_after(path, 3) == 0


# -- one run at a time -------------------------------------------------------------------
def test_a_locked_directory_is_refused_in_process(tiny_recipe):
    with claim(tiny_recipe, None, DistEnv()):
        with pytest.raises(RunDirError, match=rf"in use by another run \(held by pid "
                                              rf"{os.getpid()} on host "):
            with claim(tiny_recipe, "auto", DistEnv()):
                pass
    with claim(tiny_recipe, "auto", DistEnv()):  # released at the end of the first run
        pass


def test_the_lock_of_a_killed_process_is_stale(tiny_recipe):
    """A process killed while holding the lock leaves the file; the OS lock died with it."""
    code = ("import sys, time; from jepa_core.runtime.rundir import Lock; "
            "from pathlib import Path; "
            "Lock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)")
    tiny_recipe.run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", code, str(tiny_recipe.run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"held by pid {holder.pid} "):
            with claim(tiny_recipe, "auto", DistEnv()):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tiny_recipe.run_dir / ".lock").exists()
    with claim(tiny_recipe, "auto", DistEnv()):
        pass


def test_a_lock_taken_on_a_file_just_released_is_not_held(tmp_path):
    """The file goes with the release; a run that had opened it just before must not take
    the lock of that removed file (a third run could then lock a new one: two holders)."""
    first = Lock(tmp_path)
    first.acquire()
    late = os.open(first.path, os.O_RDWR)
    first.release()
    assert not first.path.exists()
    assert Lock(tmp_path)._lock(late) is False
    os.close(late)
    second = Lock(tmp_path)
    second.acquire()
    with pytest.raises(RunDirError, match="in use"):
        Lock(tmp_path).acquire()
    second.release()


def test_a_run_that_fails_before_writing_leaves_no_folders(tmp_path, tiny_recipe):
    with pytest.raises(RuntimeError):
        with claim(tiny_recipe, None, DistEnv()):
            assert tiny_recipe.run_dir.is_dir()
            raise RuntimeError("data missing")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_concurrent_runs_then_a_resume_after_a_kill(tmp_path):
    """Two `jepa run`s into one directory: the second is refused while the first runs; the
    first, killed, does not block the resume; the resumed run logs every step once."""
    recipe = _recipe_file(tmp_path, epochs=50, checkpoint_every=3)
    run_dir = tmp_path / "runs" / "tiny"
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    cmd = [sys.executable, "-m", "jepa_core", "run", str(recipe)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             text=True)
    try:
        deadline = time.time() + 120
        while first.poll() is None and time.time() < deadline and not (
                (run_dir / "metrics.jsonl").exists() and len(_steps_safe(run_dir)) >= 4):
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        for extra in ([], ["--resume", "auto"]):
            second = subprocess.run(cmd + extra, capture_output=True, text=True, env=env,
                                    timeout=120)
            assert second.returncode == 2, second.stderr
            err = _flat(second.stderr)
            assert f"run directory {run_dir} is in use by another run" in err
            assert f"pid {first.pid} on host" in err and "Traceback" not in err
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    saved = ckpt.list_checkpoints(run_dir / "checkpoints")
    logged = _steps_safe(run_dir)
    if ckpt.step_of(saved[-1]) == max(logged):  # killed right after a checkpoint: as if before
        saved.pop().unlink()
    resumed = subprocess.run(cmd + ["--resume", "auto", f"train.max_steps={max(logged) + 2}"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert ckpt.step_of(saved[-1]) < max(logged)  # rows after the checkpoint recomputed ...
    assert _steps(run_dir) == list(range(1, max(logged) + 3))  # ... and appear once


def _steps_safe(run_dir: Path) -> list[int]:
    steps = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass  # the row being written right now
    return steps


# -- folders that cannot be written --------------------------------------------------------
def _forbid_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("models built before the run directory was checked")

    monkeypatch.setattr(jepa_core.runtime.trainer, "build_components", refuse)


def test_read_only_out_dir_fails_first_with_the_path(tmp_path, capsys, monkeypatch):
    recipe = _recipe_file(tmp_path, max_steps=1)
    _forbid_models(monkeypatch)
    with read_only(tmp_path / "ro") as ro:
        code = main(["run", str(recipe), f"out_dir={ro}"])
    err = _flat(capsys.readouterr().err)
    assert code == 2
    assert f"run directory {ro / 'tiny'} cannot be written" in err and "out_dir=" in err


def test_read_only_run_dir_fails_first_on_resume(tmp_path, capsys, monkeypatch):
    recipe = _recipe_file(tmp_path, max_steps=1)
    assert main(["run", str(recipe)]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "runs" / "tiny"
    _forbid_models(monkeypatch)
    with read_only(run_dir):
        code = main(["run", str(recipe), "--resume", "auto", "train.max_steps=2"])
    assert code == 2
    assert f"run directory {run_dir} cannot be written" in _flat(capsys.readouterr().err)


# -- a full disk while writing metrics.jsonl -------------------------------------------------
def test_full_disk_on_metrics_leaves_whole_rows_and_names_the_checkpoint(tmp_path, monkeypatch):
    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path)
    d["train"].update(max_steps=4, checkpoint_every=2)
    registry = make_plugin_manager()
    recipe = recipe_from_dict(d, registry, "tiny")
    real_write = os.write

    def write(fd, data):
        if b'"step": 3,' in data:  # part of the row reaches the disk, then it is full
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(RunError) as info:
        train(recipe, registry)
    message = " ".join(str(info.value).split())
    last = recipe.run_dir / "checkpoints" / ckpt.checkpoint_name(2)
    assert "No space left on device (the disk is full)" in message
    assert f"The previous checkpoint, {last}, is intact" in message and "--resume auto" in message
    assert _steps(recipe.run_dir) == [1, 2]  # every line whole
    assert ckpt.load(last)["step"] == 2


# -- one lineage per run directory (branching with --resume PATH) --------------------------
SIGTERM_PLUGIN = '''
import os
import signal

from jepa_core.hookspecs import hookimpl


@hookimpl
def on_step_end(run, step, metrics):
    if step == int(os.environ["SIGTERM_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's preemption would
'''


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_killed_branch_resumes_as_the_branch_and_logs_one_lineage(tmp_path, capsys):
    """Branch from step 3 of a run that reached step 6 (another lr), SIGTERM the branch in
    step 4 (it stops after step 5, in which all ranks learn of the signal), then `--resume
    auto`: it continues the branch, not the abandoned step 6; the abandoned checkpoints and
    rows are kept aside; metrics.jsonl holds steps 1..8 once."""
    recipe = _recipe_file(tmp_path, max_steps=6, checkpoint_every=1, keep_last=4)
    run_dir = tmp_path / "runs" / "tiny"
    directory = run_dir / "checkpoints"
    assert main(["run", str(recipe)]) == 0
    first = _rows(run_dir / "metrics.jsonl")
    branch_point = directory / ckpt.checkpoint_name(3)
    (tmp_path / "sigterm_at.py").write_text(SIGTERM_PLUGIN)
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200", SIGTERM_AT_STEP="4",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    branch = ["run", str(recipe), "optim.lr=0.01", "train.max_steps=8"]
    killed = subprocess.run([sys.executable, "-m", "jepa_core", "-p", "sigterm_at", *branch,
                             "--resume", str(branch_point), "--force"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr
    err = _flat(killed.stderr)
    assert "starts a branch from step 3" in err and "`--resume auto` continues this run" in err
    abandoned = list(directory.glob("abandoned-*"))
    assert len(abandoned) == 1
    assert [p.name for p in ckpt.list_checkpoints(abandoned[0])] == [
        ckpt.checkpoint_name(s) for s in (4, 5, 6)]
    assert [ckpt.step_of(p) for p in ckpt.list_checkpoints(directory)] == [3, 4, 5]
    aside = list(run_dir.glob("metrics.abandoned-*.jsonl"))
    assert len(aside) == 1 and _rows(aside[0]) == first[3:]  # the abandoned rows, kept whole

    capsys.readouterr()
    assert main([*branch, "--resume", "auto"]) == 0
    rows = _rows(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[:3] == first[:3] and rows[5]["lr"] != first[5]["lr"]
    assert "steps 5→8" in capsys.readouterr().out  # from the branch's step 5, not step 6


def test_a_branch_sets_aside_later_copies_and_eval_json_and_a_plain_resume_nothing(tmp_path,
                                                                                   capsys):
    run_dir = tmp_path / "run"
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True)
    for name in ("step_000000002.pt", "step_000000004.pt", "step_000000005.pt.diverged",
                 "step_000000006.pt.corrupt", "step_000000002.pt.corrupt"):
        (directory / name).write_bytes(name.encode())
    rows = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7))
    (run_dir / "metrics.jsonl").write_text(rows)
    (run_dir / "eval.json").write_text(json.dumps({"format": 2, "source": {"step": 6}}))

    retire_later(run_dir, 4, "the newest checkpoint")  # nothing later but copies, eval.json
    abandoned, = directory.glob("abandoned-*")
    assert sorted(p.name for p in abandoned.iterdir()) == [
        "step_000000005.pt.diverged", "step_000000006.pt.corrupt"]
    assert sorted(p.name for p in directory.iterdir() if p.is_file()) == [
        "step_000000002.pt", "step_000000002.pt.corrupt", "step_000000004.pt"]
    assert list(run_dir.glob("eval.abandoned-*.json")) and not (run_dir / "eval.json").exists()
    assert _steps(run_dir) == [1, 2, 3, 4]
    assert "this starts a branch from step 4" in _flat(capsys.readouterr().err)

    with open(run_dir / "metrics.jsonl", "a") as f:  # killed after logging step 5
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    retire_later(run_dir, 4, "the newest checkpoint")  # rows alone: recomputed, no branch
    assert len(list(directory.glob("abandoned-*"))) == 1
    assert len(list(run_dir.glob("metrics.abandoned-*"))) == 1
    assert capsys.readouterr().err == ""


def test_setting_aside_never_replaces_a_file_set_aside_before(tmp_path):
    first = tmp_path / "step_000000003.pt"
    first.write_bytes(b"first")
    ckpt.set_aside(first, ".diverged")
    first.write_bytes(b"second")
    assert ckpt.set_aside(first, ".diverged").name == "step_000000003.pt.diverged-2"
    assert (tmp_path / "step_000000003.pt.diverged").read_bytes() == b"first"
    assert ckpt.files_after(tmp_path, 2) == [tmp_path / "step_000000003.pt.diverged",
                                             tmp_path / "step_000000003.pt.diverged-2"]


def test_a_checkpoint_from_elsewhere_keeps_only_its_own_history(tmp_path, capsys):
    """--resume PATH from outside the run's checkpoints: the directory's steps stay only where
    its metrics logged the very row the checkpoint ends with (a copy of its own checkpoint);
    another run's steps are set aside whole."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / ckpt.checkpoint_name(2)).write_bytes(b"other run")
    rows = [{"step": s, "loss": 0.5 / s, "elapsed_s": 0.25 * s} for s in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    inside = str(run_dir / "checkpoints" / ckpt.checkpoint_name(3))
    copy_of_own = {"step": 3, "metrics": {"loss": 0.5 / 3, "elapsed_s": 0.75}}
    other = {"step": 3, "metrics": {"loss": 0.5 / 3, "elapsed_s": 9.0}}
    assert history_kept(run_dir, inside, other) == 3  # the folder holds one line of steps
    assert history_kept(run_dir, str(tmp_path / "copy.pt"), copy_of_own) == 3
    assert history_kept(run_dir, str(tmp_path / "elsewhere.pt"), other) == -1
    assert history_kept(run_dir, str(tmp_path / "old.pt"), {"step": 3}) == -1  # no metrics

    retire_later(run_dir, 3, "elsewhere.pt", -1)
    assert (run_dir / "metrics.jsonl").read_text() == ""
    assert ckpt.list_checkpoints(run_dir / "checkpoints") == []
    abandoned, = (run_dir / "checkpoints").glob("abandoned-*")
    assert [p.name for p in abandoned.iterdir()] == [ckpt.checkpoint_name(2)]
    aside, = run_dir.glob("metrics.abandoned-*.jsonl")
    assert [json.loads(line) for line in aside.read_text().splitlines()] == rows
    assert "holds steps of another run" in _flat(capsys.readouterr().err)
