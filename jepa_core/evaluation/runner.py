"""`jepa eval`'s engine: extract each encoder's features once into the cache, then run every
protocol of `eval.protocols` on them; the result is the format-2 eval.json.

Features come from the method's eval module (e.g. the target encoder), and, as baselines, the
same architecture at its seeded random init and the raw pixels, so "training added something"
is a measured statement. With several processes (`jepa eval --nproc N`, or torchrun), each
extracts its share of the shards; rank 0 waits for the others' shards and runs the protocols.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.markup import escape

from jepa_core.errors import BadSample, RunError
from jepa_core.evaluation import cache, sharing
from jepa_core.evaluation.features import (
    PIXEL_KINDS,
    TokensOnTheFly,
    encoder_extract,
    encoder_kinds,
    extract_split,
    first_frame_only,
    pixel_extract,
    tokens_bytes,
    wait_for_shards,
)
from jepa_core.evaluation.protocols import check_splits, run_protocols
from jepa_core.interfaces import EvalContext
from jepa_core.recipe import Recipe, recipe_to_dict
from jepa_core.runtime.build import build, build_encoder, conforming
from jepa_core.runtime.progress import Ticker
from jepa_core.seeding import generator

FORMAT = 2
RANDOM, PIXELS = "random init", "raw pixels"
# Clips only: the trained encoder fed each clip's first frame repeated (motion invisible)
SINGLE_FRAME = "single frame"

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry


class NoLabels(RunError):
    """The data source has no labels, so there is nothing to probe."""


class NoProtocols(RunError):
    """eval.protocols is empty: nothing to run."""


def no_labels_message(recipe: Recipe, source: Any) -> str:
    """Why the probes cannot run on an unlabelled source, and how to give them labels."""
    where = getattr(source, "split", "") or recipe.data.name
    return (f"the probes need labels, and the data source {recipe.data.name!r} has none "
            f"({where}). To evaluate, point `jepa eval RUN data.root=...` at a labelled folder "
            f"(root/<class>/<image>, data.val_root for its test images) or use a labelled "
            f"source such as data.name=digits.")


def eval_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """All of 0..n-1, or a seeded random subset of `limit` (files are sorted by class, so the
    first `limit` would cover a few classes only)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=generator(seed, "eval"))[:limit].tolist())


def build_protocols(recipe: Recipe, registry: Registry) -> list[tuple[str, Any, Any]]:
    """(name, spec, protocol) of each entry of eval.protocols, each checked against
    `jepa_core.interfaces.EvalProtocol`."""
    out = []
    for component in recipe.eval.protocols or ():
        spec = registry.get("eval_protocol", component.name)
        out.append((component.name, spec,
                    conforming("eval_protocol", spec, spec.build(component.config))))
    return out


def _side(source: Any, images: int, skipped: int) -> dict[str, Any]:
    return {"split": getattr(source, "split", "") or type(source).__name__, "images": images,
            "skipped": skipped}


def evaluate(recipe: Recipe, registry: Registry, target_state: dict, device: torch.device,
             baseline: bool = True, module: str = "target_encoder", console: Any = None,
             cache_root: str | Path | None = None, origin: dict | None = None,
             rank: int = 0, world: int = 1, before_wait: Any = None) -> dict | None:
    """Extract (this process's share of) the features and, on rank 0, run the protocols.

    target_state: the weights of the `module` to evaluate. origin: where they come from
    ({"checkpoint": path, "step": n, ...}), for eval.json (the cache is keyed by the weights
    themselves). Returns the format-2 eval.json dict on rank 0, None on the other ranks.
    `before_wait()` runs on rank 0 between its own share and waiting for the others'. An
    unlabelled data source raises `NoLabels`. The cache folders used are held (`in_use`)
    until it returns, so no other evaluation prunes them meanwhile."""
    with contextlib.ExitStack() as held:
        return _evaluate(recipe, registry, target_state, device, baseline, module, console,
                         cache_root, origin, rank, world, before_wait, held)


