"""Build what a recipe names: the data source and masker, then the method, which builds the
models it owns through `MethodParts` (seeded initialisation, never global RNG)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import torch

from jepa_core.errors import ConfigError, PluginError
from jepa_core.interfaces import (
    PROTOCOLS,
    DataSource,
    Masker,
    Method,
    missing_members,
    protocol_members,
)
from jepa_core.recipe import Recipe
from jepa_core.seeding import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import ComponentSpec, Registry


@attrs.define
class Components:
    """What a run trains with: the method (which owns the models), the masker, the training
    data source, and the step counts the schedules span."""
    method: Method  # owns the models
    masker: Masker | None  # None when the recipe has no masker section
    source: DataSource  # training data source
    steps_per_epoch: int
    total_steps: int  # the whole run: schedules span it even when train.max_steps stops early


def build(kind: str, recipe: Recipe, registry: Registry, section: str, **context: Any) -> Any:
    """Build the recipe section `section` (a component of `kind`) with its plugin's factory,
    checked against the kind's interface (`conforming`)."""
    comp = getattr(recipe, section)
    spec = registry.get(kind, comp.name)
    return conforming(kind, spec, spec.build(comp.config, **context))


def conforming(kind: str, spec: ComponentSpec, obj: Any) -> Any:
    """`obj`, built by `spec`'s factory, if it has every member of its kind's interface in
    `jepa_core.interfaces.PROTOCOLS`; otherwise a PluginError naming the plugin, the component
    and the missing members, raised before anything uses the object."""
    protocol = PROTOCOLS.get(kind)
    missing = missing_members(obj, protocol) if protocol is not None else []
    if not missing:
        return obj
    assert protocol is not None
    needs = ", ".join(f"`{m}()`" if callable(getattr(protocol, m, None)) else f"`{m}`"
                      for m in protocol_members(protocol))
    article = "An" if kind[0] in "aeiou" else "A"
    raise PluginError(
        f"plugin {spec.plugin!r} built {kind} {spec.name!r}, but its factory returned a "
        f"{type(obj).__module__}.{type(obj).__qualname__}, which is not a "
        f"jepa_core.interfaces.{protocol.__name__}: it lacks "
        f"{', '.join(f'`{m}`' for m in missing)}. {article} {kind} must have {needs} (see the "
        f"docstring of jepa_core.interfaces.{protocol.__name__}). Fix the factory of "
        f"{kind} {spec.name!r} to return an object with those members, or report it to "
        f"the plugin's authors.")


@contextlib.contextmanager
def seeded_init(recipe: Recipe) -> Iterator[None]:
    """Initialise modules from (seed, "init") without touching the global RNG: everything
    built inside draws, in order, from one stream seeded by the recipe."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(recipe.seed, "init"))
        yield


@attrs.define
class MethodParts:
    """What a method's factory receives: the recipe's other sections, built on request.

    build(section, **context) builds the recipe section `section` ("encoder", "predictor",
    "loss", "target_updater", ...) with its plugin's factory; the context each kind receives
    is documented in `jepa_core.hookspecs` (the predictor gets `encoder=`; a target updater
    gets `total_steps=` from here unless given). Build modules inside `seeded_init()`, the
    encoder first: `jepa eval`'s random-init baseline is the encoder drawn first in that stream.
    """

    recipe: Recipe
    registry: Registry
    total_steps: int
    steps_per_epoch: int

    def build(self, section: str, **context: Any) -> Any:
        """Build the recipe section `section` with its plugin's factory and `context`; a
        ConfigError if the recipe lacks that section."""
        comp = getattr(self.recipe, section, None)
        if comp is None:
            raise ConfigError(f"method {self.recipe.method_name!r} asked for the recipe's "
                              f"{section!r} section, which this recipe does not have; add "
                              f"`{section}: {{name: ...}}` to the recipe.")
        if comp.kind == "target_updater":
            context.setdefault("total_steps", self.total_steps)
        spec = self.registry.get(comp.kind, comp.name)
        return conforming(comp.kind, spec, spec.build(comp.config, **context))

    def seeded_init(self) -> contextlib.AbstractContextManager:
        """A context in which module initialisation draws from the recipe's (seed, "init")
        stream (`seeded_init`)."""
        return seeded_init(self.recipe)


def build_models(recipe: Recipe, registry: Registry) -> tuple[torch.nn.Module, Any]:
    """Encoder and predictor (None without a predictor section), initialised from
    (seed, "init") in the order every method builds them."""
    with seeded_init(recipe):
        encoder = build("encoder", recipe, registry, "encoder")
        predictor = (build("predictor", recipe, registry, "predictor", encoder=encoder)
                     if recipe.predictor is not None else None)
    return encoder, predictor


def build_encoder(recipe: Recipe, registry: Registry) -> torch.nn.Module:
    """The recipe's encoder as every method initialises it (the first draw of the init
    stream): `jepa eval`'s random-init baseline and the module a checkpoint loads into."""
    with seeded_init(recipe):
        return build("encoder", recipe, registry, "encoder")


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy with no gradients (a target encoder starts as the online one)."""
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def encoder_geometry(recipe: Recipe,
                     registry: Registry) -> tuple[tuple[int, int], tuple[int, ...]]:
    """((H, W) image size, patch grid) of the recipe's encoder, read off an encoder built on
    the meta device (no memory, no init cost), so any encoder plugin answers. The grid has any
    rank: (gh, gw) for images, (t, gh, gw) for video."""
    with torch.device("meta"):
        probe = build("encoder", recipe, registry, "encoder")
    (h, w), grid = probe.image_size, probe.patch_grid
    return (int(h), int(w)), tuple(int(g) for g in grid)


def build_data(recipe: Recipe, registry: Registry) -> tuple[DataSource, Masker | None]:
    """(training data source, masker or None), sized by the encoder's geometry."""
    image_size, grid = encoder_geometry(recipe, registry)
    source = build("data_source", recipe, registry, "data", image_size=image_size, train=True)
    masker = (build("masker", recipe, registry, "masker", grid=grid)
              if recipe.masker is not None else None)
    return source, masker


def build_components(recipe: Recipe, registry: Registry) -> Components:
    # The data source and masker come first, so missing data or an impossible masker fail
    # before minutes of model building.
    """Build the data source and masker, then the method (through MethodParts), and the
    run's step counts."""
    source, masker = build_data(recipe, registry)
    spe = steps_per_epoch(recipe, len(source))
    total = total_steps(recipe, spe)
    parts = MethodParts(recipe, registry, total, spe)
    method = build("method", recipe, registry, "method", parts=parts)
    return Components(method, masker, source, spe, total)


def steps_per_epoch(recipe: Recipe, data_len: int) -> int:
    """`train.steps_per_epoch`, or full global batches in `data_len` images (at least 1);
    warns when a batch is larger than the data set."""
    batch = recipe.train.global_batch_size
    if data_len < batch:  # each step's batch wraps around the data set: repeats in one batch
        print(f"warning: train.global_batch_size={batch} is larger than the data set "
              f"({data_len} training images): every batch holds some images more than once. "
              f"Use a global batch of at most {data_len} or more data.", file=sys.stderr)
    if recipe.train.steps_per_epoch is not None:
        return recipe.train.steps_per_epoch
    return max(1, data_len // recipe.train.global_batch_size)


def total_steps(recipe: Recipe, spe: int) -> int:
    """Steps of the whole run: epochs x steps per epoch, rounded, at least 1."""
    return max(1, int(round(recipe.train.epochs * spe)))
