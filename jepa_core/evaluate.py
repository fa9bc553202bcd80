"""`jepa eval`: linear probe and kNN on frozen, average-pooled encoder features.

The I-JEPA paper evaluates the target encoder, average-pooled over all patch tokens (no cls
token). For context, the same probes run on a randomly initialised encoder of the same
architecture and on raw pixels, so "it learned something" is a measured statement.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from jepa_core import checkpoint as ckpt
from jepa_core.build import build, build_models
from jepa_core.errors import RunError
from jepa_core.recipe import EvalConfig, Recipe, recipe_from_dict


def _images(source: Any, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(source) if limit is None else min(limit, len(source))
    pairs = [source.get(i, None) for i in range(n)]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


@torch.no_grad()
def pooled_features(encoder: torch.nn.Module, images: torch.Tensor, batch_size: int,
                    device: torch.device) -> torch.Tensor:
    """[n, C, H, W] → [n, D]: encoder tokens averaged over patches."""
    encoder.eval()
    out = []
    for chunk in images.split(batch_size):
        out.append(encoder(chunk.to(device)).float().mean(dim=1).cpu())
    return torch.cat(out)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, num_classes: int, cfg: EvalConfig) -> float:
    """Multinomial logistic regression on standardised features (full batch, L-BFGS)."""
    mean, std = train_x.mean(0), train_x.std(0)
    std = std.clamp_min(1e-2 * float(std.mean()) + 1e-8)  # near-constant inputs stay small
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(xtr.shape[1], num_classes, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=cfg.probe_epochs,
                            line_search_fn="strong_wolfe")
    l2 = 1e-3

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, train_y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == test_y).float().mean())


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


def probe_all(features: dict[str, tuple[torch.Tensor, torch.Tensor]], labels: tuple,
              num_classes: int, cfg: EvalConfig) -> dict[str, dict[str, float]]:
    ytr, yte = labels
    results = {}
    for name, (xtr, xte) in features.items():
        results[name] = {
            "linear_probe": linear_probe(xtr, ytr, xte, yte, num_classes, cfg),
            "knn": knn_accuracy(xtr, ytr, xte, yte, num_classes, cfg.knn_k),
        }
    return results


def evaluate(recipe: Recipe, registry: Any, target_state: dict, device: torch.device,
             baseline: bool = True) -> dict[str, dict[str, float]]:
    """Probe the target encoder given by `target_state`; with baselines (random init, pixels)."""
    encoder, _ = build_models(recipe, registry)
    random_state = {k: v.clone() for k, v in encoder.state_dict().items()}
    size = tuple(encoder.image_size)
    train_src = build("data_source", recipe, registry, "data", image_size=size, train=True)
    test_src = build("data_source", recipe, registry, "data", image_size=size, train=False)
    if not train_src.num_classes:
        raise RunError(f"data source {recipe.data.name!r} has no labels; `jepa eval` needs a "
                       f"labelled source (set data=... to one with class folders or labels).")
    limit = recipe.eval.max_images
    xtr_img, ytr = _images(train_src, limit)
    xte_img, yte = _images(test_src, limit)
    encoder.to(device)
    feats = {}
    for name, state in [("trained target encoder", target_state),
                        *([("random init", random_state)] if baseline else [])]:
        encoder.load_state_dict(state)
        feats[name] = tuple(pooled_features(encoder, x, recipe.eval.batch_size, device)
                            for x in (xtr_img, xte_img))
    if baseline:
        feats["raw pixels"] = (xtr_img.flatten(1), xte_img.flatten(1))
    return probe_all(feats, (ytr, yte), train_src.num_classes, recipe.eval)


def print_results(results: dict, console: Any, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("features", "linear probe acc", "kNN acc"):
        table.add_column(col)
    for name, r in results.items():
        table.add_row(name, f"{100 * r['linear_probe']:.1f}%", f"{100 * r['knn']:.1f}%")
    console.print(table)


def evaluate_run(run: Any, console: Any = None) -> dict:
    from rich.console import Console

    console = console or Console(highlight=False)
    results = evaluate(run.recipe, run.registry, run.target_state, run.device)
    (run.run_dir / "eval.json").write_text(json.dumps(results, indent=2))
    print_results(results, console, f"{run.recipe.name}: probes after {run.step} steps")
    return results


def resolve_checkpoint(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        found = ckpt.list_checkpoints(path / "checkpoints") or ckpt.list_checkpoints(path)
        if not found:
            raise RunError(f"{path} holds no checkpoints (looked in {path}/checkpoints).")
        return found[-1]
    if not path.exists():
        raise RunError(f"{path} is neither a run directory nor a checkpoint file.")
    return path


def eval_command(source: str, registry: Any, overrides: list[str], baseline: bool,
                 console: Any) -> int:
    path = resolve_checkpoint(source)
    state = ckpt.load(path)
    recipe = recipe_from_dict(state["recipe"], registry, f"recipe saved in {path}", overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = evaluate(recipe, registry, state["target_encoder"], device, baseline)
    print_results(results, console, f"{path}: step {state['step']}")
    return 0
