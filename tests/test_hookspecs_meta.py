"""Keeps the hooks honest: every hookspec has a docstring, a section in docs/hooks.md with an
example that runs, and at least one test that uses it.

"Used by a test" is read from the text of the other test files: the hook's name must appear
in one of them. The examples in docs/hooks.md do not count, since they only show the call.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from jepa_core import hookspecs, plugins
from jepa_core.plugins import make_plugin_manager

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "hooks.md"
TESTS = Path(__file__).resolve().parent
HOOKS = sorted(name for name, obj in vars(hookspecs).items()
               if callable(obj) and hasattr(obj, f"{hookspecs.PROJECT}_spec"))
HEADING = re.compile(r"^### `(\w+)`\s*$", re.MULTILINE)
PY_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_sections() -> dict[str, str]:
    """Hook name → the text of its `### \\`name\\`` section (up to the next heading), from the
    parts "## Registration hooks" and "## Lifecycle hooks"."""
    text = DOCS.read_text()
    start, end = text.find("## Registration hooks"), text.find("## When it breaks")
    assert 0 <= start < end, "docs/hooks.md needs '## Registration hooks' ... '## When it breaks'"
    text = text[start:end]
    marks = list(HEADING.finditer(text))
    sections = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end():end]
        body = re.split(r"^#{1,3} ", body, flags=re.MULTILINE)[0]  # stop at any heading
        sections[mark.group(1)] = body
    return sections


def other_tests_text() -> str:
    return "\n".join(p.read_text() for p in sorted(TESTS.rglob("*.py"))
                     if p.resolve() != Path(__file__).resolve())


def test_hookspecs_are_found():
    assert set(hookspecs.REGISTRATION_HOOKS.values()) <= set(HOOKS)
    assert {"on_train_start", "on_step_end", "on_checkpoint_saved", "on_train_end"} <= set(HOOKS)
    # the module's own plugin manager accepts exactly these as hooks
    pm = make_plugin_manager(autoload=False).pm
    assert sorted(h for h in vars(pm.hook) if not h.startswith("_")) == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_has_a_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.split()) >= 5, f"hookspec {hook} needs a docstring: when, arguments, return"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_arguments(hook):
    sections = doc_sections()
    assert hook in sections, f"docs/hooks.md has no section `### \\`{hook}\\``"
    section = sections[hook]
    for arg in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert re.search(rf"\b{arg}\b", section), f"docs/hooks.md: {hook} never mentions {arg}"
    blocks = PY_BLOCK.findall(section)
    assert blocks, f"docs/hooks.md: the {hook} section has no ```python example"
    assert any(re.search(rf"@hookimpl\s+def {hook}\(", b) for b in blocks), \
        f"docs/hooks.md: the {hook} example does not implement {hook} with @hookimpl"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_example_runs(hook, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for var in (plugins.AUTOLOAD_OFF_ENV, plugins.EXTRA_PLUGINS_ENV, plugins.TRACE_ENV):
        monkeypatch.delenv(var, raising=False)
    for i, code in enumerate(PY_BLOCK.findall(doc_sections().get(hook, ""))):
        exec(compile(code, f"docs/hooks.md[{hook} example {i + 1}]", "exec"),
             {"__name__": f"hooks_md_{hook}"})


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook):
    assert re.search(rf"\b{hook}\b", other_tests_text()), (
        f"no test in tests/ uses the hook {hook}: add one that makes the core call it")


def test_docs_name_no_hook_that_does_not_exist():
    assert sorted(doc_sections()) == HOOKS


def test_docs_cover_discovery_switches_and_the_register_signature():
    text = DOCS.read_text()
    for heading in ("## Discovery order", "## The `register` callback", "## When it breaks"):
        assert heading in text
    for var in (plugins.AUTOLOAD_OFF_ENV, plugins.EXTRA_PLUGINS_ENV, plugins.TRACE_ENV):
        assert re.search(rf"^###.*`{var}`", text, re.MULTILINE), \
            f"docs/hooks.md has no section on {var}"
    assert f"group `{plugins.ENTRY_POINT_GROUP}`" in text
    register = make_plugin_manager(autoload=False)._register_callback("masker", "doc")
    params = inspect.signature(register).parameters.values()
    shown = ", ".join(
        (f"*, {p.name}" if p.kind is p.KEYWORD_ONLY else p.name)
        + (f"={p.default!r}".replace("''", '""') if p.default is not p.empty else "")
        for p in params)
    assert f"register({shown})" in text
