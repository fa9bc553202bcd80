"""bench/timing.py: interleaved timings and the verdict on whether a ratio means anything;
bench/threads.py: step times per thread setting, idle and under its own load."""

from __future__ import annotations

import json
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


threads_bench = load_bench("threads")


def test_threads_bench_step_times_skip_the_warmup(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "elapsed_s": t} for s, t in ((1, 5.0), (2, 5.5), (3, 5.7), (4, 6.0))]
    rows.insert(2, {"step": 2, "live_knn": 0.5})  # a row without a step time
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert threads_bench.step_times(metrics, skip=2) == pytest.approx([0.2, 0.3])


def test_threads_bench_table_gives_each_column_its_best():
    text = threads_bench.table({"a": {"idle": 0.010, "loaded": 0.040},
                                "b": {"idle": 0.020, "loaded": 0.020}}, ["idle", "loaded"])
    a, b = text.splitlines()[1:]
    assert a.split()[1:] == ["10.0", "1.00", "40.0", "2.00"]
    assert b.split()[1:] == ["20.0", "2.00", "20.0", "1.00"]


def test_threads_bench_load_stops_with_the_block():
    with threads_bench.busy(2, limit_s=60) as procs:
        assert all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)
    ended = subprocess.run(threads_bench.busy_loop(0.1), timeout=30)  # and by itself
    assert ended.returncode == 0


def test_threads_bench_settings_compare_against_jepas_default():
    found = threads_bench.settings()
    assert found["1 thread"] == {"OMP_NUM_THREADS": "1"}
    assert found["jepa default (nothing set)"] == {}
    assert {"all threads, ACTIVE", "all threads, PASSIVE"} <= set(found)


@pytest.mark.slow
def test_threads_bench_runs_idle_and_loaded(tmp_path):
    import copy

    import yaml
    from conftest import TINY

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**copy.deepcopy(TINY), "out_dir": str(tmp_path)}))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "threads.py"), "--recipe",
                          str(recipe), "--steps", "3", "--skip", "1", "--repeats", "1",
                          "--load", "1", "--load-limit", "120",
                          "--settings", "1 thread;jepa default (nothing set)",
                          "train.device=cpu"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("setting"))
    assert "idle ms/step" in lines[head] and "loaded ms/step" in lines[head]
    assert [line.split("  ")[0] for line in lines[head + 1:head + 3]] == [
        "1 thread", "jepa default (nothing set)"]


eval_throughput = load_bench("eval_throughput")


def test_eval_throughput_report_names_the_slower_loop_as_the_bottleneck():
    r = {"images": 100, "kinds": ("pooled",), "batch": 64, "workers": 0, "threads": 1,
         "decode": 4000.0, "bare": 500.0, "ours": 450.0}
    text = eval_throughput.report(r)
    assert "ours / bare:   0.90 (goal >= 0.9)" in text
    assert "bottleneck: the forward pass" in text
    assert "bottleneck: decoding" in eval_throughput.report({**r, "decode": 300.0})


def test_eval_throughput_bench_times_the_three_loops(tmp_path):
    out = subprocess.run([sys.executable, "bench/eval_throughput.py", "--images", "40",
                          "--repeats", "1"], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    cells = [line.split() for line in out.stdout.splitlines()]
    rows = {c[0]: float(c[1]) for c in cells
            if len(c) == 2 and c[0] in ("decode", "bare", "ours")}
    assert set(rows) == {"decode", "bare", "ours"} and all(v > 0 for v in rows.values())
    assert "40 images" in out.stdout and "ours / bare:" in out.stdout
