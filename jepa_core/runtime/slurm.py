"""`jepa run RECIPE --slurm ...`: submit the run to SLURM through submitit (optional extra).

The submitted job runs `jepa run RECIPE [overrides] --resume auto` in every task; ranks come
from submitit's job environment. On preemption or the time limit, SLURM sends SIGUSR1 (90 s
ahead): the trainer finishes its step and checkpoints, and submitit requeues the job, which
resumes from that checkpoint by itself. `--slurm-cluster local` runs the same job on this
machine through submitit's local executor (for testing).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import attrs

from jepa_core.errors import ConfigError, RunError


@attrs.frozen
class JepaJob:
    """The callable submitit pickles and runs in each task."""

    argv: tuple[str, ...]  # jepa CLI arguments, `run ...` included
    cluster: str

    def __call__(self) -> int:
        import submitit

        from jepa_core.commands.cli import main

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            master = "127.0.0.1" if self.cluster == "local" else env.hostnames[0]
            job = int("".join(c for c in str(env.job_id).split("_")[0] if c.isdigit()) or 0)
            os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks),
                              LOCAL_RANK=str(env.local_rank), MASTER_ADDR=master,
                              MASTER_PORT=str(os.environ.get("MASTER_PORT",
                                                             20000 + job % 20000)))
        code = main(list(self.argv))
        if code != 0:
            raise RunError(f"`jepa {' '.join(self.argv)}` exited with {code}; see the log.")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption/timeout: requeue the same job (it resumes)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def submit(args: argparse.Namespace, run_dir: Path) -> Any:
    """Submit the run to SLURM with submitit (`--slurm-*` options in `args`); returns the job.
    ConfigError if submitit is not installed."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--slurm needs submitit: pip install 'jepa-core[slurm]'.") from None
    folder = Path(args.slurm_dir or run_dir / "slurm")
    executor = submitit.AutoExecutor(folder=folder, cluster=args.slurm_cluster)
    tasks = args.gpus_per_node if args.slurm_cluster != "local" else args.tasks_per_node
    params: dict[str, Any] = dict(nodes=args.nodes, tasks_per_node=tasks,
                                  timeout_min=args.time_min, name=f"jepa-{run_dir.name}")
    if args.slurm_cluster != "local":
        params.update(gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                      slurm_signal_delay_s=90)
        if args.partition:
            params["slurm_partition"] = args.partition
    try:
        executor.update_parameters(**params)
    except Exception as exc:
        raise ConfigError(f"SLURM parameters rejected by submitit: {exc}") from exc
    argv = [*sum((["-p", m] for m in args.plugin), []), "run", args.recipe, *args.overrides,
            "--resume", "auto"]
    try:
        job = executor.submit(JepaJob(tuple(argv), args.slurm_cluster))
    except Exception as exc:  # sbatch missing or refusing: say so
        raise RunError(f"submission to {args.slurm_cluster} failed: {exc}. On a machine without "
                       f"SLURM use --slurm-cluster local to test the job.") from exc
    print(f"submitted job {job.job_id} ({args.nodes} node(s) × {tasks} task(s)); logs in {folder}")
    return job


def wait(job: Any) -> None:
    """Block until every task of `job` ends; a failed task is a RunError with its log."""
    try:
        job.results()
    except Exception as exc:
        raise RunError(f"SLURM job {job.job_id} failed: {exc}") from exc
    print(f"job {job.job_id} completed")
