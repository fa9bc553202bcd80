"""Build the components a recipe names, with seeded initialisation."""

from __future__ import annotations

import copy
import sys
from typing import Any

import attrs
import torch

from jepa_core.recipe import Recipe
from jepa_core.seeding import derive_seed


@attrs.define
class Components:
    encoder: torch.nn.Module  # the context (online) encoder
    target_encoder: torch.nn.Module  # EMA of the encoder, no gradients
    predictor: torch.nn.Module
    masker: Any
    loss: Any
    target_updater: Any
    source: Any  # training data source
    steps_per_epoch: int
    total_steps: int  # the whole run: schedules span it even when train.max_steps stops early


def build(kind: str, recipe: Recipe, registry: Any, section: str, **context: Any) -> Any:
    comp = getattr(recipe, section)
    return registry.get(kind, comp.name).build(comp.config, **context)


def build_models(recipe: Recipe, registry: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Encoder and predictor, initialised from (seed, "init") without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(recipe.seed, "init"))
        encoder = build("encoder", recipe, registry, "encoder")
        predictor = build("predictor", recipe, registry, "predictor", encoder=encoder)
    return encoder, predictor


def make_target(encoder: torch.nn.Module) -> torch.nn.Module:
    target = copy.deepcopy(encoder)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def encoder_geometry(recipe: Recipe, registry: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W) image size, (gh, gw) patch grid) of the recipe's encoder, read off an encoder
    built on the meta device (no memory, no init cost), so any encoder plugin answers."""
    with torch.device("meta"):
        probe = build("encoder", recipe, registry, "encoder")
    return tuple(int(s) for s in probe.image_size), tuple(int(s) for s in probe.patch_grid)


def build_data(recipe: Recipe, registry: Any) -> tuple[Any, Any]:
    """(training data source, masker), sized by the encoder's geometry."""
    image_size, grid = encoder_geometry(recipe, registry)
    source = build("data_source", recipe, registry, "data", image_size=image_size, train=True)
    masker = build("masker", recipe, registry, "masker", grid=grid)
    return source, masker


def build_components(recipe: Recipe, registry: Any) -> Components:
    # The data source and masker come first, so missing data or an impossible masker fail
    # before minutes of model building.
    source, masker = build_data(recipe, registry)
    encoder, predictor = build_models(recipe, registry)
    spe = steps_per_epoch(recipe, len(source))
    total = total_steps(recipe, spe)
    loss = build("loss", recipe, registry, "loss")
    updater = build("target_updater", recipe, registry, "target_updater", total_steps=total)
    return Components(encoder, make_target(encoder), predictor, masker, loss, updater, source,
                      spe, total)


def steps_per_epoch(recipe: Recipe, data_len: int) -> int:
    batch = recipe.train.global_batch_size
    if data_len < batch:  # each step's batch wraps around the data set: repeats in one batch
        print(f"warning: train.global_batch_size={batch} is larger than the data set "
              f"({data_len} training images): every batch holds some images more than once. "
              f"Use a global batch of at most {data_len} or more data.", file=sys.stderr)
    if recipe.train.steps_per_epoch is not None:
        return recipe.train.steps_per_epoch
    return max(1, data_len // recipe.train.global_batch_size)


def total_steps(recipe: Recipe, spe: int) -> int:
    return max(1, int(round(recipe.train.epochs * spe)))
