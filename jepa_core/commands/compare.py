"""`jepa eval runs/a runs/b ...`: the evaluations of several runs side by side.

Nothing is evaluated again: each run's `eval.json` is read (format 2, and the format 1 that
`jepa eval` wrote before protocols were plugins), its results lined up by (protocol, feature
kind, features), one column per run, with the best run of each row marked, and the recipe
keys that differ between the runs listed, so a difference in accuracy can be read next to
the difference in settings that may explain it.

    rows = compare(["runs/a", "runs/b"])          # Comparison, also as `to_json()`
    print_comparison(rows, console)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs

from jepa_core.errors import JepaError
from jepa_core.runtime.rundir import check_lookup, is_file

EVAL_NAME = "eval.json"
RECIPE_NAME = "recipe.yaml"
# Recipe keys that differ between any two runs and say nothing about how they trained.
NOT_SETTINGS = ("name", "out_dir")
# Diagnostics whose larger value is the better one (a rank: more dimensions in use).
HIGHER_IS_BETTER = frozenset({"rankme", "effective_rank"})


class CompareError(JepaError):
    """A run that cannot be compared: no eval.json, or one that cannot be read."""

    title = "cannot compare"


@attrs.frozen
class Result:
    """One entry of eval.json's `results`: accuracy per split, or a diagnostic's value."""

    protocol: str
    features: str
    feature_kind: str
    params: dict
    accuracy: dict  # {split: fraction}; empty for a diagnostic
    value: float | None = None  # a diagnostic (e.g. rankme)
    setting: str = ""  # tells apart results of one protocol on one kind (low-shot labels)

    @property
    def key(self) -> tuple[str, str, str]:
        """(protocol [setting], feature kind, features): what a row of the comparison is."""
        protocol = f"{self.protocol} ({self.setting})" if self.setting else self.protocol
        return (protocol, self.feature_kind, self.features)

    def figure(self) -> tuple[float | None, str]:
        """(the figure compared, which split or 'value'): test accuracy where there is one,
        else the first split's, else the diagnostic's value."""
        if self.accuracy:
            split = "test" if "test" in self.accuracy else next(iter(self.accuracy))
            return self.accuracy[split], split
        return self.value, "value"


@attrs.frozen
class RunEval:
    """One run's evaluation as read from disk."""

    label: str  # as the user named it on the command line
    path: Path  # the eval.json read
    step: int | None
    method: str | None
    results: tuple[Result, ...]
    recipe: dict | None  # the run's resolved recipe; None where none could be found
    recipe_from: str  # where the recipe was read, or why there is none
    failed: tuple[str, ...] = ()  # "protocol on features: why" of each failed protocol


def _fail(path: Path, why: str) -> CompareError:
    return CompareError(f"{path}: {why}")


def eval_path(source: str) -> Path:
    """The eval.json of a run directory, or the file itself; CompareError when neither."""
    path = Path(source)
    check_lookup(path, "run")
    if path.is_dir():
        found = path / EVAL_NAME
        if not found.is_file():
            raise CompareError(
                f"run {path} has no {EVAL_NAME}, so there is nothing to compare yet. Evaluate "
                f"it first with `jepa eval {path}` (it writes {found}), then run the "
                f"comparison again.")
        return found
    if path.is_file():
        return path
    raise CompareError(f"{path} is neither a run directory nor an {EVAL_NAME} file; check "
                       f"the path (`jepa eval RUN_A RUN_B ...` compares runs that were "
                       f"evaluated with `jepa eval RUN`).")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def results_of(data: Any, path: Path) -> tuple[Result, ...]:
    """The results of an eval.json's data (format 2 or 1); CompareError naming the file and
    the entry that is not what the format says."""
    if not isinstance(data, dict):
        raise _fail(path, f"is not an evaluation (a JSON object with 'results'); got "
                          f"{type(data).__name__}")
    if data.get("format") == 2:
        entries = data.get("results")
        if not isinstance(entries, list):
            raise _fail(path, "format 2 needs a list under 'results'")
        if not entries:
            failed = data.get("failed")
            failed = failed if isinstance(failed, list) else []
            names = ", ".join(str(f.get("protocol")) for f in failed if isinstance(f, dict))
            why = (f"every protocol failed ({names}: see 'failed' in the file)" if failed
                   else "its 'results' list is empty")
            raise _fail(path, f"holds no results to compare: {why}. Evaluate the run again "
                              f"with `jepa eval {path.parent}`")
        return tuple(_result(entry, i, path) for i, entry in enumerate(entries))
    if "format" not in data:  # format 1: {features: {"linear_probe": acc, "knn": acc}, data}
        return _format1(data, path)
    raise _fail(path, f"has format {data['format']!r}, which this version cannot read (it "
                      f"reads 1 and 2); compare with the jepa version that wrote it")


