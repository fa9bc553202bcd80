"""The feature cache of `jepa eval`: a killed extraction resumes where it stopped and gives
the same numbers; `--nproc 2` extracts the same features as one process."""

from __future__ import annotations

import io
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jepa_core.evaluation import cache, sharing
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict

PROTOCOLS = "eval.protocols=[{name: knn, k: 5}, {name: linear, epochs: 2, features: [pooled]}]"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import train_tiny

    return train_tiny(tmp_path_factory)


def jepa_eval(run_dir: Path, cache: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "jepa_core", "eval", str(run_dir), "data.name=digits",
           f"eval.cache_dir={cache}", PROTOCOLS, *extra]
    env = {**os.environ, "COLUMNS": "200"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def shards(cache: Path) -> dict[str, Path]:
    return {str(p.relative_to(cache)): p for p in sorted(cache.rglob("*.pt"))}


def results_of(run_dir: Path) -> list:
    return json.loads((run_dir / "eval.json").read_text())["results"]


@pytest.mark.slow
def test_a_killed_extraction_resumes_and_gives_the_same_numbers(run_dir, tmp_path):
    clean = jepa_eval(run_dir, tmp_path / "clean", "eval.shard_size=8", "eval.batch_size=8")
    assert clean.returncode == 0, clean.stderr
    expected, complete = results_of(run_dir), len(shards(tmp_path / "clean"))

    cache = tmp_path / "killed"
    proc = jepa_eval(run_dir, cache, "eval.shard_size=8", "eval.batch_size=8", wait=False)
    deadline = time.monotonic() + 300
    while len(shards(cache)) < 6 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {name: p.stat().st_mtime_ns for name, p in shards(cache).items()}
    assert 6 <= len(before) < complete  # stopped part way
    # whole shards or none: a kill during a write (fsync'ed now, so often hit) leaves only a
    # temporary, which the resumed extraction removes (its writer is dead)

    resumed = jepa_eval(run_dir, cache, "eval.shard_size=8", "eval.batch_size=8")
    assert resumed.returncode == 0, resumed.stderr
    after = shards(cache)
    assert len(after) == complete
    assert not list(cache.rglob("*.tmp"))
    assert all(after[name].stat().st_mtime_ns == t for name, t in before.items())  # kept
    assert results_of(run_dir) == expected


@pytest.mark.slow
def test_two_processes_extract_the_same_features_as_one(run_dir, tmp_path):
    one = jepa_eval(run_dir, tmp_path / "one", "eval.shard_size=64")
    assert one.returncode == 0, one.stderr
    expected = results_of(run_dir)
    two = jepa_eval(run_dir, tmp_path / "two", "eval.shard_size=64", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    a, b = shards(tmp_path / "one"), shards(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) > 4
    for name in a:
        x, y = torch.load(a[name], weights_only=True), torch.load(b[name], weights_only=True)
        assert torch.equal(x["y"], y["y"])
        torch.testing.assert_close(x["x"], y["x"], rtol=1e-5, atol=1e-6)
    got = results_of(run_dir)
    assert [(r["protocol"], r["features"]) for r in got] == [
        (r["protocol"], r["features"]) for r in expected]
    for r, e in zip(got, expected, strict=True):
        assert r.get("accuracy") == pytest.approx(e.get("accuracy"), abs=1 / 359 + 1e-9)


class _SomeUnreadable:
    """Images 0..n-1 of value i; the indices in `bad` cannot be read."""

    num_classes = 2

    def __init__(self, n, bad):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def get(self, index, generator):
        from jepa_core.errors import BadSample

        if index in self.bad:
            raise BadSample(f"image {index} is broken")
        return torch.full((3, 4, 4), float(index)), index % 2


def test_shards_with_unreadable_images_hold_the_readable_ones_only(tmp_path):
    """Batches are written into a buffer of the shard's size; a shard left short by
    unreadable images is stored at its own size, its rows in order."""
    from jepa_core.evaluation.features import extract_split, pixel_extract

    source = _SomeUnreadable(23, bad={3, 4, 17})
    folder = tmp_path / "px"
    extract_split({"pixels": (pixel_extract(("pooled",), (2, 2)), ("pooled",), folder)},
                  source, list(range(23)), shard_size=10, batch_size=4, num_workers=0)
    got = [torch.load(cache.shard_path(folder, "pooled", s), weights_only=True)
           for s in range(3)]
    assert [part["skipped"] for part in got] == [2, 1, 0]
    readable = [i for i in range(23) if i not in {3, 4, 17}]
    x = torch.cat([part["x"] for part in got])
    assert x[:, 0].tolist() == [float(i) for i in readable]
    assert torch.cat([part["y"] for part in got]).tolist() == [i % 2 for i in readable]
    for part in got:  # no unused buffer rows on disk
        assert part["x"].untyped_storage().nbytes() == part["x"].numel() * 4


# -- what the cache is keyed by, what a shard says it holds, faults of the disk ----------------
FAST = ["data.name=digits", "eval.max_images=40", "eval.shard_size=16", "eval.protocols=[knn]",
        "--no-baseline"]
TRAINED = "trained target encoder"


def eval_in_process(source: Path, cache_dir: Path, capsys, *extra: str) -> tuple[int, str, str]:
    from jepa_core.commands.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "1000")  # the error panel's paragraph on one line
        code = main(["eval", str(source), f"eval.cache_dir={cache_dir}", *FAST, *extra])
    out, err = capsys.readouterr()
    return code, " ".join(out.split()), " ".join(re.sub("[╭╮╰╯─│]", " ", err).split())


def eval_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())


