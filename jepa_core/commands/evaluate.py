"""`jepa eval`: the recipe's evaluation protocols on frozen features of a trained encoder.

The I-JEPA paper evaluates the target encoder, average-pooled over all patch tokens (no cls
token). For context, the same protocols run on a randomly initialised encoder of the same
architecture and on raw pixels, so "it learned something" is a measured statement. Features
are extracted once per encoder into a cache of shards (`jepa_core.evaluation`), resumable and
shared by every protocol; `--nproc N` extracts with N processes.

The probes are fit on the data source's training images and tested on its evaluation images
(`build(..., train=False)`: a validation folder, a held-out split); which ones, and how many
unreadable images were skipped, go into eval.json under "data".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from jepa_core.errors import RunError
from jepa_core.evaluation.features import encoder_extract, image_batches, pixel_extract
from jepa_core.evaluation.protocols import failure_error
from jepa_core.evaluation.runner import (
    PIXELS,
    RANDOM,
    SINGLE_FRAME,
    NoLabels,
    NoProtocols,
    eval_indices,
    evaluate,
    headline,
    no_labels_message,
)
from jepa_core.recipe import EvalConfig, recipe_from_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime import threads
from jepa_core.runtime.launch import worker_threads
from jepa_core.runtime.progress import Ticker
from jepa_core.runtime.rundir import check_lookup

__all__ = ["NoLabels", "eval_indices", "evaluate", "headline", "no_labels_message", "extract",
           "knn_accuracy", "comparison_notes", "print_results", "evaluate_run", "load_source",
           "eval_command", "write_eval_json", "failure_error", "time_split"]

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry


@torch.no_grad()
def extract(encoders: dict[str, torch.nn.Module], source: Any, indices: list[int],
            cfg: EvalConfig, device: torch.device, num_workers: int = 0,
            pixels: bool = False, ticker: Ticker | None = None
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """In memory, for small sets (the evaluation during training): {name: [n, D]
    patch-averaged features}, labels [n], and the unreadable images skipped. With `pixels`,
    also "raw pixels" (images pooled to at most 16x16, flattened)."""
    runs = {name: encoder_extract(model, ("pooled",), device) for name, model in encoders.items()}
    if pixels:
        runs[PIXELS] = pixel_extract(("pooled",), (1, 1))
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in runs}
    labels, skipped = [], 0
    for images, y, bad in image_batches(source, indices, cfg.batch_size, num_workers, ticker):
        skipped += bad
        if images is None:
            continue
        for name, run in runs.items():
            feats[name].append(run(images)["pooled"])
        labels.append(y)
    if not labels:
        raise RunError(f"none of the {len(indices)} evaluation images of "
                       f"{getattr(source, 'split', 'the data source')} could be read; "
                       f"check the files.")
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels), skipped


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, k: int,
                 temperature: float = 0.07) -> float:
    """In-memory weighted kNN (cosine, votes exp(sim / temperature)) on features centred by
    the training mean, for small sets; the `knn` protocol streams the cache instead."""
    mean = train_x.mean(0, keepdim=True)
    a, b = F.normalize(train_x - mean, dim=1), F.normalize(test_x - mean, dim=1)
    top, idx = (b @ a.T).topk(min(k, a.shape[0]), dim=1)
    votes = torch.zeros(b.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_y[idx], torch.exp(top.double() / temperature))
    return float((votes.argmax(1) == test_y).float().mean())


def _points(a: float, b: float) -> str:
    return f"{100 * (a - b):+.1f}"


PROBES = {"linear_probe": "linear", "knn": "kNN"}


def _gaps(a: dict, b: dict) -> str:
    """"+3.9 points linear, +6.1 kNN": a's figures less b's."""
    return (f"{_points(a['linear_probe'], b['linear_probe'])} points linear, "
            f"{_points(a['knn'], b['knn'])} kNN")


def _ahead(a: dict, b: dict) -> tuple[list[str], list[str]]:
    """(probes where a is ahead of b, probes where it is behind); a tie is in neither."""
    return ([name for key, name in PROBES.items() if a[key] > b[key]],
            [name for key, name in PROBES.items() if a[key] < b[key]])


def _probes(names: list[str]) -> str:
    return "both probes" if len(names) == 2 else f"the {names[0]} probe"


def _training_verdict(t: dict, random: dict) -> str:
    better, worse = _ahead(t, random)
    if len(better) == 2:
        return "training added to what the architecture gives untrained"
    if not better:
        return ("training added nothing measurable; look for a collapse warning above, and "
                "try a lower optim.lr or more train.epochs")
    lost = f", and cost the {worse[0]} one" if worse else f", the {_other(better)} one level"
    return f"mixed: training helped the {better[0]} probe{lost}"


def _other(names: list[str]) -> str:
    return next(n for n in PROBES.values() if n not in names)


def _pixels_verdict(pixels: dict, t: dict, data_name: str) -> str:
    ahead, behind = _ahead(pixels, t)
    if not ahead and not behind:
        return ": level with the pixels on both probes."
    if not ahead:
        level = f" (level on the {_other(behind)} probe)" if len(behind) == 1 else ""
        return (f": the encoder's features beat the pixels on "
                f"{_probes(behind)}{level}.")
    data = "8x8 digits" if data_name == "digits" else "this data"
    easy = (f"On {data} the pixels themselves separate the classes well enough for "
            f"{_probes(ahead)}: they say how easy the data is, not how good the encoder is.")
    if len(ahead) == 2:
        return (f". The pixels are ahead on both probes: a strong baseline that a short "
                f"self-supervised run need not beat. {easy}")
    if behind:
        return (f". Mixed: the encoder's features beat the pixels on the {behind[0]} probe, "
                f"the pixels stay ahead on the {ahead[0]} one. {easy}")
    return f". The pixels are ahead on the {ahead[0]} probe, level on the other. {easy}"


def _motion_verdict(t: dict, single: dict) -> str:
    better, worse = _ahead(t, single)
    if len(better) == 2:
        return "the clips' motion adds to both probes"
    if not better:
        return ("the clips' motion adds nothing measurable: the first frame alone does as well "
                "or better on both probes")
    rest = f" and not the {worse[0]} one" if worse else f", the {_other(better)} one level"
    return f"mixed: the clips' motion helps the {better[0]} probe{rest}"


def comparison_notes(results: dict, data_name: str = "") -> list[str]:
    """What the table shows, worked out from its figures: what training added over the same
    architecture at random init (the comparison that measures training), where raw pixels
    stand, and for clips what the motion adds; each says which probe went which way.
    `results`: a format-2 eval.json, or {features: {"linear_probe", "knn"}}."""
    rows = headline(results) if "results" in results else results
    trained = next((k for k in rows if k.startswith("trained ")), None)
    if trained is None:
        return []
    t = rows[trained]
    tested = results.get("data", {}).get("test", {}).get("images", 0)
    grain = f" (one test image is {100 / tested:.2g} points)" if tested else ""
    notes = []
    random = rows.get(RANDOM)
    if random is not None:
        notes.append(f"{trained} vs random init (same architecture and seed, never trained): "
                     f"{_gaps(t, random)}{grain}: {_training_verdict(t, random)}. This is the "
                     f"comparison that shows what training learned.")
    pixels = rows.get(PIXELS)
    if pixels is not None:
        notes.append(f"raw pixels: {_gaps(pixels, t)} against the {trained}"
                     f"{_pixels_verdict(pixels, t, data_name)}")
    single = next((k for k in rows if k.startswith(SINGLE_FRAME)), None)
    if single is not None:  # clips only: how much of the figure needs the motion
        s = rows[single]
        notes.append(f"{trained} vs {single} (the same weights fed each clip's first frame "
                     f"repeated): {_gaps(t, s)}: {_motion_verdict(t, s)}.")
    return notes


def setting(result: dict) -> str:
    """The result's own "setting" (a few words telling its row apart), if it gives one."""
    return str(result.get("setting", ""))


