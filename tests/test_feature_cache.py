"""The feature cache of `jepa eval`: a killed extraction resumes where it stopped and gives
the same numbers; `--nproc 2` extracts the same features as one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jepa_core.evaluation import cache
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.trainer import train

PROTOCOLS = "eval.protocols=[{name: knn, k: 5}, {name: linear, epochs: 2, features: [pooled]}]"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import copy

    from conftest import TINY

    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path_factory.mktemp("runs"))
    d["train"]["max_steps"] = 2
    registry = make_plugin_manager()
    return train(recipe_from_dict(d, registry, "t"), registry).run_dir


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
    assert not list(cache.rglob("*.tmp"))  # whole shards or none (a temporary may linger
    # only if the kill hit the write itself; none did here)

    resumed = jepa_eval(run_dir, cache, "eval.shard_size=8", "eval.batch_size=8")
    assert resumed.returncode == 0, resumed.stderr
    after = shards(cache)
    assert len(after) == complete
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