def _evaluate(recipe: Recipe, registry: Registry, target_state: dict, device: torch.device,
              baseline: bool, module: str, console: Any, cache_root: str | Path | None,
              origin: dict | None, rank: int, world: int, before_wait: Any,
              held: contextlib.ExitStack) -> dict | None:
    protocols = build_protocols(recipe, registry)
    if not protocols:
        raise NoProtocols(
            "eval.protocols is empty, so there is nothing to evaluate: no evaluation protocol "
            "is registered (jepa-core's `eval` plugin left out with `-p no:eval` or "
            "JEPA_DISABLE_PLUGIN_AUTOLOAD?) or the recipe lists none. Load it "
            "(`jepa -p jepa_eval.plugin ...`) or list protocols: eval.protocols=[knn, linear].")
    wanted = {k for _, _, p in protocols for k in p.feature_kinds}
    trained = build_encoder(recipe, registry)
    size = tuple(trained.image_size)  # type: ignore[arg-type]
    train_src = build("data_source", recipe, registry, "data", image_size=size, train=True)
    if not train_src.num_classes:
        raise NoLabels(no_labels_message(recipe, train_src))
    test_src = build("data_source", recipe, registry, "data", image_size=size, train=False)
    trained.load_state_dict(target_state)
    encoders: dict[str, Any] = {f"trained {module.replace('_', ' ')}": trained}
    if baseline:  # same architecture and seed, never trained
        encoders[RANDOM] = build_encoder(recipe, registry)
    for model in encoders.values():
        model.to(device)
    origin = dict(origin or {})
    root = Path(cache_root) if cache_root is not None else Path(recipe.run_dir) / "features"
    cfg = recipe.eval
    layout = recipe_to_dict(recipe)
    extractors: dict[str, tuple[Any, tuple[str, ...], dict[str, Any]]] = {}
    keys: dict[str, str] = {}  # features -> fingerprint of the encoder's weights
    makers: dict[str, Any] = {}  # name -> kinds -> extract function of those kinds
    for name, model in encoders.items():
        makers[name] = lambda kinds, model=model: encoder_extract(model, kinds, device)
        kinds = encoder_kinds(model, wanted)
        weights = keys.setdefault(name, cache.weights_fingerprint(model.state_dict()))
        extractors[name] = (encoder_extract(model, kinds, device), kinds,
                            {"weights": weights, "encoder": layout["encoder"], "kinds": kinds})
    sample = first_image(train_src)
    if baseline:
        kinds = tuple(k for k in PIXEL_KINDS if k in wanted)
        patch = _patch_size(trained, sample)
        makers[PIXELS] = lambda kinds: pixel_extract(kinds, patch)
        extractors[PIXELS] = (pixel_extract(kinds, patch), kinds,
                              {"pixels": patch, "kinds": kinds})
    if baseline and sample is not None and sample.dim() == 4:  # clips [C, T, H, W]
        name = f"{SINGLE_FRAME} ({module.replace('_', ' ')})"
        makers[name] = lambda kinds: first_frame_only(encoder_extract(trained, kinds, device))
        kinds = encoder_kinds(trained, wanted)
        extractors[name] = (makers[name](kinds), kinds,
                            {"weights": next(iter(keys.values())), "encoder": layout["encoder"],
                             "kinds": kinds,
                             "frames": "first frame repeated"})

    n_images = sum(min(len(s), cfg.max_images or len(s)) for s in (train_src, test_src))
    live = tokens_on_the_fly(recipe, trained, extractors, sample, root, console, n_images)
    stored = {name: (fn, kinds, parts) if name not in live else
              (makers[name](live[name][0]), live[name][0], parts)
              for name, (fn, kinds, parts) in extractors.items()}
    def note(text: str) -> None:
        if console is not None:
            console.print(f"[yellow]note:[/yellow] {escape(text)}", soft_wrap=True)

    sides = []
    extract_s: dict[str, float] = {}  # seconds of this process's extraction, per split
    for src, split, offset in ((train_src, "train", 0), (test_src, "test", 1)):
        indices = eval_indices(len(src), cfg.max_images, recipe.seed + offset)
        images = {"data": layout["data"], "split": split, "which": getattr(src, "split", ""),
                  "n": len(src), "indices": indices, "shard_size": cfg.shard_size}
        folders = {name: (fn, kinds, cache.folder_for(root, name, split, what=parts,
                                                      images=images))
                   for name, (fn, kinds, parts) in stored.items()}
        for _, _, folder in folders.values():
            held.enter_context(sharing.in_use(folder))
        shards = cache.num_shards(len(indices), cfg.shard_size)
        what = "probe-training" if split == "train" else "test"
        share = len(range(rank, shards, world))
        mine = sum(len(indices[s * cfg.shard_size:(s + 1) * cfg.shard_size])
                   for s in range(rank, shards, world))
        label = (f"extracting features of the {what} images" + (
            f" (process {rank + 1} of {world}: {share} of {shards} shards)" if world > 1 else ""))
        t0 = time.perf_counter()
        with Ticker(console if rank == 0 else None, label, mine, "images") as ticker:
            extract_split(folders, src, indices, cfg.shard_size, cfg.batch_size,
                          recipe.train.num_workers, rank, world, ticker, note)
        extract_s[split] = round(time.perf_counter() - t0, 3)
        sides.append((src, folders, shards, indices))
    if rank != 0:
        return None
    if before_wait is not None:  # e.g. wait for the processes `jepa eval --nproc` started
        before_wait()
    for src, folders, shards, indices in sides:
        wait_for_shards([(f, kinds) for _, kinds, f in folders.values()], shards,
                        rank=rank, world=world)
        if world > 1:  # check the others' shards too; make any that are bad or went missing
            extract_split(folders, src, indices, cfg.shard_size, cfg.batch_size,
                          recipe.train.num_workers, note=note)
        for _, _, folder in folders.values():
            sharing.prune_others(folder)

    (_, train_folders, train_shards, train_idx), (_, test_folders, test_shards, test_idx) = sides
    train_rows = cache.shard_rows(len(train_idx), cfg.shard_size)
    test_rows = cache.shard_rows(len(test_idx), cfg.shard_size)
    first = next(iter(stored))
    tr = cache.CachedFeatures(train_folders[first][2], stored[first][1][0], train_shards,
                              train_rows)
    te = cache.CachedFeatures(test_folders[first][2], stored[first][1][0], test_shards,
                              test_rows)
    data = {"name": recipe.data.name, "train": _side(train_src, len(tr), tr.skipped),
            "test": _side(test_src, len(te), te.skipped),
            "skipped_images": tr.skipped + te.skipped}
    check_splits(data)

    def features_of(fname: str) -> dict:
        """{kind: (train, test) FeatureSet} of one set of features."""
        _, kinds, train_folder = train_folders[fname]
        test_folder = test_folders[fname][2]
        features = {kind: (cache.CachedFeatures(train_folder, kind, train_shards, train_rows),
                           cache.CachedFeatures(test_folder, kind, test_shards, test_rows))
                    for kind in kinds}
        if fname in live:  # tokens computed when read, labels from the cached pooled ones
            fn, item_shape = extractors[fname][0], live[fname][1]
            features["tokens"] = tuple(  # type: ignore[assignment]
                TokensOnTheFly(fn, src, indices, cfg.shard_size, cfg.batch_size,
                               recipe.train.num_workers, features["pooled"][i], item_shape)
                for i, (src, _, _, indices) in enumerate(sides))
        return features

    context = EvalContext(num_classes=train_src.num_classes, seed=recipe.seed, device=device,
                          console=console,
                          ticker=lambda what, total, unit: Ticker(console, what, total, unit))
    results, failed, timings = run_protocols(protocols, list(extractors), features_of, context)
    return {"format": FORMAT,
            "source": {**origin, "method": recipe.method.name if recipe.method else None,
                       "module": module, "cache": str(root),
                       "weights": next(iter(keys.values())),  # what the cache is keyed by
                       "cache_keys": {name: {"train": str(train_folders[name][2].relative_to(
                           root)), "test": str(test_folders[name][2].relative_to(root))}
                           for name in extractors},
                       "threads": torch.get_num_threads()},  # CPU numbers depend on it
            "data": data, "results": results, **({"failed": failed} if failed else {}),
            "timings": {"extract_s": extract_s, "protocols": timings}}


