"""Every public function, class and method of the core (`jepa_core/**/*.py`, names not starting
with `_`) has a docstring. Read with `ast`, so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "jepa_core"

NOT_YET: set[str] = set()  # every module of the core is held to it


def public_defs(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, dotted name) of each public def/class at module level or in a public class;
    functions nested in functions are private helpers and not listed."""
    found: list[tuple[int, str]] = []

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):
                continue
            found.append((node.lineno, prefix + node.name))
            if isinstance(node, ast.ClassDef):
                walk(node.body, f"{prefix}{node.name}.")

    walk(tree.body, "")
    return found


def undocumented(path: Path) -> list[str]:
    """'file:line name' of each public def/class in `path` without a docstring."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = {(n.lineno, n.name): n for n in ast.walk(tree)
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    rel = path.relative_to(CORE).as_posix()
    out = []
    for line, name in public_defs(tree):
        node = nodes[(line, name.rsplit(".", 1)[-1])]
        if not (ast.get_docstring(node) or "").strip():
            out.append(f"jepa_core/{rel}:{line} {name}")
    return out


def test_every_public_def_of_the_core_has_a_docstring():
    files = sorted(p for p in CORE.rglob("*.py")
                   if p.relative_to(CORE).as_posix() not in NOT_YET)
    missing = [entry for f in files for entry in undocumented(f)]
    assert not missing, (f"{len(missing)} public functions/classes without a docstring:\n  "
                         + "\n  ".join(missing))


def test_the_walk_sees_methods_and_skips_private_and_nested_defs():
    tree = ast.parse("class A:\n    def m(self): pass\n    def _p(self): pass\n"
                     "def f():\n    def inner(): pass\n_g = 1\ndef _h(): pass\n")
    assert [name for _, name in public_defs(tree)] == ["A", "A.m", "f"]