def other_weights(run_dir: Path, dest: Path, seed: int) -> Path:
    """A checkpoint of the run at `dest`: the same step, path-like name and recipe, other
    weights of the evaluated module (what a branched run, or a copied file, gives)."""
    from jepa_core.runtime import checkpoint as ckpt

    src = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    state = ckpt.load(src)
    g = torch.Generator().manual_seed(seed)
    weights = state["modules"][state["eval_module"]]
    for key, value in weights.items():
        if value.is_floating_point():
            weights[key] = value + 0.5 * torch.randn(value.shape, generator=g)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save_atomic(state, dest)
    return dest


def trained_shards(cache_dir: Path, record: dict, split: str = "train") -> list[torch.Tensor]:
    folder = cache_dir / record["source"]["cache_keys"][TRAINED][split]
    return [torch.load(p, weights_only=True)["x"] for p in sorted(folder.glob("pooled-*.pt"))]


def test_other_weights_at_the_same_path_and_step_are_extracted_again(run_dir, tmp_path,
                                                                       capsys):
    """The cache is keyed by the weights' bytes, not the checkpoint's path and step: a
    checkpoint overwritten by another one (or a branched run at the same step) is not
    evaluated on the old features; eval.json records the key."""
    run = tmp_path / "run"
    ckpt_file = other_weights(run_dir, run / "checkpoints" / "step_000000002.pt", seed=1)
    cache_dir = tmp_path / "cache"
    assert eval_in_process(ckpt_file, cache_dir, capsys)[0] == 0
    first = eval_json(run)
    other_weights(run_dir, ckpt_file, seed=2)  # copied over the evaluated file
    assert eval_in_process(ckpt_file, cache_dir, capsys)[0] == 0
    second = eval_json(run)
    assert first["source"]["step"] == second["source"]["step"]
    assert first["source"]["weights"] != second["source"]["weights"]
    assert first["source"]["cache_keys"][TRAINED] != second["source"]["cache_keys"][TRAINED]
    assert eval_in_process(ckpt_file, tmp_path / "fresh", capsys)[0] == 0
    fresh = eval_json(run)
    assert fresh["source"]["cache_keys"] == second["source"]["cache_keys"]
    for a, b in zip(trained_shards(cache_dir, second), trained_shards(tmp_path / "fresh", fresh),
                    strict=True):
        assert torch.equal(a, b)
    assert second["results"] == fresh["results"]


def test_the_evaluation_after_training_keys_the_cache_by_the_weights(run_dir, tmp_path):
    """The run's own evaluation (origin "end of training") of other weights at the same
    step extracts them, and one of the same weights reuses the cache."""
    from jepa_core.evaluation.runner import evaluate
    from jepa_core.runtime import checkpoint as ckpt

    registry = make_plugin_manager()
    state = ckpt.load(other_weights(run_dir, tmp_path / "a.pt", seed=1))
    recipe = recipe_from_dict(state["recipe"], registry, "t", [
        "data.name=digits", "eval.max_images=40", "eval.shard_size=16", "eval.protocols=[knn]"])
    origin = {"run_dir": "r", "step": state["step"], "checkpoint": "end of training"}

    def run(weights: dict) -> dict:
        out = evaluate(recipe, registry, weights, torch.device("cpu"), baseline=False,
                       cache_root=tmp_path / "cache", origin=origin)
        assert out is not None
        return out

    a = run(state["modules"]["target_encoder"])
    b_weights = {k: v * 0.5 if v.is_floating_point() else v
                 for k, v in state["modules"]["target_encoder"].items()}
    b = run(b_weights)
    assert a["source"]["weights"] != b["source"]["weights"]
    assert a["source"]["cache_keys"] != b["source"]["cache_keys"]
    assert run(b_weights)["source"]["cache_keys"] == b["source"]["cache_keys"]


