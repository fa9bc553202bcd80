"""`jepa eval`: linear probe and kNN on frozen, average-pooled encoder features.

The I-JEPA paper evaluates the target encoder, average-pooled over all patch tokens (no cls
token). For context, the same probes run on a randomly initialised encoder of the same
architecture and on raw pixels, so "it learned something" is a measured statement.

The probes are fit on the data source's training images and tested on its evaluation images
(`build(..., train=False)`: a validation folder, a held-out split); which ones, and how many
unreadable images were skipped, go into the results under "data".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from jepa_core.errors import BadSample, RunError
from jepa_core.interfaces import DataSource
from jepa_core.recipe import EvalConfig, Recipe, recipe_from_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.build import build, build_encoder
from jepa_core.runtime.progress import Ticker
from jepa_core.seeding import generator

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry


class _Subset(torch.utils.data.Dataset):
    """Evaluation view of a data source: the images at `indices`, evaluation transform."""

    def __init__(self, source: DataSource, indices: list[int]):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        try:
            return self.source.get(self.indices[i], None)
        except BadSample:  # unreadable: left out and counted, as in training
            return None


def _collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """(images [b, C, H, W], labels [b], unreadable images left out); None, None if all were."""
    kept = [item for item in items if item is not None]
    if not kept:
        return None, None, len(items)
    return (torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept]),
            len(items) - len(kept))


def eval_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """All of 0..n-1, or a seeded random subset of `limit` (files are sorted by class, so the
    first `limit` would cover a few classes only)."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=generator(seed, "eval"))[:limit].tolist())


@torch.no_grad()
def extract(encoders: dict[str, torch.nn.Module], source: DataSource, indices: list[int],
            cfg: EvalConfig, device: torch.device, num_workers: int = 0,
            pixels: bool = False, ticker: Ticker | None = None
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """One streamed pass over the images: {name: [n, D] patch-averaged features}, labels [n],
    and the number of unreadable images skipped (n = len(indices) minus that).
    With `pixels`, also "raw pixels": images pooled to at most 16x16, flattened.
    `ticker` advances by the images of each batch."""
    loader = torch.utils.data.DataLoader(_Subset(source, indices), batch_size=cfg.batch_size,
                                         num_workers=num_workers, collate_fn=_collate)
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in encoders}
    if pixels:
        feats["raw pixels"] = []
    labels, skipped = [], 0
    for model in encoders.values():
        model.eval()
    for images, y, bad in loader:
        skipped += bad
        if ticker is not None:
            ticker.advance(bad + (0 if images is None else len(images)))
        if images is None:
            continue
        x = images.to(device)
        for name, model in encoders.items():
            feats[name].append(model(x).float().mean(dim=1).cpu())
        if pixels:
            side = min(16, images.shape[-1])
            feats["raw pixels"].append(F.adaptive_avg_pool2d(images, side).flatten(1))
        labels.append(y)
    if not labels:
        raise RunError(f"none of the {len(indices)} evaluation images of "
                       f"{getattr(source, 'split', 'the data source')} could be read; "
                       f"check the files.")
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels), skipped


L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # weight penalties tried, chosen on held-out data


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float,
                  iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, full batch L-BFGS from a fixed start."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(x.shape[1], num_classes, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _accuracy(x: torch.Tensor, y: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(((x @ wb[0] + wb[1]).argmax(1) == y).float().mean())


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, cfg: EvalConfig,
                 tick: Any = None) -> float:
    """Test accuracy of a logistic regression on standardised features; its weight penalty
    is chosen from L2_GRID on a seeded 20% of the training features, then refit on all.
    `tick()`, if given, is called after each of the len(L2_GRID) + 1 fits."""
    tick = tick or (lambda: None)

    def fit(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
        wb = _fit_logistic(x, y, num_classes, l2, cfg.probe_epochs)
        tick()
        return wb

    mean, std = train_x.mean(0), train_x.std(0)
    std = std.clamp_min(1e-2 * float(std.mean()) + 1e-8)  # near-constant inputs stay small
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))
    cut = max(1, len(xtr) // 5)
    held, rest = order[:cut], order[cut:]
    scores = {l2: _accuracy(xtr[held], train_y[held], fit(xtr[rest], train_y[rest], l2))
              for l2 in L2_GRID}
    best = max(L2_GRID, key=lambda l2: (scores[l2], l2))  # ties: the stronger penalty
    return _accuracy(xte, test_y, fit(xtr, train_y, best))


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, k: int) -> float:
    """Cosine-similarity kNN with similarity-weighted votes (temperature 0.07), on features
    centred by the training mean (a shared offset would make every cosine close to 1)."""
    mean = train_x.mean(0, keepdim=True)
    a, b = F.normalize(train_x - mean, dim=1), F.normalize(test_x - mean, dim=1)
    sim = b @ a.T
    k = min(k, a.shape[0])
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(b.shape[0], num_classes)
    votes.scatter_add_(1, train_y[idx], torch.exp(top / 0.07))
    return float((votes.argmax(1) == test_y).float().mean())


