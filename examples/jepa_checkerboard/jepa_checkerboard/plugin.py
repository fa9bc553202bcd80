"""Entry module (group "jepa"): registers the masker. No torch here, so `jepa plugins` and
recipe validation stay fast; the masker module is imported only when a run builds it."""

from typing import ClassVar

import attrs

from jepa_core.hookspecs import hookimpl
from jepa_core.validate import at_least


@attrs.frozen
class CheckerboardConfig:
    """Context: one colour of a checkerboard of cell x cell patches; targets: cells of the other."""

    # For tests only: jepa_core.testing.strategies.masker_configs draws configs from here.
    hypothesis_configs: ClassVar[str] = "jepa_checkerboard.strategies:checkerboard_configs"

    cell: int = attrs.field(default=2, validator=at_least(1))  # cell side, in patches
    num_targets: int = attrs.field(default=2, validator=at_least(1))


@hookimpl
def register_maskers(register):
    register("checkerboard", CheckerboardConfig, "jepa_checkerboard.masker:build_masker")
