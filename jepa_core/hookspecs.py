"""The hooks a jepa plugin can implement. Project name for pluggy: "jepa".

Registration hooks (one per component kind) are called once, when the registry is built. Each
receives a `register` callback:

    register(name, config_class, factory, *, description="")

- name: the recipe name of the component (`masker: {name: multiblock}`), unique per kind.
- config_class: a frozen attrs class; the recipe section (minus `name`) is validated by it.
- factory: builds the component from a config instance, `factory(config, **context)`, or a
  "module:attribute" string naming such a callable, imported only when the component is built
  (keeps torch out of plugin entry modules). The context each kind receives is listed on its
  hook below.

Lifecycle hooks are called by the trainer on every rank unless said otherwise; `run` is the
trainer's `RunContext` (recipe, out_dir, rank, world_size, models, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "jepa"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def register_methods(register: Register) -> None:
    """Register JEPA methods (I-JEPA, LeJEPA, ...). factory(config, parts=MethodParts) ->
    `Method` (see `jepa_core.interfaces.Method`).

    `parts` builds the recipe's other sections on request (`parts.build("encoder")`, inside
    `parts.seeded_init()` for a reproducible initialisation) and knows the run's length
    (`parts.total_steps`). A method's config class may define `needs(self) -> tuple[str, ...]`,
    the recipe sections it uses; a recipe that lacks one, or has one it does not use, is refused
    before anything is built. A recipe without a `method:` section runs `ijepa`.
    """


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoders. factory(config) -> `Encoder` (a torch.nn.Module).

    The encoder decides the image size and patch grid; the core reads them from the built
    module (`image_size`, `patch_grid`) and hands them to the masker and the data source.
    Config fields `num_frames` (clips) and `img_size` (side in px), if any, are compared with
    the data config's fields of the same name: a recipe where they differ is refused
    (`jepa_core.geometry`).
    """


@hookspec
def register_predictors(register: Register) -> None:
    """Register predictors. factory(config, encoder=Encoder) -> `Predictor` (a torch.nn.Module).

    The encoder is passed so the predictor can match its width, heads and patch grid.
    """


@hookspec
def register_maskers(register: Register) -> None:
    """Register maskers. factory(config, grid=(gh, gw)) -> `Masker`.

    The grid is the encoder's `patch_grid`, of any rank: (gh, gw) for images, (t, gh, gw)
    for video (a masker that needs one rank raises ConfigError for another).

    The factory must raise `jepa_core.errors.ConfigError` for a configuration that can never
    produce valid masks on that grid (it must not loop forever at sampling time).
    """


@hookspec
def register_target_updaters(register: Register) -> None:
    """Register target updaters. factory(config, total_steps=int) -> `TargetUpdater`."""


@hookspec
def register_losses(register: Register) -> None:
    """Register losses. factory(config) -> `Loss`."""


@hookspec
def register_data_sources(register: Register) -> None:
    """Register data sources. factory(config, image_size=(H, W), train=bool) -> `DataSource`.

    train=False asks for the split used by `jepa eval` as held-out data, if the source has one.
    Config fields `num_frames` (clips) and `img_size` (None: the encoder's), if any, must equal
    the encoder config's fields of the same name (`jepa_core.geometry`). A sample the source
    cannot read raises `BadSample`: training replaces it and counts it.
    """


@hookspec
def register_eval_protocols(register: Register) -> None:
    """Register evaluation protocols (kNN, linear probe, ...). factory(config) -> `EvalProtocol`
    (see `jepa_core.interfaces.EvalProtocol`): a protocol reads the feature cache that
    `jepa eval` writes once per encoder, and returns its results; recipes list the protocols
    to run under `eval.protocols`.
    """


@hookspec
def on_train_start(run: Any) -> None:
    """Called once after every component is built and before the first step (or resumed step)."""


@hookspec
def on_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    """Called after each optimizer step and target update. `step` counts completed steps
    (1 after the first); `metrics` holds this step's figures (loss, lr, wd, momentum, ...)."""


@hookspec
def on_checkpoint_saved(run: Any, path: str, step: int) -> None:
    """Called on rank 0 after a checkpoint file is complete and in place at `path`."""


@hookspec
def on_train_end(run: Any, metrics: dict[str, float]) -> None:
    """Called once when training finishes normally, with the last step's metrics."""


REGISTRATION_HOOKS = {
    "method": "register_methods",
    "encoder": "register_encoders",
    "predictor": "register_predictors",
    "masker": "register_maskers",
    "target_updater": "register_target_updaters",
    "loss": "register_losses",
    "data_source": "register_data_sources",
    "eval_protocol": "register_eval_protocols",
}
