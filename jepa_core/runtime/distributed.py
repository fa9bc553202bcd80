"""Who am I in a distributed run: detection from the environment, init and tear-down.

Modes, detected in this order (never silently degraded):
  torchrun / elastic launcher: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set;
  SLURM srun:                  SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (+ a master address
                               from SLURM_LAUNCH_NODE_IPADDR or MASTER_ADDR, port from the job id);
  plain process:               neither: world size 1, no process group.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import timedelta

import attrs

from jepa_core.errors import RunError


@attrs.frozen
class DistEnv:
    """Where this process stands in the job: rank, world size, local rank, how it was
    launched, and the rendezvous address."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "plain"  # "plain", "torchrun", "slurm"
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is used (several processes, or launched by torchrun/SLURM)."""
        return self.world_size > 1 or self.mode != "plain"


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise RunError(f"environment variable {key}={env[key]!r} is not an integer; the "
                       f"launcher set it wrongly.") from None


def detect(env: Mapping[str, str] | None = None) -> DistEnv:
    """The DistEnv described by torchrun's or SLURM's environment variables in `env`
    (os.environ by default); a plain single process otherwise."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK")
                       if "LOCAL_RANK" in env else 0, "torchrun", env.get("MASTER_ADDR"),
                       _int(env, "MASTER_PORT") if "MASTER_PORT" in env else None)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and _int(env, "SLURM_NTASKS") > 1:
        addr = env.get("MASTER_ADDR") or env.get("SLURM_LAUNCH_NODE_IPADDR")
        job = _int(env, "SLURM_JOB_ID") if "SLURM_JOB_ID" in env else 0
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 20000 + job % 20000
        return DistEnv(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"),
                       _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0, "slurm",
                       addr, port)
    return DistEnv()


def init_process_group(dist_env: DistEnv, backend: str, timeout_s: float = 1800.0) -> list[str]:
    """Join the process group; a failure (or no rendezvous within `timeout_s`) is an error
    saying what was tried. Returns the environment variables it set (for `destroy`)."""
    if not dist_env.distributed:
        return []
    import torch.distributed as dist

    if dist.is_initialized():
        return []
    wanted = {"MASTER_ADDR": dist_env.master_addr or "127.0.0.1", "RANK": str(dist_env.rank),
              "WORLD_SIZE": str(dist_env.world_size), "LOCAL_RANK": str(dist_env.local_rank)}
    if dist_env.master_port is not None:
        wanted["MASTER_PORT"] = str(dist_env.master_port)
    added = [k for k in wanted if k not in os.environ]
    for k in added:
        os.environ[k] = wanted[k]
    try:
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    except Exception as exc:  # report what was tried; never fall back to one process
        tried = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        destroy(added)  # leave the environment as found: a later run must not inherit a rank
        raise RunError(
            f"distributed init failed ({dist_env.mode} mode, backend {backend}, rank "
            f"{dist_env.rank} of {dist_env.world_size}, rendezvous "
            f"{tried}): {exc}. Check "
            f"that every process sees the same MASTER_ADDR/MASTER_PORT and that the port is free."
        ) from exc
    return added


def destroy(added_env: Sequence[str] = ()) -> None:
    """Leave the process group and remove the variables `init_process_group` added."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key in added_env:
        os.environ.pop(key, None)
