"""`jepa eval`: probes on frozen features of a trained run, with baselines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import load_bench

from jepa_core.commands.evaluate import eval_indices, headline, knn_accuracy
from jepa_core.runtime.trainer import train

# Two cheap protocols: enough to see the table, the notes and eval.json.
FAST = [{"name": "knn"}, {"name": "linear", "epochs": 2, "features": ["pooled"]}]
FAST_ARG = "eval.protocols=[knn, {name: linear, epochs: 2, features: [pooled]}]"


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
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], 3, 10) > 0.95
    noise = torch.randn(300, 16, generator=g)
    assert knn_accuracy(noise[:200], y[:200], noise[200:], y[200:], 3, 10) < 0.6


@pytest.mark.slow  # trains, then evaluates (~23 s here)
def test_eval_command_on_a_run_directory(tiny_dict):
    tiny_dict["train"]["max_steps"] = 2
    tiny_dict["eval"] = {"after_train": False, "max_images": 40, "protocols": FAST}
    from jepa_core.plugins import make_plugin_manager
    from jepa_core.recipe import recipe_from_dict

    registry = make_plugin_manager()
    run = train(recipe_from_dict(tiny_dict, registry, "t"), registry)
    # probed on other data: switching the data source by name drops synthetic's own keys
    out = subprocess.run([sys.executable, "-m", "jepa_core", "eval", str(run.run_dir),
                          "data.name=digits"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for row in ("trained target encoder", "random init", "raw pixels", "digits"):
        assert row in out.stdout
    assert ("note: data.name=digits: the data section starts again from the defaults of "
            "data_source 'digits'; dropped the keys it does not have (from 'synthetic'): "
            "num_images") in out.stdout
    missing = subprocess.run([sys.executable, "-m", "jepa_core", "eval", str(run.run_dir / "x")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "neither a run directory nor a checkpoint" in missing.stderr


def test_probe_margin_report_is_trained_minus_random():
    bench = load_bench("probe_margin")
    runs = [{"trained target encoder": {"linear_probe": 0.95, "knn": 0.80},
             "random init": {"linear_probe": 0.93, "knn": 0.60}},
            {"trained target encoder": {"linear_probe": 0.94, "knn": 0.70},
             "random init": {"linear_probe": 0.93, "knn": 0.65}}]
    gaps = bench.margins(runs)
    assert gaps["linear_probe"] == pytest.approx([2.0, 1.0])
    assert gaps["knn"] == pytest.approx([20.0, 5.0])
    text = bench.report([0, 1], runs)
    assert "linear +1.5 ± 0.7, kNN +12.5 ± 10.6" in text
    assert "+20.0" in text and "+2.0" in text


@pytest.mark.slow  # trains several seeds (~50 s here)
def test_probe_margin_bench_trains_each_seed(tmp_path):
    """The bench really runs `jepa run` once per seed, and different seeds differ."""
    out = subprocess.run(
        [sys.executable, "bench/probe_margin.py", "recipes/quickstart.yaml", "train.max_steps=2",
         "eval.max_images=60", FAST_ARG, "--seeds", "0", "1",
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.strip().startswith(("0 |", "1 |"))]
    assert len(rows) == 2, out.stdout
    assert "margin over 2 seed(s)" in out.stdout
    evals = [headline(json.loads((tmp_path / f"margin-seed{s}" / "eval.json").read_text()))
             for s in (0, 1)]
    assert evals[0]["random init"] != evals[1]["random init"]  # init follows the seed


def test_probe_margin_bench_reports_a_failed_run(tmp_path):
    out = subprocess.run(
        [sys.executable, "bench/probe_margin.py", "recipes/quickstart.yaml", "optim.lr=-1",
         "--seeds", "0", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "seed 0:" in out.stderr and "optim.lr" in out.stderr


def _noise_run(tmp_path, tiny_dict, classes=4, per_class=12, corrupt=0, protocols=FAST,
               **data):
    """A tiny run trained for one step on random-noise images in class folders: nothing in
    them tells the classes apart."""
    from PIL import Image

    from jepa_core.plugins import make_plugin_manager
    from jepa_core.recipe import recipe_from_dict

    root = tmp_path / "noise"
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / f"c{c}" / f"{i:02d}.png")
        for i in range(corrupt):
            (root / f"c{c}" / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    tiny_dict["data"] = {"name": "image_folder", "root": str(root), **data}
    tiny_dict["train"]["max_steps"] = 1
    tiny_dict["eval"] = {"after_train": False, "protocols": protocols}
    registry = make_plugin_manager()
    return train(recipe_from_dict(tiny_dict, registry, "t"), registry), root


def _console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=200, highlight=False)


def test_image_folder_probes_are_tested_on_held_out_images(tmp_path, tiny_dict):
    """48 noise images: tested on the training images, kNN is 100% for every encoder."""
    from jepa_core.commands.evaluate import evaluate_run

    run, root = _noise_run(tmp_path, tiny_dict, val_fraction=0.5)
    console = _console()
    results = evaluate_run(run, console)
    saved = json.loads((run.run_dir / "eval.json").read_text())
    assert saved == results
    for name in ("trained target encoder", "random init", "raw pixels"):
        assert headline(saved)[name]["knn"] < 0.8, saved  # chance is 25%
    data = saved["data"]
    assert data["test"] == {"split": f"held-out 50% of root {root} (split_seed 0): 24 images",
                            "images": 24, "skipped": 0}
    assert data["train"]["split"].startswith(f"root {root} minus the held-out 50%")
    assert data["skipped_images"] == 0
    printed = console.file.getvalue()
    assert f"tested on all of held-out 50% of root {root} (split_seed 0): 24 images" in printed


def test_unreadable_images_are_skipped_and_counted_in_evaluation(tmp_path, tiny_dict):
    from jepa_core.commands.evaluate import evaluate_run

    # 5 readable probe-training images: kNN's k must not exceed them (k=20 is refused)
    run, root = _noise_run(tmp_path, tiny_dict, classes=2, per_class=6, corrupt=1,
                           val_fraction=0.5, protocols=[{"name": "knn", "k": 3}, FAST[1]])
    assert run.skipped_samples >= 1  # training skipped what it drew of them
    console = _console()
    data = evaluate_run(run, console)["data"]
    assert data["skipped_images"] == 2  # each in one of the two splits, never in both
    assert data["train"]["skipped"] + data["test"]["skipped"] == 2
    assert data["train"]["images"] + data["test"]["images"] == 12
    assert "2 unreadable image(s) skipped" in console.file.getvalue()
    from jepa_core.commands.evaluate import eval_command  # what `jepa eval RUN_DIR` runs

    console = _console()
    assert eval_command(str(run.run_dir), run.registry, [], True, console) == 0
    assert "2 unreadable image(s) skipped" in console.file.getvalue()
    assert f"held-out 50% of root {root}" in console.file.getvalue()


def test_digits_results_say_which_split(tiny_dict):
    from jepa_core.commands.evaluate import evaluate_run
    from jepa_core.plugins import make_plugin_manager
    from jepa_core.recipe import recipe_from_dict

    tiny_dict["data"] = {"name": "digits"}
    tiny_dict["train"]["max_steps"] = 1
    tiny_dict["eval"] = {"after_train": False, "max_images": 40, "protocols": FAST}
    registry = make_plugin_manager()
    run = train(recipe_from_dict(tiny_dict, registry, "t"), registry)
    data = evaluate_run(run, _console())["data"]
    assert data["test"]["split"] == "digits test split (20% of 1797, split_seed 0): 359 images"
    assert data["test"]["images"] == 40


# -- what the end of a run says -------------------------------------------------------------
def _results(trained, random, pixels, tested=359):
    return {"trained target encoder": dict(zip(("linear_probe", "knn"), trained, strict=True)),
            "random init": dict(zip(("linear_probe", "knn"), random, strict=True)),
            "raw pixels": dict(zip(("linear_probe", "knn"), pixels, strict=True)),
            "data": {"test": {"images": tested}}}


def test_the_comparison_is_worked_out_from_the_figures():
    from jepa_core.commands.evaluate import comparison_notes

    learned = comparison_notes(_results((0.944, 0.794), (0.905, 0.733), (0.955, 0.955)),
                               "digits")
    assert "+3.9 points linear, +6.1 kNN" in learned[0]
    assert "training added to what the architecture gives untrained" in learned[0]
    assert "one test image is 0.28 points" in learned[0]
    assert "raw pixels: +1.1 points linear, +16.1 kNN" in learned[1]
    assert "8x8 digits" in learned[1] and "strong baseline" in learned[1]
    mixed = comparison_notes(_results((0.877, 0.638), (0.880, 0.627), (0.939, 0.939)))
    assert "-0.3 points linear, +1.1 kNN" in mixed[0] and "helped the kNN probe" in mixed[0]
    assert "8x8 digits" not in mixed[1]
    none = comparison_notes(_results((0.5, 0.4), (0.6, 0.5), (0.3, 0.2)))
    assert "added nothing measurable" in none[0]
    assert "-10.0 points linear, -10.0 kNN" in none[0]
    assert "raw pixels: -20.0 points linear, -20.0 kNN" in none[1]
    ahead = comparison_notes(_results((0.9, 0.8), (0.6, 0.5), (0.7, 0.6)))
    assert "beat the pixels on both probes" in ahead[1] and "strong baseline" not in ahead[1]


def _table_results(features, protocols=("knn", "linear", "lowshot", "rankme")):
    rows = []
    for f in features:
        for p in protocols:
            settings = (("1% of labels", "5 per class") if p == "lowshot"
                        else ("k=20",) if p == "knn" else ("",))
            for what in settings:
                r = {"features": f, "protocol": p, "feature_kind": "pooled", "setting": what}
                r.update({"value": 34.7} if p == "rankme" else
                         {"accuracy": {"test": 0.293}, "std": {"test": 0.037}})
                rows.append(r)
    split = "digits train split (80% of 1797, split_seed 0): 1438 images"
    return {"results": rows, "data": {
        "train": {"split": split, "images": 1438, "skipped": 0},
        "test": {"split": "some test split", "images": 359, "skipped": 0},
        "skipped_images": 0}}


@pytest.mark.parametrize("features", [
    ["trained target encoder", "random init", "raw pixels"],
    ["trained target encoder", "random init", "raw pixels", "single frame (target encoder)"]])
def test_the_table_headers_fit_80_columns_on_one_line(features):
    """Before: "trained target encoder" wrapped onto 3 lines at the default 80 columns."""
    import io

    from rich.console import Console

    from jepa_core.commands.evaluate import print_results

    out = io.StringIO()
    print_results(_table_results(features), Console(file=out, width=80), "run: step 440")
    header = out.getvalue().splitlines()[1]
    for name in ("protocol", "kind", "setting", "trained", "random init", "raw pixels"):
        assert name in header, out.getvalue()
    assert ("single frame" in header) == (len(features) == 4)
    text = " ".join(out.getvalue().split())
    assert "columns: trained = trained target encoder" in text
    # the split's own count is not said twice; a subset says how many of the split
    assert ("probes fit on all of digits train split (80% of 1797, split_seed 0): 1438 "
            "images") in text
    assert "tested on 359 images of some test split" in text


def test_the_footer_explains_only_the_protocols_that_ran():
    """Before: a LeJEPA run (knn, linear, rankme) was told how attentive and low-shot
    results are read."""
    import io

    from rich.console import Console

    from jepa_core.commands.evaluate import print_results

    out = io.StringIO()
    print_results(_table_results(["trained target encoder"], ("knn", "linear", "rankme")),
                  Console(file=out, width=300), "run")
    text = out.getvalue()
    assert "linear: the head best on the held-out part" in text and "rankme:" in text
    assert "attentive" not in text and "low" not in text


def test_each_closing_sentence_follows_from_its_figures():
    """Every branch: trained vs random init, raw pixels vs trained, trained vs single frame,
    each ahead on both probes, behind on both, or mixed (naming which probe went which way);
    "8x8 digits" only for the digits data."""
    from jepa_core.commands.evaluate import comparison_notes

    def notes(trained, random, pixels, single=None, data=""):
        results = _results(trained, random, pixels)
        if single is not None:
            results["single frame (target encoder)"] = dict(
                zip(("linear_probe", "knn"), single, strict=True))
        return [" ".join(n.split()) for n in comparison_notes(results, data)]

    # the video run of issue 29: pixels far behind on linear, ahead on kNN
    video = notes((0.9, 0.4), (0.5, 0.3), (0.302, 0.759), (0.8, 0.5), "moving_digits")
    assert "raw pixels: -59.8 points linear, +35.9 kNN" in video[1]
    assert ("Mixed: the encoder's features beat the pixels on the linear probe, the pixels "
            "stay ahead on the kNN one") in video[1]
    assert "8x8 digits" not in video[1] and "strong baseline" not in video[1]
    assert "training added to what the architecture gives untrained" in video[0]
    assert "mixed: the clips' motion helps the linear probe and not the kNN one" in video[2]
    # pixels ahead on both: a strong baseline; digits named only for the digits data
    both = notes((0.5, 0.4), (0.4, 0.3), (0.9, 0.9), data="digits")
    assert "pixels are ahead on both probes" in both[1] and "On 8x8 digits" in both[1]
    assert "On 8x8 digits" not in notes((0.5, 0.4), (0.4, 0.3), (0.9, 0.9))[1]
    # pixels behind on both; and ahead on one, level on the other
    assert "beat the pixels on both probes" in notes((0.9, 0.9), (0.4, 0.3), (0.5, 0.5))[1]
    level = notes((0.5, 0.4), (0.4, 0.3), (0.6, 0.4))[1]
    assert "ahead on the linear probe, level on the other" in level
    # training: ahead on both, behind on both, mixed both ways
    assert "added nothing measurable" in notes((0.3, 0.3), (0.5, 0.5), (0.1, 0.1))[0]
    mixed = notes((0.6, 0.2), (0.5, 0.3), (0.1, 0.1))[0]
    assert "mixed: training helped the linear probe, and cost the kNN one" in mixed
    mixed = notes((0.4, 0.4), (0.5, 0.3), (0.1, 0.1))[0]
    assert "mixed: training helped the kNN probe, and cost the linear one" in mixed
    # motion: adds to both, adds nothing
    assert "motion adds to both probes" in notes((0.9, 0.8), (0.5, 0.4), (0.1, 0.1),
                                                  (0.3, 0.2))[2]
    assert "motion adds nothing measurable" in notes((0.3, 0.2), (0.1, 0.1), (0.1, 0.1),
                                                      (0.9, 0.8))[2]


@pytest.mark.slow  # a CLI training run (~35 s here)
def test_evaluation_after_training_shows_progress_notes_and_outputs(tmp_path):
    """`jepa run` of the quickstart, cut short: progress of the evaluation phases (plain
    lines: the output is a pipe), what the table shows, and where the outputs went."""
    out = subprocess.run(
        [sys.executable, "-m", "jepa_core", "run", "recipes/quickstart.yaml",
         f"out_dir={tmp_path}", "train.max_steps=2", "eval.max_images=60",
         FAST_ARG], capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for phase in ("extracting features of the probe-training images: 60 images",
                  "extracting features of the test images: 60 images",
                  "on the trained target encoder features (pooled", "linear probe (",
                  "on the random init features (pooled", "on the raw pixels features ("):
        assert phase in text, text
    saved = json.loads((tmp_path / "quickstart" / "eval.json").read_text())
    rows = headline(saved)
    t, r = rows["trained target encoder"], rows["random init"]
    assert (f"{100 * (t['linear_probe'] - r['linear_probe']):+.1f} points linear, "
            f"{100 * (t['knn'] - r['knn']):+.1f} kNN") in text
    assert f"run directory: {tmp_path / 'quickstart'}/" in text
    for output in ("recipe.yaml", "checkpoints/    1 checkpoint(s): step_000000002.pt",
                   "metrics.jsonl   2 row(s)", "eval.json"):
        assert output in text, text
    # where the time went: every protocol on every set of features, timed and printed
    timings = saved["timings"]
    assert set(timings["extract_s"]) == {"train", "test"}
    runs = {(t["protocol"], t["features"]) for t in timings["protocols"]}
    assert runs == {(p, f) for p in ("knn", "linear")
                    for f in ("trained target encoder", "random init", "raw pixels")}
    assert all(t["seconds"] >= 0 for t in timings["protocols"])
    assert "evaluation time: " in text and "linear " in text.split("evaluation time: ")[1]
    assert re.search(r"time: training \d+ s, evaluation \d+ s \(\d+% of \d+ s\)", text), text


def test_the_time_split_sums_extraction_and_protocols_largest_first():
    from jepa_core.commands.evaluate import time_split

    timings = {"extract_s": {"train": 1.5, "test": 0.5},
               "protocols": [{"protocol": "knn", "features": "a", "seconds": 0.25},
                             {"protocol": "linear", "features": "a", "seconds": 3.0},
                             {"protocol": "linear", "features": "b", "seconds": 1.0}]}
    assert time_split(timings) == ("evaluation time: 6.2 s: extraction 2.0 s; linear 4.0 s "
                                   "(a 3.0, b 1.0); knn 0.2 s (a 0.2)")
    assert time_split(None) == "" and time_split({}) == ""


def _flat_folder(root, n=20):
    from PIL import Image

    root.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = torch.randint(0, 256, (24, 24, 3), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / f"img{i:02d}.png")
    return root


@pytest.mark.slow  # a CLI training run (~45 s here)
def test_a_flat_unlabelled_folder_trains_and_the_evaluation_says_it_needs_labels(tmp_path):
    root = _flat_folder(tmp_path / "flat")
    out = subprocess.run(
        [sys.executable, "-m", "jepa_core", "run", "recipes/quickstart.yaml",
         f"out_dir={tmp_path / 'runs'}", f"data={{name: image_folder, root: {root}}}",
         "train.max_steps=2", "train.global_batch_size=8"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "evaluation skipped: the probes need labels" in text, text
    assert "Traceback" not in out.stdout + out.stderr
    run_dir = tmp_path / "runs" / "quickstart"
    assert (run_dir / "checkpoints" / "step_000000002.pt").is_file()
    assert not (run_dir / "eval.json").exists()
    probe = subprocess.run([sys.executable, "-m", "jepa_core", "eval", str(run_dir)],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 1 and "Traceback" not in probe.stderr
    assert "the probes need labels" in " ".join(probe.stderr.replace("│", " ").split())


def test_progress_lines_give_the_rate_and_the_time_left(monkeypatch):
    import io

    from rich.console import Console

    from jepa_core.runtime import progress, runlog

    clock = iter([0.0, 12.0, 20.0])
    monkeypatch.setattr(runlog, "now", lambda: next(clock))
    out = io.StringIO()
    with progress.Ticker(Console(file=out, width=200), "extracting", 1000, "images") as t:
        t.advance(300)  # at 12 s: 25 images/s, 700 left
    text = out.getvalue()
    assert "extracting: 300/1000 images (12 s, 25 images/s, ETA 28 s)" in text
    assert "extracting: done in 20 s (15 images/s)" in text


def test_progress_rates_under_one_a_second_and_the_eta_from_the_recent_rate(monkeypatch):
    import io

    from rich.console import Console

    from jepa_core.runtime import progress, runlog

    # 100 epochs in 10 s, then 38 in 30 s: slower, so the ETA follows the recent rate
    clock = iter([0.0, 10.0, 40.0, 60.0])
    monkeypatch.setattr(runlog, "now", lambda: next(clock))
    out = io.StringIO()
    with progress.Ticker(Console(file=out, width=200), "linear probe", 200, "epochs") as t:
        t.advance(100)
        t.advance(38)  # at 40 s: 38 in the last 30 s, 62 left: 49 s
    text = out.getvalue()
    assert "linear probe: 100/200 epochs (10 s, 10 epochs/s, ETA 10 s)" in text
    assert "linear probe: 138/200 epochs (40 s, 3 epochs/s, ETA 49 s)" in text
    slow = progress.Ticker(None, "attentive probe", 10, "epochs")
    slow._t0, slow.done = 0.0, 3
    assert slow.rate(10.0) == "3.3 s per epoch"  # not "0 epochs/s"


def test_a_phase_read_from_the_cache_says_so_rather_than_a_rate(monkeypatch):
    import io

    from rich.console import Console

    from jepa_core.runtime import progress, runlog

    clock = iter([0.0, 0.002, 0.004, 0.0, 0.001, 3.0, 5.0])
    monkeypatch.setattr(runlog, "now", lambda: next(clock))
    out = io.StringIO()
    with progress.Ticker(Console(file=out, width=200), "extracting", 900, "images") as t:
        t.advance(900, cached=True)
    assert "extracting: read from the cache (900 images, 0 s)" in out.getvalue()
    assert "images/s" not in out.getvalue()
    out = io.StringIO()
    with progress.Ticker(Console(file=out, width=200), "extracting", 900, "images") as t:
        t.advance(600, cached=True)
        t.advance(300)  # computed in 5 s
    assert "extracting: done in 5 s (60 images/s; 600 read from the cache)" in out.getvalue()


def test_protocol_progress_names_the_features_and_the_kinds(monkeypatch):
    """The core names the set of features and its kinds in any protocol's progress label
    (the same protocol runs on the trained, random-init and pixel features in turn)."""
    import io

    from rich.console import Console

    from jepa_core.evaluation.protocols import run_protocols
    from jepa_core.interfaces import EvalContext
    from jepa_core.plugins import ComponentSpec
    from jepa_core.runtime.progress import Ticker

    class Counting:  # a third-party protocol: its own label, nothing about the features
        feature_kinds = ("pooled", "last4")

        def run(self, features, context):
            with context.progress("my probe", 2, "fits") as t:
                t.advance(2)
            return [{"protocol": "mine", "feature_kind": k, "value": 1.0} for k in features]

    out = io.StringIO()
    console = Console(file=out, width=300)
    context = EvalContext(num_classes=2, seed=0, device="cpu", console=console,
                          ticker=lambda what, total, unit: Ticker(console, what, total, unit))
    spec = ComponentSpec("eval_protocol", "mine", dict, Counting, "tests", None, None)
    kinds = {"trained target encoder": ("pooled", "last4"), "raw pixels": ("pooled",)}
    results, failed, _ = run_protocols([("mine", spec, Counting())], list(kinds),
                                       lambda name: dict.fromkeys(kinds[name]), context)
    assert not failed and len(results) == 3
    text = out.getvalue()
    assert "my probe on the trained target encoder features (pooled, last4): 2 fits" in text
    assert "my probe on the raw pixels features (pooled): 2 fits" in text


def test_the_single_frame_baseline_gets_its_own_note():
    from jepa_core.commands.evaluate import comparison_notes

    results = _results((0.9, 0.8), (0.5, 0.4), (0.6, 0.5))
    assert not any("first frame" in n for n in comparison_notes(results))
    results["single frame (target encoder)"] = {"linear_probe": 0.3, "knn": 0.25}
    notes = [n for n in comparison_notes(results) if "first frame" in n]
    assert len(notes) == 1 and "+60.0 points linear, +55.0 kNN" in notes[0]


def test_probe_margin_lists_every_probe_as_mean_and_std_over_runs():
    bench = load_bench("probe_margin")

    def run(attentive, knn):
        return {"results": [
            {"features": "trained target encoder", "protocol": "attentive",
             "feature_kind": "tokens", "accuracy": {"val": 0.5, "test": attentive}},
            {"features": "random init", "protocol": "knn", "feature_kind": "pooled",
             "accuracy": {"test": knn}},
            {"features": "random init", "protocol": "rankme", "feature_kind": "pooled",
             "value": 20.0}]}

    lines = bench.every_probe([run(0.80, 0.40), run(0.90, 0.50)]).splitlines()
    assert lines[0].startswith("every probe over 2 run(s)")
    attentive = next(line for line in lines if "attentive" in line)
    assert "trained target encoder" in attentive and "85.0 ±  7.1" in attentive
    assert "45.0 ±  7.1" in next(line for line in lines if line.split()[0] == "knn")
    assert "20.0 ±  0.0" in next(line for line in lines if "rankme" in line)