@pytest.fixture
def evaluated(run_dir, tmp_path, capsys):
    """(checkpoint, cache folder, eval.json) of one evaluation of a copy of the run."""
    from jepa_core.runtime import checkpoint as ckpt

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    src = ckpt.list_checkpoints(run_dir / "checkpoints")[-1]
    dest = run / "checkpoints" / src.name
    dest.write_bytes(src.read_bytes())
    code, _, err = eval_in_process(dest, tmp_path / "cache", capsys)
    assert code == 0, err
    return dest, tmp_path / "cache", eval_json(run)


def trained_folder(cache_dir: Path, split: str) -> Path:
    (folder,) = [p for p in (cache_dir / TRAINED.replace(" ", "_")).glob(f"{split}-*")
                 if p.is_dir()]
    return folder


def test_swapped_train_and_test_shards_are_named_and_extracted_again(evaluated, capsys):
    source, cache_dir, clean = evaluated
    train = trained_folder(cache_dir, "train") / "pooled-00000.pt"
    test = trained_folder(cache_dir, "test") / "pooled-00000.pt"
    kept = train.with_name("kept")
    os.replace(train, kept)
    os.replace(test, train)
    os.replace(kept, test)
    code, out, err = eval_in_process(source, cache_dir, capsys)
    assert code == 0, err
    assert f"note: the feature shard {train} cannot be used (holds split test," in out
    assert f"note: the feature shard {test} cannot be used (holds split train," in out
    assert "extracting it again" in out
    assert eval_json(source.parent.parent)["results"] == clean["results"]
    assert torch.load(train, weights_only=True)["split"] == "train"