def _result(entry: Any, i: int, path: Path) -> Result:
    where = f"results[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("protocol"), str):
        raise _fail(path, f"{where} needs a 'protocol' name")
    accuracy = entry.get("accuracy") or {}
    if not isinstance(accuracy, dict) or any(_number(v) is None for v in accuracy.values()):
        raise _fail(path, f"{where}.accuracy must map splits to fractions (got {accuracy!r})")
    value = _number(entry.get("value"))
    if not accuracy and value is None:
        raise _fail(path, f"{where} ({entry['protocol']}) has neither 'accuracy' nor 'value'")
    params = entry.get("params") or {}
    return Result(entry["protocol"], str(entry.get("features", "")),
                  str(entry.get("feature_kind", "")), dict(params) if isinstance(params, dict)
                  else {}, {str(k): float(v) for k, v in accuracy.items()}, value,
                  str(entry.get("setting", "")))


def _format1(data: dict, path: Path) -> tuple[Result, ...]:
    out = []
    for name, probes in data.items():
        if name == "data" or not isinstance(probes, dict):
            continue
        kind = "pixels" if name == "raw pixels" else "avgpool"
        for key, protocol in (("linear_probe", "linear"), ("knn", "knn")):
            if _number(probes.get(key)) is not None:
                out.append(Result(protocol, name, kind, {}, {"test": float(probes[key])}))
    if not out:
        raise _fail(path, "holds no results (neither format 2's 'results' nor format 1's "
                          "{features: {linear_probe, knn}})")
    return tuple(out)


def _run_dir(path: Path, data: dict) -> Path:
    """The run directory of an eval.json: where it lies, or `source.run_dir` of the file."""
    if (path.parent / RECIPE_NAME).is_file():
        return path.parent
    source: dict = data["source"] if isinstance(data.get("source"), dict) else {}
    named = source.get("run_dir")
    if isinstance(named, str) and is_file(Path(named) / RECIPE_NAME):
        return Path(named)
    return path.parent


def read_recipe(path: Path, data: dict) -> tuple[dict | None, str]:
    """(recipe dict, where from): the run directory's recipe.yaml, else the recipe saved in the
    checkpoint eval.json names; (None, why) when neither can be read."""
    from jepa_core.errors import RecipeError
    from jepa_core.recipe import read_yaml

    run_dir = _run_dir(path, data)
    recipe_file = run_dir / RECIPE_NAME
    if is_file(recipe_file):
        try:
            return read_yaml(recipe_file), str(recipe_file)
        except RecipeError as exc:
            return None, f"{recipe_file} unreadable ({exc.problems[0][1]})"
    source: dict = data["source"] if isinstance(data.get("source"), dict) else {}
    checkpoint = source.get("checkpoint")
    if isinstance(checkpoint, str) and is_file(Path(checkpoint)):
        from jepa_core.runtime import checkpoint as ckpt

        try:
            state = ckpt.load(Path(checkpoint))
        except JepaError as exc:
            return None, f"checkpoint {checkpoint} unreadable ({str(exc).splitlines()[0]})"
        if isinstance(state.get("recipe"), dict):
            return state["recipe"], f"recipe saved in {checkpoint}"
    return None, f"no {RECIPE_NAME} in {run_dir} and no readable checkpoint named in {path}"


def read_run(source: str) -> RunEval:
    """One run's eval.json (a run directory or the file), with its recipe."""
    path = eval_path(source)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise _fail(path, f"is not valid JSON ({exc}); evaluate the run again with "
                          f"`jepa eval {path.parent}`") from None
    results = results_of(data, path)
    source_info = data.get("source") if isinstance(data.get("source"), dict) else {}
    step = source_info.get("step")
    recipe, recipe_from = read_recipe(path, data)
    method = source_info.get("method")
    if method is None and recipe is not None and isinstance(recipe.get("method"), dict):
        method = recipe["method"].get("name")
    return RunEval(source, path, step if isinstance(step, int) else None, method, results,
                   recipe, recipe_from, failures_of(data))