def cell(result: dict) -> str:
    """A result's figure: test accuracy in % (± std over splits), or a diagnostic's value."""
    if "value" in result:
        return f"{result['value']:.1f}"
    acc = 100 * result["accuracy"]["test"]
    std = result.get("std", {}).get("test")
    return f"{acc:.1f}% ± {100 * std:.1f}" if std is not None else f"{acc:.1f}%"


def table_rows(results: dict) -> tuple[list[str], list[tuple[str, str, str, dict]]]:
    """(feature names, [(protocol, feature kind, setting, {features: cell})]) of eval.json."""
    names: list[str] = []
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for r in results.get("results", []):
        if r["features"] not in names:
            names.append(r["features"])
        key = (r["protocol"], r["feature_kind"], setting(r))
        rows.setdefault(key, {})[r["features"]] = cell(r)
    return names, [(*k, v) for k, v in rows.items()]


def legend(names: list[str], protocols: list[str]) -> str:
    """What the table's figures are, for the protocols that ran only, and the full names of
    the columns shortened by `column_name`."""
    parts = []
    heads = [p for p in ("linear", "attentive") if p in protocols]
    if heads:
        parts.append(f"{', '.join(heads)}: the head best on the held-out part of the training "
                     f"images")
    if "lowshot" in protocols:
        parts.append("lowshot: mean ± std over splits")
    if "rankme" in protocols:
        parts.append("rankme: effective rank of the features, not an accuracy")
    text = "accuracy on the test images" + (f" ({'; '.join(parts)})" if parts else "")
    renamed = [f"{column_name(n)} = {n}" for n in names if column_name(n) != n]
    return text + (f"; columns: {', '.join(renamed)}" if renamed else "")


