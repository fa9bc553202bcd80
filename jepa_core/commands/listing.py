"""`jepa plugins`: what is installed, where each component comes from, what failed to load."""

from __future__ import annotations

from typing import Any

from jepa_core.plugins import AUTOLOAD_OFF_ENV


def plugins_json(registry: Any) -> dict:
    return {
        "components": [
            {"kind": s.kind, "name": s.name, "plugin": s.plugin, "distribution": s.distribution,
             "version": s.version, "description": s.description}
            for s in registry.all_components()
        ],
        "plugins": [
            {"name": p.name, "source": p.source, "distribution": p.distribution,
             "version": p.version, "module": p.module}
            for p in registry.plugins.values()
        ],
        "broken": [
            {"name": b.name, "source": b.source, "distribution": b.distribution, "error": b.error}
            for b in registry.broken
        ],
    }


def print_plugins(registry: Any, console: Any) -> None:
    from rich.table import Table

    table = Table(title="jepa components", title_justify="left")
    for col in ("kind", "name", "plugin", "distribution", "version"):
        table.add_column(col, no_wrap=True)
    wide = console.width >= 110  # descriptions only where they fit
    if wide:
        table.add_column("description", overflow="fold", ratio=1)
    for s in registry.all_components():
        row = [s.kind, s.name, s.plugin, s.distribution or "-", s.version or "-"]
        table.add_row(*row, *([s.description] if wide else []))
    console.print(table)
    for b in registry.broken:
        console.print(f"[red]broken plugin[/red] {b.name} ({b.source}"
                      f"{', ' + b.distribution if b.distribution else ''}): {b.error}")
    if registry.broken:
        console.print(f"Fix or uninstall it, or set {AUTOLOAD_OFF_ENV}=1 and load plugins "
                      f"explicitly with `jepa -p MODULE`. `jepa run` refuses until then.")
