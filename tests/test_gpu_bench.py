"""bench/gpu.py runs end to end: the CPU smoke version (tiny model, 2 timed steps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_bench_cpu_smoke_runs_end_to_end():
    env = dict(os.environ, COLUMNS="200")
    result = subprocess.run([sys.executable, "bench/gpu.py", "--cpu-smoke"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    assert "I-JEPA train_step" in out and "cpu smoke" in out
    for column in ("img/s", "GFLOP/img", "MFU", "peak GiB", "model GiB"):
        assert column in out
    row = next(line for line in out.splitlines() if line.strip("│ ").startswith("off"))
    loss = float(row.strip("│ ").split("│")[-1])
    assert loss == loss and loss > 0  # a finite, positive loss came out of train_step


def test_gpu_bench_times_pad_against_pack():
    env = dict(os.environ, COLUMNS="200")
    result = subprocess.run([sys.executable, "bench/gpu.py", "--cpu-smoke", "--layout",
                             "pad,pack"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.strip("│ ").startswith("off")]
    assert [r.split("│")[2].strip() for r in rows] == ["pad", "pack"]
    assert "pack / pad (compile off):" in result.stdout
    bad = subprocess.run([sys.executable, "bench/gpu.py", "--cpu-smoke", "--layout", "packed"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--layout: packed is not one of" in bad.stderr
