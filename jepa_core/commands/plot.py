"""`jepa plot RUN_DIR`: a run's metrics.jsonl and eval.json as one PNG of small panels.

Panels, each only where the run logged its series: the loss, the method's named loss terms,
learning rate, weight decay, EMA momentum, effective rank and feature std of the pooled target
features, the in-training kNN accuracy (`eval.every_checkpoints`), and a bar chart of the
probe results of eval.json. matplotlib (Agg backend) is imported here only.

    series = read_metrics(Path("runs/quickstart/metrics.jsonl"))   # {key: ([step], [value])}
    panels = choose_panels(series, results)                         # what will be drawn
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs

from jepa_core.errors import JepaError
from jepa_core.runtime.rundir import check_lookup
from jepa_core.runtime.runlog import MAX_STEP, row_step

COLUMNS = 3
PANEL_INCHES = (4.0, 3.0)
DPI = 100
LARGEST = 3.4028234663852886e38  # float32's largest: no metric of a run is beyond it
# Keys of a training row that are not loss terms (everything else numeric is a named term).
NOT_TERMS = frozenset({
    "step", "loss", "lr", "wd", "momentum", "grad_norm", "img_per_s", "elapsed_s",
    "skipped_samples", "skipped_steps", "skipped_step", "target_std", "effective_rank", "rank",
    "live_knn", "live_images", "live_train_images", "live_s"})


class PlotError(JepaError):
    """Nothing to plot: no run directory, no metrics.jsonl, or no rows in it."""

    title = "cannot plot"


def read_metrics(path: Path, left_out: list[str] | None = None
                 ) -> dict[str, tuple[list[int], list[float]]]:
    """{key: (steps, values)} of every numeric key of metrics.jsonl, finite values only; torn
    or non-JSON lines (a killed run's last line) are left out. So are rows without a valid step
    (`runlog.row_step`: NaN, infinite, fractional, negative) and values beyond float32's range,
    which no run logs and matplotlib cannot scale: each kind is described in `left_out`."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    bad_steps: list[int] = []
    huge: dict[str, int] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            step = row_step(row)
            if step is None:
                if isinstance(row, dict) and "step" in row:
                    bad_steps.append(number)
                continue
            for key, value in row.items():
                if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if abs(value) > LARGEST:
                    huge[key] = huge.get(key, 0) + 1
                elif math.isfinite(value):
                    steps, values = series.setdefault(key, ([], []))
                    steps.append(step)
                    values.append(float(value))
    if left_out is not None and bad_steps:
        shown = ", ".join(map(str, bad_steps[:5])) + (", ..." if len(bad_steps) > 5 else "")
        left_out.append(f"{len(bad_steps)} row(s) of {path.name} whose step is not a whole "
                        f"number from 0 to {MAX_STEP} (line(s) {shown})")
    if left_out is not None and huge:
        left_out.append(f"values beyond ±{LARGEST:.3g} (float32's range, which no run logs): "
                        + ", ".join(f"{n} of {key}" for key, n in sorted(huge.items())))
    return series


def probe_results(path: Path) -> list[tuple[str, float, str]]:
    """[(label, test accuracy, features)] of an eval.json (format 2 or 1); [] when it has none
    or cannot be read (the plot then goes without the bar chart). Accuracies that are no
    fraction (NaN, infinite, outside [0, 1]: an edited file) get no bar."""
    from jepa_core.commands.compare import CompareError, results_of

    try:
        results = results_of(json.loads(path.read_text()), path)
    except (OSError, ValueError, CompareError):
        return []
    bars = []
    for r in results:
        value, split = r.figure()
        if split != "value" and value is not None and 0.0 <= value <= 1.0:  # NaN fails too
            name = " ".join(x for x in (r.protocol, r.feature_kind, r.setting) if x)
            name += f" ({split})" if split != "test" else ""
            bars.append((name, value, r.features))
    return bars


def bar_rows(bars: list) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """(row labels, features in order, {(row, features): value}) of `probe_results`: one row
    per protocol result, one bar per set of features in it."""
    rows = list(dict.fromkeys(label for label, _, _ in bars))
    features = list(dict.fromkeys(f for _, _, f in bars))
    return rows, features, {(label, f): v for label, v, f in bars}


def draw_bars(ax: Any, bars: list) -> None:
    """The probe chart: a group of bars per result row, one colour per set of features (the
    legend below names them), each bar's value at its end, in the axes."""
    from matplotlib.ticker import PercentFormatter

    rows, features, value = bar_rows(bars)
    height = 0.8 / len(features)
    for j, f in enumerate(features):
        at = [(i - 0.4 + height * (j + 0.5), value[row, f]) for i, row in enumerate(rows)
              if (row, f) in value]
        ys, vs = zip(*at, strict=True)
        ax.barh(ys, vs, height, color=_colour(f), label=f)
        for y, v in at:
            ax.text(v, y, f" {100 * v:.1f}%", va="center", fontsize=5)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.22)  # room for "100.0%" after a full bar
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(features), 2),
              fontsize=6, frameon=False)  # two columns: three overran a panel's width


@attrs.frozen
class Panel:
    """One panel of the plot: a title and its series (or the probe bars)."""
    title: str
    lines: tuple[tuple[str, str], ...] = ()  # (series key, legend label)
    ylabel: str = ""
    log: bool = False  # a log y axis
    percent: bool = False  # values are fractions, shown as %