def column_name(features: str) -> str:
    """A short column header for a set of features ("trained", "single frame"), so that
    the table fits 80 columns; the full names are listed under the table."""
    if features.startswith("trained "):
        return "trained"
    return features.split(" (")[0]


def side_line(verb: str, side: dict) -> str:
    """"probes fit on 1438 images of SPLIT", or "on all of SPLIT" where the split's own
    description already gives that count ("...: 1438 images"): no count said twice."""
    n, split = side["images"], side["split"]
    if re.search(rf"\b{n} (images|clips)\b", split):
        return f"{verb} all of {split}"
    return f"{verb} {n} images of {split}"


def print_results(results: dict, console: Any, title: str, data_name: str = "") -> None:
    """The protocols' table (one row per protocol setting, one column per set of features),
    where the images came from, and what the figures say."""
    from rich import box
    from rich.table import Table

    names, rows = table_rows(results)
    # no outer border: with a column per set of features (4 for clips) it fits 80 columns
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  collapse_padding=True, pad_edge=False)
    for col in ("protocol", "kind", "setting"):
        table.add_column(col)
    for name in names:
        table.add_column(column_name(name), justify="right", no_wrap=True)
    for proto, kind, what, cells in rows:
        table.add_row(proto, kind, what, *(cells.get(n, "-") for n in names))
    console.print(table)
    console.print(legend(names, [proto for proto, _, _, _ in rows]), soft_wrap=True)
    data = results.get("data")
    if data:  # soft_wrap: paths stay whole, to copy
        train, test = data["train"], data["test"]
        console.print(side_line("probes fit on", train), soft_wrap=True)
        console.print(side_line("tested on", test), soft_wrap=True)
        if data["skipped_images"]:
            console.print(f"[yellow]note:[/yellow] {data['skipped_images']} unreadable image(s) "
                          f"skipped ({train['skipped']} probe-training, {test['skipped']} "
                          f"test)", soft_wrap=True)
    for note in comparison_notes(results, data_name):
        console.print(f"- {note}", markup=False)
    split = time_split(results.get("timings"))
    if split:
        console.print(split, soft_wrap=True, markup=False)


def time_split(timings: dict | None) -> str:
    """Where the evaluation's time went, from eval.json's "timings": extraction, then each
    protocol with its seconds per set of features, largest first; "" without timings."""
    if not timings:
        return ""
    per: dict[str, dict[str, float]] = {}
    for t in timings.get("protocols", []):
        per.setdefault(t["protocol"], {})[t["features"]] = t["seconds"]
    extract = sum(timings.get("extract_s", {}).values())
    total = extract + sum(sum(v.values()) for v in per.values())
    parts = [f"extraction {extract:.1f} s"]
    for name, by in sorted(per.items(), key=lambda kv: -sum(kv[1].values())):
        sets = ", ".join(f"{f} {s:.1f}" for f, s in by.items())
        parts.append(f"{name} {sum(by.values()):.1f} s ({sets})")
    return f"evaluation time: {total:.1f} s: " + "; ".join(parts)


def evaluate_run(run: Any, console: Any = None) -> dict | None:
    """The evaluation after training: protocols, eval.json, the table; returns eval.json's
    dict (the caller raises `failure_error` of it once the run's outputs are listed). An
    unlabelled data source skips it with a note (None): the training itself succeeded."""
    from rich.console import Console

    console = console or Console(highlight=False)
    origin = {"run_dir": str(run.run_dir), "step": run.step, "checkpoint": "end of training"}
    try:
        results = evaluate(run.recipe, run.registry, run.target_state, run.device,
                           module=run.method.eval_module, console=console, origin=origin)
    except (NoLabels, NoProtocols) as exc:
        console.print(f"[yellow]note:[/yellow] evaluation skipped: {exc}", soft_wrap=True)
        return None
    assert results is not None  # one process: rank 0
    write_eval_json(run.run_dir / "eval.json", results, console)
    print_results(results, console, f"{run.recipe.name}: evaluation after {run.step} steps",
                  run.recipe.data.name)
    return results