FITS_PER_FEATURES = len(L2_GRID) + 2  # the linear probe's fits, and the kNN


def probe_all(features: dict[str, tuple[torch.Tensor, torch.Tensor]], labels: tuple,
              num_classes: int, cfg: EvalConfig,
              console: Any = None) -> dict[str, dict[str, float]]:
    """{name: {"linear_probe": acc, "knn": acc}} for each set of features; progress on
    `console` (None: silent)."""
    ytr, yte = labels
    results = {}
    with Ticker(console, "fitting probes", FITS_PER_FEATURES * len(features), "fits") as t:
        for name, (xtr, xte) in features.items():
            linear = linear_probe(xtr, ytr, xte, yte, num_classes, cfg, tick=t.advance)
            results[name] = {"linear_probe": linear,
                             "knn": knn_accuracy(xtr, ytr, xte, yte, num_classes, cfg.knn_k)}
            t.advance()
    return results


def _side(source: Any, images: int, skipped: int) -> dict[str, Any]:
    return {"split": getattr(source, "split", "") or type(source).__name__, "images": images,
            "skipped": skipped}


class NoLabels(RunError):
    """The data source has no labels, so there is nothing to probe."""


def no_labels_message(recipe: Recipe, source: Any) -> str:
    """Why the probes cannot run on an unlabelled source, and how to give them labels."""
    where = getattr(source, "split", "") or recipe.data.name
    return (f"the probes need labels, and the data source {recipe.data.name!r} has none "
            f"({where}). To evaluate, point `jepa eval RUN data.root=...` at a labelled folder "
            f"(root/<class>/<image>, data.val_root for its test images) or use a labelled "
            f"source such as data.name=digits.")


def evaluate(recipe: Recipe, registry: Registry, target_state: dict, device: torch.device,
             baseline: bool = True, module: str = "target_encoder",
             console: Any = None) -> dict[str, dict[str, Any]]:
    """Probe the encoder given by `target_state` (the method's `module`, e.g. the target
    encoder); with baselines (random init, pixels). Progress on `console` (None: silent).
    An unlabelled data source raises `NoLabels`.

    {features: {"linear_probe": acc, "knn": acc}, "data": {"train"/"test": {"split": which
    images, "images": used, "skipped": unreadable}, "skipped_images": total}}."""
    trained = build_encoder(recipe, registry)
    size = tuple(trained.image_size)  # type: ignore[arg-type]  # an Encoder attribute
    train_src = build("data_source", recipe, registry, "data", image_size=size, train=True)
    if not train_src.num_classes:
        raise NoLabels(no_labels_message(recipe, train_src))
    test_src = build("data_source", recipe, registry, "data", image_size=size, train=False)
    encoders = {f"trained {module.replace('_', ' ')}": trained}
    if baseline:  # same architecture and seed, never trained
        encoders["random init"] = build_encoder(recipe, registry)
    trained.load_state_dict(target_state)
    for model in encoders.values():
        model.to(device)
    workers = recipe.train.num_workers
    limit = recipe.eval.max_images
    sides = []
    for src, what, offset in ((train_src, "probe-training", 0), (test_src, "test", 1)):
        indices = eval_indices(len(src), limit, recipe.seed + offset)
        with Ticker(console, f"extracting features of the {what} images", len(indices),
                    "images") as ticker:
            sides.append(extract(encoders, src, indices, recipe.eval, device, workers,
                                 pixels=baseline, ticker=ticker))
    (ftr, ytr, bad_tr), (fte, yte, bad_te) = sides
    features = {name: (ftr[name], fte[name]) for name in ftr}
    results: dict[str, dict[str, Any]] = probe_all(features, (ytr, yte), train_src.num_classes,
                                                   recipe.eval, console)
    results["data"] = {"train": _side(train_src, len(ytr), bad_tr),
                       "test": _side(test_src, len(yte), bad_te),
                       "skipped_images": bad_tr + bad_te}
    return results


def _points(a: float, b: float) -> str:
    return f"{100 * (a - b):+.1f}"


