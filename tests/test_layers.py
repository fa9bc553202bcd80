"""The package layout is the architecture: the kernel (jepa_core/*.py) imports nothing above
it, and no core module imports a concrete plugin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "jepa_core"
PLUGINS = ("jepa_image", "jepa_vit", "jepa_objectives")
KERNEL = sorted(p for p in CORE.glob("*.py") if p.name != "__main__.py")  # __main__: the CLI


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", KERNEL, ids=[p.stem for p in KERNEL])
def test_the_kernel_imports_neither_runtime_nor_commands(path):
    above = {n for n in imported(path)
             if n.startswith(("jepa_core.runtime", "jepa_core.commands"))}
    assert not above, f"{path.name} imports {sorted(above)}"


def test_no_core_module_imports_a_concrete_plugin():
    offenders = {str(p.relative_to(CORE)): sorted(n for n in imported(p) if n.startswith(PLUGINS))
                 for p in CORE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