def failures_of(data: dict) -> tuple[str, ...]:
    """"protocol (plugin) on features: why" of each entry of eval.json's "failed"."""
    failed = data.get("failed")
    return tuple(f"{f.get('protocol')} (plugin {f.get('plugin')}) on the {f.get('features')} "
                 f"features: {f.get('error')}" for f in (failed if isinstance(failed, list)
                                                         else []) if isinstance(f, dict))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 0.001, ...} of a nested dict (a list is one value)."""
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d} if prefix else {}


_UNSET = "(unset)"


def recipe_differences(recipes: list[dict]) -> dict[str, list[Any]]:
    """{dotted key: [value in each recipe]} for the keys whose values are not all equal
    (a key a recipe lacks reads '(unset)'); name and out_dir left out."""
    flat = [flatten(r) for r in recipes]
    keys = sorted(set().union(*flat)) if flat else []
    out = {}
    for key in keys:
        if key in NOT_SETTINGS:
            continue
        values = [f.get(key, _UNSET) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out


@attrs.frozen
class Row:
    """One row of the comparison: a result's figure in each run, and the best runs."""
    key: tuple[str, str, str]  # (protocol, feature kind, features)
    measure: str  # "accuracy" (in the given split) or "value"
    split: str | None
    values: tuple[float | None, ...]  # one per run; None where the run lacks the row
    params: tuple[dict | None, ...]
    best: tuple[int, ...]  # indices of the best runs; empty where none is better


def _best(values: tuple[float | None, ...], measure: str, protocol: str) -> tuple[int, ...]:
    present = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(present) < 2:
        return ()
    if measure == "value" and protocol not in HIGHER_IS_BETTER:
        return ()  # a diagnostic without a known direction: no winner
    top = max(v for v, _ in present)
    if all(v == top for v, _ in present):
        return ()  # all equal: nobody is better
    return tuple(i for v, i in present if v == top)


@attrs.frozen
class Comparison:
    """Several runs' results side by side, and how their recipes differ."""
    runs: tuple[RunEval, ...]
    rows: tuple[Row, ...]
    differences: dict  # {key: [value per run]} over the runs with a recipe
    compared: tuple[int, ...]  # the runs whose recipes were compared

    def to_json(self) -> dict:
        """The comparison as plain data (`jepa eval A B --json`)."""
        labels = [r.label for r in self.runs]
        return {
            "runs": [{"label": r.label, "eval_json": str(r.path), "step": r.step,
                      "method": r.method, "recipe": r.recipe_from, "failed": list(r.failed)}
                     for r in self.runs],
            "rows": [{"protocol": row.key[0], "feature_kind": row.key[1],
                      "features": row.key[2], "measure": row.measure, "split": row.split,
                      "values": dict(zip(labels, row.values, strict=True)),
                      "params": dict(zip(labels, row.params, strict=True)),
                      "best": [labels[i] for i in row.best]} for row in self.rows],
            "recipe_differences": {k: dict(zip([labels[i] for i in self.compared], v, strict=True))
                                   for k, v in self.differences.items()},
        }


def compare(sources: list[str]) -> Comparison:
    """The comparison of the eval.json of several runs: a row per result, recipe differences."""
    read: list[RunEval] = []
    for source in sources:
        run = read_run(source)
        taken = sum(1 for r in read if r.label == source)
        read.append(attrs.evolve(run, label=f"{source} ({taken + 1})") if taken else run)
    runs = tuple(read)
    order: list[tuple[str, str, str]] = []
    by_run: list[dict] = []
    for run in runs:
        found: dict = {}
        for result in run.results:
            found.setdefault(result.key, result)
            if result.key not in order:
                order.append(result.key)
        by_run.append(found)
    rows = []
    for key in order:
        entries = [found.get(key) for found in by_run]
        figures = [e.figure() if e is not None else (None, None) for e in entries]
        splits = [s for _, s in figures if s is not None]
        measure = "value" if splits and all(s == "value" for s in splits) else "accuracy"
        split = next((s for s in splits if s != "value"), None) if measure == "accuracy" else None
        values = tuple(v if s == (split if measure == "accuracy" else "value") else None
                       for v, s in figures)
        rows.append(Row(key, measure, split, values,
                        tuple(e.params if e is not None else None for e in entries),
                        _best(values, measure, key[0])))
    compared = tuple(i for i, r in enumerate(runs) if r.recipe is not None)
    differences = (recipe_differences([runs[i].recipe or {} for i in compared])
                   if len(compared) >= 2 else {})
    return Comparison(runs, tuple(rows), differences, compared)


