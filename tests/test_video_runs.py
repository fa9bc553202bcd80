"""V-JEPA end to end, in real subprocesses: the video method trains with 2 processes as with
one, and a run killed mid-way resumes to the same weights, as image runs do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_same_training

from jepa_core.runtime import checkpoint as ckpt

STEPS = 6


def video_recipe(tmp_path: Path, name: str, **train) -> tuple[Path, Path]:
    """A tiny V-JEPA recipe (moving digits, vit_video on a 2x4x4 grid, two mask sets, one
    mask token each) written to tmp_path; (recipe file, run directory)."""
    d = {
        "name": name, "seed": 0, "out_dir": str(tmp_path),
        "data": {"name": "moving_digits", "num_frames": 4, "digit_size": 6, "num_train": 48,
                 "num_test": 16},
        "encoder": {"name": "vit_video", "model": "vit_tiny_patch16_224", "img_size": 16,
                    "patch_size": 4, "num_frames": 4, "tubelet_size": 2, "embed_dim": 24,
                    "depth": 2, "num_heads": 2},
        "predictor": {"name": "vit_predictor", "embed_dim": 16, "depth": 1, "num_heads": 2,
                      "num_mask_tokens": 2},
        "method": {"name": "vjepa"},
        "masker": {"name": "multiblock3d", "sets": [
            {"name": "short", "num_blocks": 2, "spatial_scale": [0.15, 0.15],
             "temporal_scale": [1.0, 1.0], "aspect_ratio": [0.75, 1.5]},
            {"name": "long", "num_blocks": 1, "spatial_scale": [0.5, 0.5],
             "temporal_scale": [1.0, 1.0], "aspect_ratio": [0.75, 1.5]}]},
        "target_updater": {"name": "ema", "momentum": [0.99, 1.0]},
        "loss": {"name": "l1"},
        "optim": {"lr": 1e-3, "warmup_epochs": 1},
        "train": {"epochs": 2, "global_batch_size": 8, "log_every": 1, "device": "cpu",
                  "max_steps": STEPS, **train},
        "eval": {"after_train": False},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path, tmp_path / name


def jepa(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def final(run_dir: Path) -> dict:
    return ckpt.load(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])


@pytest.mark.slow
def test_two_process_vjepa_equals_one_process(tmp_path):
    one, one_dir = video_recipe(tmp_path, "one")
    two, two_dir = video_recipe(tmp_path, "two")
    jepa("run", str(one))
    jepa("run", str(two), "--nproc", "2")
    a, b = final(one_dir), final(two_dir)
    assert a["step"] == b["step"] == STEPS
    assert sorted(a["modules"]) == ["encoder", "predictor", "target_encoder"]
    for part in a["modules"]:
        for k, v in a["modules"][part].items():
            torch.testing.assert_close(b["modules"][part][k], v, rtol=1e-4, atol=1e-5)
    for key in ("loss", "prediction_short", "prediction_long"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-5), key


@pytest.mark.slow
def test_a_killed_vjepa_run_resumes_bit_identical(tmp_path):
    straight, straight_dir = video_recipe(tmp_path, "straight", checkpoint_every=1)
    killed, killed_dir = video_recipe(tmp_path, "killed", checkpoint_every=1)
    jepa("run", str(straight))
    proc = subprocess.Popen([sys.executable, "-m", "jepa_core", "run", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= STEPS // 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert final(killed_dir)["step"] < STEPS
    jepa("run", str(killed), "--resume", "auto")
    a, b = final(straight_dir), final(killed_dir)
    assert a["step"] == b["step"] == STEPS
    assert_same_training(a, b)