def test_a_truncated_shard_is_named_and_extracted_again(evaluated, capsys):
    source, cache_dir, clean = evaluated
    shard = trained_folder(cache_dir, "test") / "pooled-00001.pt"
    whole = shard.read_bytes()
    shard.write_bytes(whole[:len(whole) // 2])  # what a power loss can leave
    code, out, err = eval_in_process(source, cache_dir, capsys)
    assert code == 0, err
    assert (f"note: the feature shard {shard} cannot be used (unreadable, truncated or not a "
            f"shard") in out
    assert eval_json(source.parent.parent)["results"] == clean["results"]
    assert torch.equal(torch.load(shard, weights_only=True)["x"],
                       torch.load(io.BytesIO(whole), weights_only=True)["x"])


def test_a_dead_writers_temporary_is_removed(evaluated, capsys):
    source, cache_dir, clean = evaluated
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    folder = trained_folder(cache_dir, "train")
    stale = folder / f".pooled-00000.pt.{socket.gethostname()}.{dead}.tmp"
    stale.write_bytes(b"\0" * 4096)
    live = folder / f".pooled-00001.pt.{socket.gethostname()}.{os.getpid()}.tmp"
    live.write_bytes(b"\0" * 16)  # a living process's write: left alone
    assert eval_in_process(source, cache_dir, capsys)[0] == 0
    assert not stale.exists() and live.exists()


def test_a_shard_of_another_shape_is_named_when_read(evaluated, capsys):
    source, cache_dir, clean = evaluated
    folder = trained_folder(cache_dir, "train")
    part = torch.load(folder / "pooled-00001.pt", weights_only=True)
    cache.write_shard(folder, "pooled", 1, part["x"][:, :3], part["y"], part["skipped"])
    code, _, err = eval_in_process(source, cache_dir, capsys)
    assert code == 1, err
    assert (f"the feature shard {folder / 'pooled-00001.pt'} is of another shape: one image's "
            f"features are (3,)") in err and f"Remove {folder}" in err


def test_a_cache_dir_that_is_a_file_is_an_error_naming_it(run_dir, tmp_path, capsys):
    (tmp_path / "cache").write_text("not a folder")
    code, _, err = eval_in_process(run_dir, tmp_path / "cache", capsys)
    assert code == 1, err
    assert f"cannot use {tmp_path / 'cache'} for the feature cache" in err
    assert "Traceback" not in err


WRITE_UNDER_A_LIMIT = """
import resource, signal, sys, torch
from pathlib import Path
from jepa_core.evaluation import cache, sharing
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: EFBIG, as ENOSPC would be
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
folder = Path(sys.argv[1])
try:
    cache.write_shard(folder, "pooled", 0, torch.zeros(256, 1024), torch.zeros(256).long(), 0)
except cache.CacheError as exc:
    print(exc)
"""


def test_a_full_disk_is_an_error_naming_the_folder_and_the_space_needed(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    out = subprocess.run([sys.executable, "-c", WRITE_UNDER_A_LIMIT, str(folder)],
                         capture_output=True, text=True, timeout=120)
    message = " ".join(out.stdout.split())
    assert out.returncode == 0, out.stderr
    assert f"could not write the feature shard pooled-00000.pt to {folder}: File too large. " \
           f"The shard needs 1.1 MiB;" in message
    assert "nothing partial was left" in message
    assert list(folder.iterdir()) == []


def test_jepa_eval_on_a_full_disk_exits_with_the_message_and_no_temporary(run_dir, tmp_path):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    cmd = [sys.executable, "-m", "jepa_core", "eval", str(run_dir),
           f"eval.cache_dir={tmp_path / 'cache'}", *FAST]
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited by the child
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             preexec_fn=limit, env={**os.environ, "COLUMNS": "200"})
    finally:
        signal.signal(signal.SIGXFSZ, old)
    err = " ".join(out.stderr.split())
    assert out.returncode == 1, out.stderr
    assert "could not write the feature shard pooled-00000.pt to" in err
    assert "The shard needs" in err and "Traceback" not in err
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    assert not list((tmp_path / "cache").rglob("*.pt"))


HOLD = """
import sys, time
from pathlib import Path
from jepa_core.evaluation import sharing
with sharing.in_use(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_pruning_leaves_a_folder_another_process_uses(tmp_path):
    """The rule that lets concurrent evaluations share a cache: a folder held by a living
    process is never pruned; once it has gone (or was killed), the folder is."""
    mine, theirs = tmp_path / "knn" / "train-aaa", tmp_path / "knn" / "train-bbb"
    for folder in (mine, theirs):
        folder.mkdir(parents=True)
        (folder / "pooled-00000.pt").write_bytes(b"x")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(theirs)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        sharing.prune_others(mine)
        assert (theirs / "pooled-00000.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    sharing.prune_others(mine)
    assert not theirs.exists() and not sharing.lock_path(theirs).exists()
    assert (mine / "pooled-00000.pt").exists()


@pytest.mark.slow  # two real evaluations, one of all 1,797 digits (~25 s here)
def test_two_evaluations_of_two_checkpoints_of_one_run_both_finish(run_dir, tmp_path):
    """The first to finish prunes the other's folder no more while the other extracts (it
    is stopped part way, by SIGSTOP, for the time the first one runs)."""
    a = other_weights(run_dir, tmp_path / "run" / "checkpoints" / "step_000000001.pt", seed=1)
    b = other_weights(run_dir, tmp_path / "run" / "checkpoints" / "step_000000002.pt", seed=2)
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "COLUMNS": "200"}
    common = ["data.name=digits", f"eval.cache_dir={cache_dir}", "eval.protocols=[knn]",
              "eval.shard_size=64", "--no-baseline"]
    slow = subprocess.Popen([sys.executable, "-m", "jepa_core", "eval", str(b), *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(cache_dir.rglob("pooled-00000.pt")) and time.monotonic() < deadline:
            time.sleep(0.01)
        slow.send_signal(signal.SIGSTOP)
        extracted = list(cache_dir.rglob("pooled-*.pt"))
        fast = subprocess.run([sys.executable, "-m", "jepa_core", "eval", str(a), *common,
                               "eval.max_images=40"], capture_output=True, text=True,
                              timeout=300, env=env)
        assert fast.returncode == 0, fast.stderr
        assert all(p.exists() for p in extracted)  # the stopped one's shards stay
        slow.send_signal(signal.SIGCONT)
        _, err = slow.communicate(timeout=120)  # (it waited 600 s for its own shards)
    finally:
        slow.kill()
    assert slow.returncode == 0, err
    assert eval_json(tmp_path / "run")["source"]["step"] == 2


def test_eval_json_that_cannot_be_written_is_left_as_it_was(evaluated):
    """The features are cached, so a second evaluation writes only eval.json; under a file
    size limit smaller than it, the old eval.json stays whole (was: cut at the limit)."""
    source, cache_dir, clean = evaluated
    path = source.parent.parent / "eval.json"
    before = path.read_bytes()
    limit = len(before) // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited by the child
    try:
        out = subprocess.run([sys.executable, "-m", "jepa_core", "eval", str(source),
                              f"eval.cache_dir={cache_dir}", *FAST], capture_output=True,
                             text=True, timeout=300, preexec_fn=small_files,
                             env={**os.environ, "COLUMNS": "200"})
    finally:
        signal.signal(signal.SIGXFSZ, old)
    assert out.returncode == 0, out.stderr
    assert f"could not write {path}" in " ".join(out.stdout.split())
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