def write_eval_json(path: Path, results: dict, console: Any) -> str:
    """Write eval.json atomically (a torn file would hide the one before); where the results
    went, or, when the write failed (a note says why), that they are in the printed table."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        console.print(f"[yellow]note:[/yellow] could not write {path}: "
                      f"{exc.strerror or exc}", soft_wrap=True)
        return f"the table above ({path} could not be written)"
    return str(path)


def load_source(source: str) -> tuple[Path, dict]:
    """(path, state) of a checkpoint file, or of the newest readable checkpoint of a run
    directory (falling back past unusable ones, as resume does)."""
    path = Path(source)
    check_lookup(path, "run directory or checkpoint")
    if path.is_dir():
        found = ckpt.newest_readable(path / "checkpoints") or ckpt.newest_readable(path)
        if not found:
            raise RunError(f"{path} holds no checkpoints (looked in {path}/checkpoints).")
        return found
    if not path.exists():
        raise RunError(f"{path} is neither a run directory nor a checkpoint file.")
    return path, ckpt.load(path)


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def spawn_extractors(argv: list[str], n: int) -> list[subprocess.Popen]:
    """Processes 1..n-1 of an `--nproc n` evaluation: the same command, each told its rank, to
    extract its share of the shards (torch threads split between the processes, unless the
    user set OMP_NUM_THREADS: then each process takes that many)."""
    share = str(worker_threads(n, os.cpu_count()))
    env = dict(os.environ)
    ours = threads.set_default("OMP_NUM_THREADS", share, env)
    procs = []
    for rank in range(1, n):
        env.update(RANK=str(rank), WORLD_SIZE=str(n), LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, "-m", "jepa_core", *argv], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    if ours:
        torch.set_num_threads(int(share))
    return procs


def wait_extractors(procs: list[subprocess.Popen]) -> None:
    """Wait for the other extracting processes; RunError with the first one's error."""
    for rank, proc in enumerate(procs, start=1):
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RunError(f"extracting process {rank} of {len(procs) + 1} failed (exit "
                           f"{proc.returncode}): {err.strip()[-2000:]}. The shards already "
                           f"written stay; the same command resumes.")


def eval_command(source: str, registry: Registry, overrides: list[str], baseline: bool,
                 console: Any, nproc: int | None = None, argv: list[str] | None = None) -> int:
    """`jepa eval SOURCE [overrides]`: evaluate, write eval.json beside the run's checkpoints
    (or the checkpoint file), print the table. With nproc > 1, `argv` (this command's own
    arguments) starts the other extracting processes."""
    path, state = load_source(source)
    notes: list[str] = []
    try:
        recipe = recipe_from_dict(state["recipe"], registry, f"recipe saved in {path}",
                                  overrides, notes)
    finally:  # a component switched by an override (see jepa_core.recipe.switch_component)
        from rich.markup import escape

        for note in notes:
            console.print(f"[yellow]note:[/yellow] {escape(note)}")
    rank, world = _rank_world()
    procs = []
    if nproc and nproc > 1 and world == 1:
        procs, rank, world = spawn_extractors(argv or [], nproc), 0, nproc
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local % max(1, torch.cuda.device_count())}"
                          if torch.cuda.is_available() else "cpu")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    cache_root = (recipe.eval.cache_dir if recipe.eval.cache_dir is not None
                  else run_dir / "features")
    module = state["eval_module"]
    origin = {"run_dir": str(run_dir), "checkpoint": str(path), "step": state["step"]}
    try:
        results = evaluate(recipe, registry, state["modules"][module], device, baseline, module,
                           console=console if rank == 0 else None, cache_root=cache_root,
                           origin=origin, rank=rank, world=world,
                           before_wait=(lambda: wait_extractors(procs)) if procs else None)
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    if results is None:  # another rank's share is done; rank 0 reports
        return 0
    written = write_eval_json(run_dir / "eval.json", results, console)
    print_results(results, console, f"{path}: step {state['step']}", recipe.data.name)
    failure = failure_error(results, written)
    if failure is not None:
        raise failure
    return 0
