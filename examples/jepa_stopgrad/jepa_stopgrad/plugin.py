"""Entry module: registers the method. No torch here, so `jepa plugins` stays fast."""

import attrs

from jepa_core.hookspecs import hookimpl


@attrs.frozen
class StopGradConfig:
    """I-JEPA without a teacher: targets from the encoder itself, under stop-gradient."""

    # Layer-norm the targets over features (as I-JEPA does); false: raw encoder tokens.
    normalise_targets: bool = True

    def needs(self) -> tuple[str, ...]:
        """The recipe sections this method uses (besides data and encoder)."""
        return ("predictor", "masker", "loss")


@hookimpl
def register_methods(register):
    register("stopgrad_jepa", StopGradConfig, "jepa_stopgrad.method:build")
