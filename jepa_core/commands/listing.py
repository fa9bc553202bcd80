"""`jepa plugins`: what is installed, where each component comes from, what failed to load."""

from __future__ import annotations

from typing import Any

from jepa_core.plugins import AUTOLOAD_OFF_ENV, Registry


def plugins_json(registry: Registry) -> dict:
    """What `jepa plugins --json` prints: components, plugins, broken, refused, left out."""
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
        "refused": [
            {"kind": r.kind, "name": r.name, "plugin": r.plugin, "distribution": r.distribution,
             "kept_by": r.kept_by, "message": r.message}
            for r in registry.refused
        ],
        "blocked": list(registry.blocked),
    }


def print_plugins(registry: Registry, console: Any) -> None:
    """The components table, then broken plugins, refused components and left-out plugins."""
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
        console.print(f"Fix or uninstall it, leave it out with `jepa -p no:NAME`, or set "
                      f"{AUTOLOAD_OFF_ENV}=1 and load plugins explicitly with `jepa -p MODULE`. "
                      f"`jepa run` refuses until then.")
    print_refused(registry, console)
    if registry.blocked:
        console.print(f"left out: {', '.join(registry.blocked)}")


def print_refused(registry: Registry, console: Any) -> None:
    """A warning per component refused because its name was taken."""
    from rich.markup import escape

    for r in registry.refused:
        console.print(f"[yellow]warning:[/yellow] {escape(r.message)}")
