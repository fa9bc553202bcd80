"""Peak memory of `jepa eval` does not grow with the number of images: the feature cache.

    .venv/bin/python bench/eval_memory.py [--sizes 5000 20000] [--shard-size 1024]

For each size, writes a generated image folder (10 classes of 32x32 noise PNGs, 10% held
out), trains the quickstart encoder on it for one step, then runs `jepa eval` on it in a fresh
process (no baselines) with two streaming protocols: kNN on the pooled features, and
`stream_tokens` (bench/plugins/stream_tokens.py), which makes the cache hold the largest kind,
the tokens, and reads every token shard once. It prints that process's peak RSS, the
extraction rate (images/s, from the log) and the bytes of one token shard. The claim: peak RSS
at the two sizes differs by less than one shard.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_folder(root: Path, n: int, classes: int = 10) -> None:
    """n noise images in root/c<k>/, seeded."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"c{i % classes}" / f"{i:06d}.png")


PLUGINS = str(Path(__file__).resolve().parent / "plugins")


def jepa(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join([PLUGINS, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                          text=True, cwd=REPO, env=env)


def peak_rss_of(*args: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """(peak RSS in MiB of a fresh `jepa` process, seconds, its result); one child at a time,
    so RUSAGE_CHILDREN's maximum is this child's."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args],
                          capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "COLUMNS": "200"})
    seconds = time.perf_counter() - t0
    match = re.search(r"peak_rss_kib=(\d+)", done.stdout)
    if done.returncode != 0 or not match:
        raise SystemExit(f"`jepa {' '.join(args)}` failed:\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}")
    return int(match.group(1)) / 1024, seconds, done


def child(args: list[str]) -> None:
    """Run `jepa ARGS` in this process's child and print its peak RSS."""
    done = jepa(*args)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"peak_rss_kib={kib}")
    sys.exit(done.returncode)


def measure(n: int, shard_size: int, work: Path) -> dict:
    root = work / f"images{n}"
    t0 = time.perf_counter()
    make_folder(root, n)
    made = time.perf_counter() - t0
    data = f"data={{name: image_folder, root: {root}, val_fraction: 0.1}}"
    trained = jepa("run", "recipes/quickstart.yaml", data, "train.max_steps=1",
                   "eval.after_train=false", f"out_dir={work}", f"name=run{n}")
    if trained.returncode != 0:
        raise SystemExit(trained.stderr[-3000:])
    rss, seconds, done = peak_rss_of("-p", "stream_tokens", "eval", str(work / f"run{n}"),
                                     "--no-baseline", "eval.protocols=[knn, stream_tokens]",
                                     f"eval.shard_size={shard_size}")
    cache = work / f"run{n}" / "features"
    shard_files = sorted(cache.rglob("tokens-*.pt"))
    shard_bytes = max(f.stat().st_size for f in shard_files)
    done_lines = re.findall(r"extracting features of the (\S+) images: done in (\d+) s",
                            done.stdout)
    extract_s = sum(int(s) for _, s in done_lines) or seconds
    return {"images": n, "made_s": made, "rss_mib": rss, "eval_s": seconds,
            "images_per_s": n / max(extract_s, 1), "shard_bytes": shard_bytes,
            "shards": len(shard_files)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    p.add_argument("--shard-size", type=int, default=4096)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(n, args.shard_size, Path(tmp)) for n in args.sizes]
    print(f"{'images':>8} {'peak RSS':>10} {'extract img/s':>14} {'shards':>7} "
          f"{'shard size':>11} {'eval s':>7}")
    for r in rows:
        print(f"{r['images']:>8} {r['rss_mib']:>8.1f} MiB {r['images_per_s']:>14.0f} "
              f"{r['shards']:>7} {r['shard_bytes'] / 2**20:>7.2f} MiB {r['eval_s']:>7.1f}")
    growth = rows[-1]["rss_mib"] - rows[0]["rss_mib"]
    shard = max(r["shard_bytes"] for r in rows) / 2**20
    verdict = "less" if abs(growth) < shard else "MORE"
    print(f"peak RSS changed by {growth:+.1f} MiB from {rows[0]['images']} to "
          f"{rows[-1]['images']} images: {verdict} than one token shard ({shard:.1f} MiB). "
          f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")

if __name__ == "__main__":
    main()
