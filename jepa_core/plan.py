"""`jepa check`: the resolved recipe and the plan of the run it describes."""

from __future__ import annotations

from typing import Any

from jepa_core.recipe import Recipe, recipe_to_yaml


def print_check(recipe: Recipe, registry: Any, console: Any, gpus: int | None = None) -> None:
    from rich.syntax import Syntax

    console.print(f"[green]recipe {recipe.name!r} is valid[/green]")
    console.print(Syntax(recipe_to_yaml(recipe), "yaml", theme="ansi_dark", background_color="default"))
    for kind in ("data", "encoder", "predictor", "masker", "target_updater", "loss"):
        comp = getattr(recipe, kind)
        spec = registry.get(comp.kind, comp.name)
        console.print(f"{kind}: {comp.name} from plugin {spec.plugin} "
                      f"({spec.distribution or 'no distribution'} {spec.version or ''})".rstrip())
