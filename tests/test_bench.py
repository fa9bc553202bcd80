"""bench/timing.py: interleaved timings and the verdict on whether a ratio means anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_bench

timing = load_bench("timing")


def test_variants_run_in_turns_and_warmup_is_not_timed():
    calls = []
    times = timing.interleave({"a": lambda i: calls.append(("a", i)),
                               "b": lambda i: calls.append(("b", i))}, iters=3, warmup=2)
    assert calls == [(n, i) for i in range(5) for n in ("a", "b")]
    assert [len(t) for t in times.values()] == [3, 3]


def test_a_clear_difference_is_trusted():
    fast = [0.010, 0.011, 0.010, 0.012, 0.011]
    slow = [0.030, 0.031, 0.029, 0.030, 0.032]
    ratio, doubt = timing.verdict(fast, slow)
    assert doubt is None and ratio == pytest.approx(0.030 / 0.011)


def test_overlapping_ranges_are_not_trusted():
    fast = [0.010, 0.030, 0.012, 0.028, 0.020]
    slow = [0.022, 0.011, 0.031, 0.015, 0.025]
    ratio, doubt = timing.verdict(fast, slow)
    assert doubt is not None and "interquartile" in doubt


def test_one_disturbed_step_wider_than_the_gap_is_not_trusted():
    fast = [0.010, 0.010, 0.010, 0.010, 0.300]  # a load spike on one step
    slow = [0.020, 0.020, 0.020, 0.020, 0.020]
    ratio, doubt = timing.verdict(fast, slow)
    assert ratio == pytest.approx(2.0) and doubt is not None and "spread" in doubt


def test_the_report_warns_and_names_the_load():
    text = timing.report({"fast": [0.01, 0.03, 0.02], "baseline": [0.02, 0.01, 0.03]},
                         "fast", "baseline", items=8)
    assert "WARNING: this ratio is not meaningful" in text and "load " in text


@pytest.mark.slow
def test_train_step_bench_runs_interleaved(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "train_step.py"),
                          str(root / "recipes" / "quickstart.yaml"), "--iters", "3",
                          "--warmup", "1"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "speed-up fast vs baseline" in out.stdout and "IQR" in out.stdout


@pytest.mark.slow
def test_masks_bench_prints_ratios_and_the_thread_figures(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "masks.py"), "--iters", "1"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loop/vec" in out.stdout and "reference/16" in out.stdout
    assert "draw_masks / one thread" in out.stdout and "3. statistics" in out.stdout
