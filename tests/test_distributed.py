"""Launch modes: environment detection, failed init, and real 2-process DDP with gloo."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import TINY, tiny_method

from jepa_core.errors import RunError
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.distributed import DistEnv, detect, init_process_group
from jepa_core.runtime.worker import worker_argv


def test_detect_plain():
    assert detect({}) == DistEnv()


def test_detect_torchrun():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1",
           "MASTER_PORT": "29500"}
    assert detect(env) == DistEnv(3, 8, 1, "torchrun", "n1", 29500)


def test_detect_slurm():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
           "SLURM_JOB_ID": "12345", "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.7"}
    d = detect(env)
    assert (d.rank, d.world_size, d.local_rank, d.mode) == (5, 16, 1, "slurm")
    assert d.master_addr == "10.0.0.7" and d.master_port == 20000 + 12345 % 20000
    # a single-task SLURM allocation is a plain run
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == DistEnv()


def test_detect_rejects_garbage():
    with pytest.raises(RunError, match="WORLD_SIZE"):
        detect({"RANK": "0", "WORLD_SIZE": "two"})


def test_failed_init_is_an_error_not_a_silent_single_process(monkeypatch):
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    # rank 1 is a client: it binds nothing, and nobody listens on the port
    env = DistEnv(1, 2, 1, "torchrun", "127.0.0.1", 9)
    with pytest.raises(RunError, match=r"distributed init failed.*rank 1 of 2.*127.0.0.1:9"):
        init_process_group(env, "gloo", timeout_s=3)
    # the variables it set for the attempt are gone: a later run in this process (or a child
    # it starts) must not believe it is rank 1 of 2
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        assert k not in os.environ


def test_worker_argv_puts_plugins_first():
    assert worker_argv(["-p", "a.b", "r.yaml", "x=1"]) == ["-p", "a.b", "run", "r.yaml", "x=1"]


def _write(tmp_path, name, dist=None, method="ijepa", **train):
    d = tiny_method(copy.deepcopy(TINY), method)
    d["out_dir"] = str(tmp_path / name)
    d["train"].update(device="cpu", max_steps=3, **train)
    d["dist"] = dist or {}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path, tmp_path / name / "tiny"


def _jepa(*args, threads="1"):
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    if threads is None:
        env.pop("OMP_NUM_THREADS")
    out = subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _final(run_dir):
    return ckpt.load(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])


def test_workers_share_the_cores():
    from jepa_core.runtime.launch import worker_threads

    assert [worker_threads(n, 16) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    assert worker_threads(2, None) == 1


@pytest.mark.slow
def test_nproc_prints_no_torchrun_thread_banner(tmp_path):
    recipe, _ = _write(tmp_path, "quiet")
    out = _jepa("run", str(recipe), "--nproc", "2", "train.max_steps=1", threads=None)
    assert "OMP_NUM_THREADS" not in out.stdout + out.stderr


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    one, one_dir = _write(tmp_path, "one")
    two, two_dir = _write(tmp_path, "two")
    acc, acc_dir = _write(tmp_path, "acc")
    _jepa("run", str(one))
    _jepa("run", str(two), "--nproc", "2")
    _jepa("run", str(acc), "--nproc", "2", "dist.per_device_batch_cap=2")
    a = _final(one_dir)
    for other in (_final(two_dir), _final(acc_dir)):
        assert other["step"] == a["step"] == 3
        for part in ("encoder", "predictor", "target_encoder"):
            for k, v in a["modules"][part].items():
                torch.testing.assert_close(other["modules"][part][k], v, rtol=1e-4, atol=1e-5)
        # the logged loss is the mean over ranks, i.e. the single-process loss
        assert other["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=1e-5)


# A parameter that only shifts every sample's input to a batch norm by the same vector (the
# encoder's final-norm bias, through the projector's bias-free first Linear): the loss is
# exactly invariant to it, so its gradient is zero up to float summation noise, whose order
# depends on the number of ranks, and Adam turns that noise into steps of order lr.
# Everything the loss depends on is compared.
SHIFT_ONLY = {"lejepa": {("encoder", "norm.bias")}}
# Batch-norm and SIGReg statistics are sums over the global batch taken in another order by
# 2 ranks; Adam divides each step by sqrt(v), so an element with a near-zero gradient turns
# that rounding into a few percent of one lr step (measured: 2.8e-5 on 1 of 3072 elements).
ATOL = {"lejepa": 1e-4}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lejepa", "ijepa_sigreg"])
def test_two_process_ddp_equals_one_process_for_regularised_methods(tmp_path, method):
    """SIGReg's statistics are averaged over ranks before the square, with the same random
    directions on every rank, so 2 processes x B/2 train like 1 process x B."""
    one, one_dir = _write(tmp_path, "one", method=method)
    two, two_dir = _write(tmp_path, "two", method=method)
    _jepa("run", str(one))
    _jepa("run", str(two), "--nproc", "2")
    a, b = _final(one_dir), _final(two_dir)
    assert a["step"] == b["step"] == 3 and sorted(a["modules"]) == sorted(b["modules"])
    for part in a["modules"]:
        for k, v in a["modules"][part].items():
            if (part, k) in SHIFT_ONLY.get(method, ()):
                continue
            torch.testing.assert_close(b["modules"][part][k], v, rtol=1e-4,
                                       atol=ATOL.get(method, 1e-5))
    assert b["metrics"]["sigreg"] == pytest.approx(a["metrics"]["sigreg"], rel=1e-4)
    assert b["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=1e-4)


@pytest.mark.slow
def test_submitit_local_executor_runs_two_tasks_end_to_end(tmp_path):
    pytest.importorskip("submitit")
    one, one_dir = _write(tmp_path, "one")
    job, job_dir = _write(tmp_path, "job")
    _jepa("run", str(one))
    out = _jepa("run", str(job), "--slurm", "--slurm-cluster", "local", "--tasks-per-node", "2",
                "--wait")
    assert "submitted job" in out.stdout and "completed" in out.stdout
    a, b = _final(one_dir), _final(job_dir)
    for k, v in a["modules"]["encoder"].items():
        torch.testing.assert_close(b["modules"]["encoder"][k], v, rtol=1e-4, atol=1e-5)
    assert list((job_dir / "slurm").glob("*_log.out"))


@pytest.mark.slow
def test_fsdp2_equals_ddp_and_resumes(tmp_path):
    ddp, ddp_dir = _write(tmp_path, "ddp")
    fsdp, fsdp_dir = _write(tmp_path, "fsdp", dist={"strategy": "fsdp"}, checkpoint_every=1)
    _jepa("run", str(ddp), "--nproc", "2")
    _jepa("run", str(fsdp), "--nproc", "2", "train.max_steps=2")
    _jepa("run", str(fsdp), "--nproc", "2", "--resume", "auto")  # full state dicts round trip
    a, b = _final(ddp_dir), _final(fsdp_dir)
    assert b["step"] == 3
    for part in ("encoder", "predictor", "target_encoder"):  # the EMA ran on shards
        assert a["modules"][part].keys() == b["modules"][part].keys()
        for k, v in a["modules"][part].items():
            torch.testing.assert_close(b["modules"][part][k], v, rtol=1e-4, atol=1e-5)
    assert b["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=1e-4)


def test_fsdp_needs_several_processes(tiny_dict, registry):
    from jepa_core.errors import ConfigError
    from jepa_core.recipe import recipe_from_dict
    from jepa_core.runtime.trainer import train

    tiny_dict["dist"] = {"strategy": "fsdp"}
    with pytest.raises(ConfigError, match="needs several processes"):
        train(recipe_from_dict(tiny_dict, registry, "t"), registry)