def _cell(row: Row, i: int) -> str:
    value = row.values[i]
    if value is None:
        return "-"
    text = f"{100 * value:.1f}%" if row.measure == "accuracy" else f"{value:.4g}"
    return f"[bold]{text} *[/bold]" if i in row.best else text


def _value(v: Any) -> str:
    return "(unset)" if v == _UNSET else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _params_note(row: Row, labels: list[str]) -> str | None:
    present = [(labels[i], p) for i, p in enumerate(row.params) if p is not None]
    if len({json.dumps(p, sort_keys=True) for _, p in present}) <= 1:
        return None
    keys = sorted(set().union(*(p for _, p in present)))
    differing = [k for k in keys if len({json.dumps(p.get(k)) for _, p in present}) > 1]
    parts = [f"{k}: " + " | ".join(_value(p.get(k, _UNSET)) for _, p in present)
             for k in differing]
    protocol, kind, features = row.key
    return (f"{protocol} on the {kind} features of the {features}: params that differ "
            f"({' | '.join(label for label, _ in present)}): {'; '.join(parts)} (the params "
            f"each eval.json records: the protocol's settings, and what it picked itself, "
            f"e.g. the head a grid chose)")


def short_labels(runs: tuple[RunEval, ...]) -> list[str]:
    """Column names: each run directory's name where those are unique, else the paths as
    given (the JSON always uses the paths as given)."""
    names = [r.path.parent.name or r.label for r in runs]
    return names if len(set(names)) == len(names) else [r.label for r in runs]


def print_comparison(comparison: Comparison, console: Any) -> None:
    """The comparison table, then notes and the recipe differences."""
    from rich.markup import escape
    from rich.table import Table

    labels = short_labels(comparison.runs)
    table = Table(title="evaluations side by side (test accuracy; * best of the row)",
                  title_justify="left")
    for column in ("protocol", "features", "kind"):
        table.add_column(column)
    for label, run in zip(labels, comparison.runs, strict=True):
        step = f"\nstep {run.step}" if run.step is not None else ""
        table.add_column(escape(label) + step, justify="right")
    table.add_column("best", overflow="fold")
    for row in comparison.rows:
        protocol, kind, features = row.key
        shown = protocol if row.measure == "value" or row.split == "test" else (
            f"{protocol} ({row.split})")
        best = ", ".join(escape(labels[i]) for i in row.best) or "-"
        table.add_row(escape(shown), escape(features), escape(kind),
                      *(_cell(row, i) for i in range(len(labels))), best)
    console.print(table)
    if labels != [r.label for r in comparison.runs]:
        where = ", ".join(f"{name} = {r.path.parent}" for name, r in
                                 zip(labels, comparison.runs, strict=True))
        console.print(f"runs: {escape(where)}", soft_wrap=True)
    for row in comparison.rows:
        note = _params_note(row, labels)
        if note:
            console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)
    for label, run in zip(labels, comparison.runs, strict=True):
        for failure in run.failed:  # its row shows "-" for that run: say why
            console.print(f"[yellow]note:[/yellow] {escape(label)}: protocol "
                          f"{escape(failure)}", soft_wrap=True)
    missing = [r for r in comparison.runs if r.recipe is None]
    for run in missing:
        console.print(f"[yellow]note:[/yellow] recipe of {escape(run.label)} not compared: "
                      f"{escape(run.recipe_from)}", soft_wrap=True)
    if len(comparison.compared) < 2:
        return
    names = [labels[i] for i in comparison.compared]
    if not comparison.differences:
        console.print(f"recipes: the same for {', '.join(map(escape, names))} (name and "
                      f"out_dir aside)", soft_wrap=True)
        return
    console.print(f"recipe keys that differ ({' | '.join(map(escape, names))}):",
                  soft_wrap=True)
    for key, values in comparison.differences.items():
        console.print(f"  {escape(key)}: {escape(' | '.join(_value(v) for v in values))}",
                      soft_wrap=True)


def compare_command(sources: list[str], as_json: bool, console: Any) -> int:
    """`jepa eval RUN_A RUN_B ...`: compare their eval.json; exit code."""
    comparison = compare(sources)
    if as_json:
        print(json.dumps(comparison.to_json(), indent=2))
    else:
        print_comparison(comparison, console)
    return 0
