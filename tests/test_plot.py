"""`jepa plot RUN_DIR`: a real PNG of the expected size, not blank, with a panel for each
series the run logged and none for the others; clear errors for nothing to plot."""

from __future__ import annotations

import copy
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from test_cli import REPO, clean_env, flat, no_traceback
from test_compare import eval_json

from jepa_core.commands.plot import choose_panels, figure_size, probe_results, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def jepa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                          text=True, env=clean_env(), cwd=REPO, timeout=60)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_not_blank(path: Path) -> None:
    image = Image.open(path).convert("L")
    assert ImageStat.Stat(image).stddev[0] > 10  # lines, text and bars on white
    assert len(image.getcolors(1 << 16)) > 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real tiny run (4 steps, the in-training kNN every 2 checkpoints) and an eval.json."""
    from conftest import TINY
    from rich.console import Console

    from jepa_core.plugins import make_plugin_manager
    from jepa_core.recipe import recipe_from_dict
    from jepa_core.runtime.trainer import train

    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path_factory.mktemp("runs"))
    d["train"].update(max_steps=4, checkpoint_every=1)
    d["eval"].update(every_checkpoints=2, live_images=16)
    registry = make_plugin_manager()
    run = train(recipe_from_dict(d, registry, "tiny"), registry,
                console=Console(file=io.StringIO()))
    (run.run_dir / "eval.json").write_text(json.dumps(
        eval_json(run.run_dir, knn=0.79, linear=0.88, rankme=41.2)))
    return run.run_dir


@pytest.mark.slow  # a real training run, then matplotlib in a subprocess
def test_a_real_run_draws_every_panel_it_logged(run_dir):
    out = jepa("plot", str(run_dir))
    assert out.returncode == 0, out.stderr
    no_traceback(out)
    png = run_dir / "plot.png"
    titles = ["loss", "learning rate", "weight decay", "EMA momentum", "effective rank",
              "feature std", "in-training kNN", "probe results"]
    for title in titles:
        assert title in out.stdout, title
    assert "8 panels" in out.stdout and "loss terms" not in out.stdout  # I-JEPA has none
    assert png_size(png) == figure_size(8) == (1200, 900)
    assert_not_blank(png)


def test_missing_series_have_no_panel(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "prediction": 0.5 / s}) for s in (1, 2, 3)]
    lines += ['{"step": 4, "loss": "nan"}', '{"step": 5, "lo']  # not finite; torn
    (run / "metrics.jsonl").write_text("\n".join(lines))
    target = tmp_path / "out.png"
    out = jepa("plot", str(run), "--out", str(target))
    assert out.returncode == 0, out.stderr
    assert "2 panels: loss, loss terms" in out.stdout
    assert "left out: probe results (no eval.json)" in out.stdout
    assert png_size(target) == figure_size(2) == (800, 300)
    assert_not_blank(target)
    series = read_metrics(run / "metrics.jsonl")
    assert series["loss"] == ([1, 2, 3], [1.0, 0.5, 1.0 / 3])
    assert [p.title for p in choose_panels(series, [])] == ["loss", "loss terms"]


@pytest.mark.parametrize("layout, message", [
    ("nothing", "is not a run directory"),
    ("no metrics", "has no metrics.jsonl"),
    ("empty metrics", "holds no rows with a step and numbers"),
])
def test_nothing_to_plot_is_one_clear_error(tmp_path, layout, message):
    run = tmp_path / "run"
    if layout != "nothing":
        run.mkdir()
    if layout == "empty metrics":
        (run / "metrics.jsonl").write_text("")
    out = jepa("plot", str(run))
    assert out.returncode == 2
    no_traceback(out)
    assert message in flat(out.stderr) and str(run) in flat(out.stderr)
    assert not (tmp_path / "run" / "plot.png").exists()


def test_help_does_not_import_matplotlib():
    code = ("import sys, contextlib, io\n"
            "from jepa_core.commands.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print('matplotlib' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=clean_env(), cwd=REPO, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_rows_with_impossible_steps_or_values_are_left_out_with_a_note(tmp_path):
    """Rows whose step is NaN, infinite, fractional, negative or a bool, and values of ±1e308,
    which matplotlib cannot scale: the plot draws the rest and says what it left out."""
    run = tmp_path / "run"
    run.mkdir()
    good = [json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3 * s}) for s in range(1, 6)]
    hostile = ['{"step": NaN, "loss": 1.0}', '{"step": Infinity, "loss": 1.0}',
               '{"step": 1e400, "loss": 1.0}', '{"step": 2.5, "loss": 1.0}',
               '{"step": -1, "loss": 1.0}', '{"step": true, "loss": 1.0}',
               '{"step": 6, "loss": 1e308, "lr": -1e308}', '{"step": 7, "loss": 0.1}']
    (run / "metrics.jsonl").write_text("\n".join(good + hostile) + "\n")
    (run / "eval.json").write_text(
        '{"format": 2, "results": [{"protocol": "knn", "accuracy": {"test": NaN}}, '
        '{"protocol": "linear", "accuracy": {"test": 1e308}}, '
        '{"protocol": "linear", "features": "raw pixels", "accuracy": {"test": 0.5}}]}')
    out = jepa("plot", str(run))
    no_traceback(out)
    assert out.returncode == 0 and "finite" not in out.stderr, out.stderr  # no bar at NaN
    assert "probe results (eval.json)" in out.stdout
    assert [value for _, value, _ in probe_results(run / "eval.json")] == [0.5]
    text = flat(out.stdout)
    assert "note: left out 6 row(s) of metrics.jsonl whose step is not a whole number" in text
    assert "(line(s) 6, 7, 8, 9, 10, ...)" in text and "1 of loss, 1 of lr" in text
    assert_not_blank(run / "plot.png")
    series = read_metrics(run / "metrics.jsonl")
    assert series["loss"][0] == [1, 2, 3, 4, 5, 7] and series["lr"][0] == [1, 2, 3, 4, 5]


def test_a_run_path_the_os_cannot_look_up_is_named(tmp_path):
    out = jepa("plot", str(tmp_path / ("x" * 300)))
    no_traceback(out)
    assert out.returncode == 2 and "cannot be looked up (File name too long)" in flat(out.stderr)


def test_the_probe_chart_is_readable_at_its_default_size():
    """One line per result row, labels apart, a legend naming each colour, and every text
    (labels, values, legend) inside the figure: "95.5%" was cut at the right edge and the
    two-line labels printed over each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jepa_core.commands.plot import DPI, PANEL_INCHES, bar_rows, draw_bars

    rows = ["knn pooled k=20", "linear pooled", "linear last4", "attentive tokens",
            "lowshot pooled 1 per class", "lowshot pooled 5 per class",
            "lowshot pooled 1% of labels"]
    features = ["trained target encoder", "random init", "raw pixels"]
    bars = [(row, 0.5 + 0.07 * i + (0.05 if j == 2 else -0.05 * j), f)
            for i, row in enumerate(rows) for j, f in enumerate(features)
            if not (row == "linear last4" and f == "raw pixels")]
    assert max(v for _, v, _ in bars) > 0.95
    assert bar_rows(bars)[:2] == (rows, features)
    fig, ax = plt.subplots(figsize=PANEL_INCHES, dpi=DPI, layout="constrained")
    try:
        draw_bars(ax, bars)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        page = fig.bbox
        labels = [t for t in ax.get_yticklabels() if t.get_text()]
        assert [t.get_text() for t in labels] == rows  # one line each
        boxes = [t.get_window_extent(renderer) for t in labels]
        for a, b in zip(boxes, boxes[1:], strict=False):
            assert not a.overlaps(b)
        legend = ax.get_legend()
        assert legend is not None
        assert [t.get_text() for t in legend.get_texts()] == features
        texts = [*labels, *ax.texts, *legend.get_texts()]
        assert len(ax.texts) == len(bars)
        for t in texts:
            box = t.get_window_extent(renderer)
            assert page.x0 <= box.x0 and box.x1 <= page.x1, t.get_text()
            assert page.y0 <= box.y0 and box.y1 <= page.y1, t.get_text()
    finally:
        plt.close(fig)
