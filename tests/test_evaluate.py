"""`jepa eval`: probes on frozen features of a trained run, with baselines."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from jepa_core.evaluate import eval_indices, knn_accuracy, linear_probe
from jepa_core.recipe import EvalConfig
from jepa_core.trainer import train


def test_eval_indices_are_a_seeded_subset():
    assert eval_indices(10, None, 0) == list(range(10))
    a, b = eval_indices(1000, 50, 0), eval_indices(1000, 50, 0)
    assert a == b and len(set(a)) == 50 and a != list(range(50))
    assert eval_indices(1000, 50, 1) != a


def test_probes_separate_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 16, generator=g)
    cfg = EvalConfig()
    assert linear_probe(x[:200], y[:200], x[200:], y[200:], 3, cfg) > 0.95
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], 3, 10) > 0.95
    noise = torch.randn(300, 16, generator=g)
    assert linear_probe(noise[:200], y[:200], noise[200:], y[200:], 3, cfg) < 0.6


def test_eval_command_on_a_run_directory(tiny_dict):
    tiny_dict["train"]["max_steps"] = 2
    tiny_dict["eval"] = {"after_train": False, "max_images": 40, "probe_epochs": 10}
    from jepa_core.plugins import make_plugin_manager
    from jepa_core.recipe import recipe_from_dict

    registry = make_plugin_manager()
    run = train(recipe_from_dict(tiny_dict, registry, "t"), registry)
    out = subprocess.run([sys.executable, "-m", "jepa_core", "eval", str(run.run_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for row in ("trained target encoder", "random init", "raw pixels"):
        assert row in out.stdout
    missing = subprocess.run([sys.executable, "-m", "jepa_core", "eval", str(run.run_dir / "x")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "neither a run directory nor a checkpoint" in missing.stderr