def first_image(source: Any, tries: int = 16) -> torch.Tensor | None:
    """One readable image of a source (its channels size raw pixels' tokens), or None."""
    for i in range(min(len(source), tries)):
        try:
            return source.get(i, None)[0]
        except BadSample:
            continue
    return None


def tokens_on_the_fly(recipe: Recipe, encoder: Any, extractors: dict, sample: Any, root: Path,
                      console: Any, n_images: int
                      ) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """{features: (kinds to store, one image's token shape)} of the extractors whose tokens
    are computed when read rather than cached (eval.tokens)."""
    import shutil

    mode = recipe.eval.tokens
    wanting = [name for name, (_, kinds, _) in extractors.items() if "tokens" in kinds]
    if mode == "cache" or not wanting or sample is None:
        return {}
    n_tokens = math.prod(int(g) for g in encoder.patch_grid)
    patch = _patch_size(encoder, sample)
    shapes = {name: (n_tokens, int(encoder.embed_dim) if name != PIXELS
                     else int(sample.shape[0]) * math.prod(patch)) for name in wanting}
    if mode == "auto":
        need = sum(tokens_bytes(n_images, *shape) for shape in shapes.values())
        where = root if root.exists() else next((p for p in root.parents if p.exists()), root)
        if need <= shutil.disk_usage(where).free // 2:
            return {}
        if console is not None:
            console.print(f"[yellow]note:[/yellow] token features would take up to "
                          f"{need / 2**30:.1f} GiB under {root}, more than half its free disk: "
                          f"computed when read instead (eval.tokens=cache to store them).",
                          soft_wrap=True)
    out: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {}
    for name in wanting:
        kinds = extractors[name][1]
        keep = tuple(dict.fromkeys(("pooled", *[k for k in kinds if k != "tokens"])))
        out[name] = (keep, shapes[name])
    return out


