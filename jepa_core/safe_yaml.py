"""YAML for recipes: PyYAML's safe loader with the limits a recipe file needs.

`yaml.safe_load` runs no code, but it accepts input that is cheap to write and ruinous to use:
aliases that grow a 500-byte file into 10^9 values once expanded ("billion laughs"), nesting
deep enough to overflow Python's stack, an alias inside the section it names (a cycle), and
duplicate keys, where the later silently replaces the earlier. `load(text)` refuses each and
says where, as ("$.path", message) problems.

    data = load("optim: {lr: 1.0e-3}")   # {"optim": {"lr": 0.001}}
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 100  # sections inside sections (a recipe needs 3)
MAX_VALUES = 100_000  # keys and values once aliases are expanded (a recipe has about 200)
MAX_CHARS = 10_000_000  # characters of scalar text once aliases are expanded
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlProblem(Exception):
    """What is wrong with a YAML text: ("$.path", message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))
        self.problems = problems


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing nesting beyond MAX_DEPTH while it composes (the composer is
    recursive, so a deeper document would end in a RecursionError)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlProblem([("$", f"nests sections or lists deeper than {MAX_DEPTH} "
                                         f"levels (at line {mark.line + 1}, column "
                                         f"{mark.column + 1}); a recipe needs a few")])
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _key_text(node: Any) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"


def _duplicates(node: yaml.MappingNode, path: str) -> list[tuple[str, str]]:
    """Keys written twice in one mapping (merge keys `<<` may be overridden: that is their use)."""
    first: dict[tuple[str, str], int] = {}
    problems = []
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) not in first:
            first[key.tag, key.value] = line
            continue
        earlier = first[key.tag, key.value]
        where = f"lines {earlier} and {line}" if earlier != line else f"both on line {line}"
        problems.append((f"{path}.{key.value}", (
            f"key {key.value!r} is written twice in this section ({where}); YAML would keep "
            f"only the second, silently. Keep one of them")))
    return problems


class _Walk:
    """One pass over the composed node graph, each node once (aliases share nodes): the size
    the document has once aliases are expanded, cycles, and duplicate keys."""

    def __init__(self) -> None:
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, characters)
        self.open: set[int] = set()
        self.problems: list[tuple[str, str]] = []

    def size(self, node: Any, path: str) -> tuple[int, int]:
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        if key in self.open:
            raise YamlProblem([(path, "is an alias (*name) of a section that contains it; a "
                                      "recipe cannot refer to itself")])
        self.open.add(key)
        values, chars = 1, 0
        if isinstance(node, yaml.ScalarNode):
            chars = len(node.value)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                values, chars = _add((values, chars), self.size(item, f"{path}[{i}]"), path)
        elif isinstance(node, yaml.MappingNode):
            self.problems += _duplicates(node, path)
            for k, v in node.value:
                values, chars = _add((values, chars), self.size(k, path), path)
                values, chars = _add((values, chars), self.size(v, f"{path}.{_key_text(k)}"),
                                     path)
        self.open.discard(key)
        self.sizes[key] = (values, chars)
        return values, chars


def _add(total: tuple[int, int], part: tuple[int, int], path: str) -> tuple[int, int]:
    values, chars = total[0] + part[0], total[1] + part[1]
    if values > MAX_VALUES or chars > MAX_CHARS:
        raise YamlProblem([(path, (
            f"expands to more than {MAX_VALUES:,} values or {MAX_CHARS:,} characters once its "
            f"aliases (*name) are replaced by the anchored (&name) sections they repeat; a "
            f"recipe is far smaller. Write the sections out, or use fewer aliases"))])
    return values, chars


def load(text: str) -> Any:
    """The data of one YAML document; YamlProblem for the limits above, yaml.YAMLError for
    text that is not YAML."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        walk = _Walk()
        walk.size(node, "$")
        if walk.problems:
            raise YamlProblem(walk.problems)
        return loader.construct_document(node)
    finally:
        loader.dispose()