def comparison_notes(results: dict, data_name: str = "") -> list[str]:
    """What the table shows, worked out from its figures: what training added over the same
    architecture at random init (the comparison that measures training), and where raw
    pixels stand."""
    trained = next((k for k in results if k.startswith("trained ")), None)
    if trained is None:
        return []
    t = results[trained]
    tested = results.get("data", {}).get("test", {}).get("images", 0)
    grain = f" (one test image is {100 / tested:.2g} points)" if tested else ""
    probes = {"linear_probe": "linear", "knn": "kNN"}
    notes = []
    random = results.get("random init")
    if random is not None:
        better = [name for key, name in probes.items() if t[key] > random[key]]
        if len(better) == 2:
            verdict = "training added to what the architecture gives untrained"
        elif not better:
            verdict = ("training added nothing measurable; look for a collapse warning above, "
                       "and try a lower optim.lr or more train.epochs")
        else:
            verdict = f"training helped the {better[0]} probe only"
        notes.append(f"{trained} vs random init (same architecture and seed, never trained): "
                     f"{_points(t['linear_probe'], random['linear_probe'])} points linear, "
                     f"{_points(t['knn'], random['knn'])} kNN{grain}: {verdict}. This is the "
                     f"comparison that shows what training learned.")
    pixels = results.get("raw pixels")
    if pixels is not None:
        ahead = [name for key, name in probes.items() if pixels[key] > t[key]]
        gaps = (f"{_points(pixels['linear_probe'], t['linear_probe'])} points linear, "
                f"{_points(pixels['knn'], t['knn'])} kNN against the {trained}")
        if ahead:
            small = ("8x8 digits" if data_name == "digits"
                     else "small, centred images with little variation")
            notes.append(f"raw pixels: {gaps}. On {small} the pixels themselves already "
                         f"separate the classes well, so they are a strong baseline that a "
                         f"short self-supervised run need not beat: they say how easy the "
                         f"data is, not how good the encoder is.")
        else:
            notes.append(f"raw pixels: {gaps}: the encoder's features beat the pixels on "
                         f"both probes.")
    return notes


def print_results(results: dict, console: Any, title: str, data_name: str = "") -> None:
    """Print `evaluate`'s results as one table: a row per feature set, its linear-probe and
    kNN accuracy."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("features", "linear probe acc", "kNN acc"):
        table.add_column(col)
    for name, r in results.items():
        if name != "data":
            table.add_row(name, f"{100 * r['linear_probe']:.1f}%", f"{100 * r['knn']:.1f}%")
    console.print(table)
    data = results.get("data")
    if data:  # soft_wrap: paths stay whole, to copy
        train, test = data["train"], data["test"]
        console.print(f"probes fit on {train['images']} images of {train['split']}",
                      soft_wrap=True)
        console.print(f"tested on {test['images']} images of {test['split']}", soft_wrap=True)
        if data["skipped_images"]:
            console.print(f"[yellow]note:[/yellow] {data['skipped_images']} unreadable image(s) "
                          f"skipped ({train['skipped']} probe-training, {test['skipped']} "
                          f"test)", soft_wrap=True)
    for note in comparison_notes(results, data_name):
        console.print(f"- {note}", markup=False)


def evaluate_run(run: Any, console: Any = None) -> dict | None:
    """The evaluation after training: probes, eval.json, the table. An unlabelled data source
    skips it with a note (None): the training itself succeeded."""
    from rich.console import Console

    console = console or Console(highlight=False)
    try:
        results = evaluate(run.recipe, run.registry, run.target_state, run.device,
                           module=run.method.eval_module, console=console)
    except NoLabels as exc:
        console.print(f"[yellow]note:[/yellow] evaluation skipped: {exc}", soft_wrap=True)
        return None
    (run.run_dir / "eval.json").write_text(json.dumps(results, indent=2))
    print_results(results, console, f"{run.recipe.name}: probes after {run.step} steps",
                  run.recipe.data.name)
    return results


def load_source(source: str) -> tuple[Path, dict]:
    """(path, state) of a checkpoint file, or of the newest readable checkpoint of a run
    directory (falling back past unusable ones, as resume does)."""
    path = Path(source)
    if path.is_dir():
        found = ckpt.newest_readable(path / "checkpoints") or ckpt.newest_readable(path)
        if not found:
            raise RunError(f"{path} holds no checkpoints (looked in {path}/checkpoints).")
        return found
    if not path.exists():
        raise RunError(f"{path} is neither a run directory nor a checkpoint file.")
    return path, ckpt.load(path)


def eval_command(source: str, registry: Registry, overrides: list[str], baseline: bool,
                 console: Any) -> int:
    """`jepa eval`: load a checkpoint (or a run folder), probe its eval module and, with
    `baseline`, a random-init encoder and raw pixels; print the table. Returns the exit code."""
    path, state = load_source(source)
    notes: list[str] = []
    try:
        recipe = recipe_from_dict(state["recipe"], registry, f"recipe saved in {path}",
                                  overrides, notes)
    finally:  # a component switched by an override (see jepa_core.recipe.switch_component)
        from rich.markup import escape

        for note in notes:
            console.print(f"[yellow]note:[/yellow] {escape(note)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = state["eval_module"]
    results = evaluate(recipe, registry, state["modules"][module], device, baseline, module,
                       console=console)
    print_results(results, console, f"{path}: step {state['step']}", recipe.data.name)
    return 0