def _patch_size(encoder: Any, sample: torch.Tensor | None = None) -> tuple[int, ...]:
    """(ph, pw) pixels per patch; for a (t, h, w) grid and a clip sample [C, T, H, W],
    (T // t, ph, pw): the frames of a tubelet too."""
    (h, w), grid = tuple(encoder.image_size)[-2:], tuple(encoder.patch_grid)
    spatial = (int(h) // int(grid[-2]), int(w) // int(grid[-1]))
    if len(grid) == 3 and sample is not None and sample.dim() == 4:
        return (int(sample.shape[1]) // int(grid[0]), *spatial)
    return spatial


def headline(results: dict) -> dict[str, dict[str, float]]:
    """{features: {"linear_probe": best linear test accuracy over its kinds, "knn": kNN test
    accuracy}} of a format-2 result: the two figures the comparison notes and the benchmarks
    quote."""
    out: dict[str, dict[str, float]] = {}
    for r in results.get("results", []):
        if r["protocol"] == "linear":
            row = out.setdefault(r["features"], {})
            row["linear_probe"] = max(row.get("linear_probe", 0.0), r["accuracy"]["test"])
        elif r["protocol"] == "knn":
            out.setdefault(r["features"], {})["knn"] = r["accuracy"]["test"]
    return {k: v for k, v in out.items() if {"linear_probe", "knn"} <= set(v)}