def choose_panels(series: dict, bars: list) -> list[Panel]:
    """The panels of the series present, in a fixed order; a missing series has no panel."""
    panels = []

    def add(panel: Panel) -> None:
        if any(key in series for key, _ in panel.lines):
            panels.append(panel)

    add(Panel("loss", (("loss", "loss"),), log=_positive(series.get("loss"))))
    terms = sorted(k for k in series if k not in NOT_TERMS and not k.endswith("_tokens"))
    if terms:
        panels.append(Panel("loss terms", tuple((k, k) for k in terms)))
    add(Panel("learning rate", (("lr", "lr"),)))
    add(Panel("weight decay", (("wd", "weight decay"),)))
    add(Panel("EMA momentum", (("momentum", "momentum"),)))
    rank = "effective_rank" if "effective_rank" in series else "rank"
    add(Panel("effective rank (pooled target features)", ((rank, rank),)))
    add(Panel("feature std across the batch", (("target_std", "target_std"),),
              log=_positive(series.get("target_std"))))
    add(Panel("in-training kNN accuracy", (("live_knn", "live kNN"),), percent=True))
    if bars:
        panels.append(Panel("probe results (eval.json)", percent=True))
    return panels


def _colour(features: str) -> str:
    """Bars of the trained encoder blue, of the baselines grey and orange."""
    if features.startswith("trained"):
        return "tab:blue"
    return {"random init": "tab:gray", "raw pixels": "tab:orange"}.get(features, "tab:green")


def _positive(found: tuple | None) -> bool:
    if not found:
        return False
    return min(found[1]) > 0 and max(found[1]) / min(found[1]) > 20


def figure_size(panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for this many panels."""
    rows = max(1, math.ceil(panels / COLUMNS))
    cols = min(COLUMNS, max(1, panels))
    return int(cols * PANEL_INCHES[0] * DPI), int(rows * PANEL_INCHES[1] * DPI)


def draw(series: dict, bars: list, panels: list[Panel], title: str, out: Path) -> None:
    """Draw the panels into a PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    width, height = figure_size(len(panels))
    rows, cols = max(1, math.ceil(len(panels) / COLUMNS)), min(COLUMNS, len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(width / DPI, height / DPI), dpi=DPI,
                             squeeze=False, layout="constrained")
    try:
        fig.suptitle(title)
        for ax, panel in zip(axes.flat, panels, strict=False):  # spare axes stay blank
            ax.set_title(panel.title, fontsize=10)
            ax.tick_params(labelsize=8)
            if panel.lines:
                for key, label in panel.lines:
                    if key in series:
                        steps, values = series[key]
                        style = dict(marker="o", markersize=3) if len(steps) < 30 else {}
                        ax.plot(steps, values, linewidth=1, label=label, **style)
                ax.set_xlabel("step", fontsize=8)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if len(panel.lines) > 1:
                    ax.legend(fontsize=7)
            else:  # the probe bar chart
                draw_bars(ax, bars)
                continue
            if panel.log:
                ax.set_yscale("log")
            if panel.percent:
                ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.savefig(out, dpi=DPI)
    finally:
        plt.close(fig)


def plot_command(run_dir: str, out: str | None, console: Any) -> int:
    """`jepa plot RUN_DIR [--out]`: read metrics.jsonl and eval.json, draw, say where."""
    run = Path(run_dir)
    check_lookup(run, "run directory")
    if not run.is_dir():
        raise PlotError(f"{run} is not a run directory (it does not exist or is a file). "
                        f"Point `jepa plot` at the folder a run wrote, out_dir/name (e.g. "
                        f"runs/quickstart), which holds metrics.jsonl.")
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise PlotError(f"run directory {run} has no metrics.jsonl, so there is nothing to "
                        f"plot. A run writes it from its first step (`jepa run RECIPE`); check "
                        f"that this is the run's folder (out_dir/name).")
    skipped: list[str] = []
    series = read_metrics(metrics, skipped)
    for note in skipped:
        console.print(f"note: left out {note}", soft_wrap=True, markup=False)
    if not series:
        raise PlotError(f"{metrics} holds no rows with a step and numbers, so there is nothing "
                        f"to plot. The run may have stopped before its first step; train it "
                        f"(`jepa run RECIPE --resume auto`) and plot again.")
    eval_json = run / "eval.json"
    bars = probe_results(eval_json) if eval_json.is_file() else []
    panels = choose_panels(series, bars)
    target = Path(out) if out else run / "plot.png"
    if not target.parent.is_dir():
        raise PlotError(f"cannot write {target}: folder {target.parent} does not exist; "
                        f"create it or choose another --out.")
    last = max(max(steps) for steps, _ in series.values())
    draw(series, bars, panels, f"{run.name}: {last} steps", target)
    left_out = [] if bars else ["probe results (no eval.json)" if not eval_json.is_file()
                                else "probe results (eval.json has none)"]
    console.print(f"wrote {target} ({len(panels)} panels: "
                  f"{', '.join(p.title for p in panels)})", soft_wrap=True, markup=False)
    if left_out:
        console.print(f"left out: {', '.join(left_out)}", soft_wrap=True, markup=False)
    return 0
