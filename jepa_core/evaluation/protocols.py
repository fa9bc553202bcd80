"""Running the evaluation protocols on cached features, and checking what they return.

A protocol is plugin code: one that raises, or returns something that is not a list of
results (`jepa_core.interfaces.EvalProtocol`), is recorded under eval.json's "failed" with
the plugin that registered it, and the other protocols' results are kept. The command
writes eval.json, then stops with `ProtocolsFailed` (see `failure_error`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import attrs

from jepa_core.errors import JepaError, PluginFailed
from jepa_core.evaluation import cache
from jepa_core.plugins import ComponentSpec, code_roots, raised_at


class EmptySplit(JepaError):
    """A split with no readable image to fit or test the probes on (exit 2: bad data)."""

    title = "nothing to evaluate on"


class ProtocolsFailed(PluginFailed):
    """Evaluation protocols that raised or broke the result contract; eval.json keeps the
    others' results. exit_code: 1, as PluginFailed (the input was accepted and the fault is
    in the plugin's code: rerunning the same command will not fix it); 2 when every failure
    is one the user can fix (a protocol refusing a split too small for its settings, a
    ConfigError), as any bad input."""


def check_splits(data: dict) -> None:
    """EmptySplit when the probe-training or the test split holds no readable image (every
    protocol would then score 0 or fit nothing). `data`: eval.json's "data"."""
    for side, what, key in (("train", "probe-training", "data.root"),
                            ("test", "test", "data.val_root")):
        split = data[side]
        if split["images"]:
            continue
        read = (f"all {split['skipped']} of its images are unreadable" if split["skipped"]
                else "it holds no images")
        raise EmptySplit(
            f"the {what} split ({split['split']}) has no readable image: {read}, so every "
            f"probe would score 0% or fit nothing, and no eval.json is written. Check the "
            f"files there (do they open in an image viewer?), or point the evaluation at a "
            f"folder of readable images (e.g. `jepa eval RUN {key}=/path/to/images`; "
            f"eval.max_images, if set, must leave some).")


def check_results(results: Any, kinds: tuple[str, ...]) -> list[str]:
    """What is wrong with a protocol's return value (empty: it keeps the contract of
    `jepa_core.interfaces.EvalProtocol.run`). `kinds`: the feature kinds it was given."""
    if not isinstance(results, list):
        return [f"run() returned a {type(results).__name__}, not a list of result dicts"]
    problems = []
    for i, result in enumerate(results):
        problems += [f"result {i}: {p}" for p in _result_problems(result, kinds)]
    return problems


def _fraction(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 1.0)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _result_problems(r: Any, kinds: tuple[str, ...]) -> list[str]:
    if not isinstance(r, dict):
        return [f"is a {type(r).__name__}, not a dict"]
    out = []
    if not isinstance(r.get("protocol", ""), str) or r.get("protocol") == "":
        out.append(f"'protocol' must be a name (got {r.get('protocol')!r})")
    if r.get("feature_kind") not in kinds:
        out.append(f"'feature_kind' must be one of the kinds it was given {list(kinds)} "
                   f"(got {r.get('feature_kind')!r})")
    accuracy, has_value = r.get("accuracy"), "value" in r
    if (accuracy is None) == (not has_value):
        out.append("needs exactly one of 'accuracy' (a classifier) and 'value' (a diagnostic)")
    if accuracy is not None and not (isinstance(accuracy, dict) and "test" in accuracy
                                     and all(isinstance(k, str) and _fraction(v)
                                             for k, v in accuracy.items())):
        out.append(f"'accuracy' must map splits ('test' among them) to fractions in [0, 1] "
                   f"(got {accuracy!r})")
    if has_value and not _finite(r["value"]):
        out.append(f"'value' must be a finite number (got {r['value']!r})")
    std = r.get("std", {})
    if not (isinstance(std, dict) and all(_finite(v) and v >= 0 for v in std.values())):
        out.append(f"'std' must map splits to finite numbers >= 0 (got {std!r})")
    for key, kind in (("setting", str), ("params", dict)):
        if key in r and not isinstance(r[key], kind):
            out.append(f"{key!r} must be a {kind.__name__} (got {r[key]!r})")
    if not out:
        try:
            json.dumps(r, allow_nan=False)
        except (TypeError, ValueError) as exc:
            out.append(f"cannot be written to eval.json ({exc})")
    return out


def _failure(pname: str, spec: ComponentSpec, fname: str, why: str, exit_code: int) -> dict:
    return {"protocol": pname, "features": fname, "plugin": spec.plugin,
            "distribution": spec.distribution, "version": spec.version, "error": why,
            "exit_code": exit_code}


def naming_features(context: Any, fname: str, kinds: tuple[str, ...]) -> Any:
    """`context` whose progress labels name the features a protocol runs on, e.g. "linear
    probe on the random init features (pooled, last4)", whatever the protocol calls its
    phase (the same protocol runs on each set of features in turn)."""
    ticker = getattr(context, "ticker", None)
    if ticker is None or not attrs.has(type(context)):
        return context
    where = f" on the {fname} features" + (f" ({', '.join(kinds)})" if kinds else "")
    return attrs.evolve(context, ticker=lambda what, total, unit: ticker(
        f"{what}{where}", total, unit))


def run_one(pname: str, spec: ComponentSpec, protocol: Any, features: dict, fname: str,
            context: Any) -> tuple[list[dict], dict | None]:
    """(results, None) of one protocol on one set of features, or ([], failure entry)."""
    given = {k: v for k, v in features.items() if k in protocol.feature_kinds}
    context = naming_features(context, fname, tuple(given))
    try:
        results = protocol.run(given, context)
    except JepaError as exc:  # e.g. a ConfigError: a split too small for its settings
        return [], _failure(pname, spec, fname, str(exc), exc.exit_code)
    except Exception as exc:
        where = raised_at(exc, code_roots(type(protocol), spec.factory))
        return [], _failure(pname, spec, fname,
                            f"{type(exc).__name__}: {exc} (raised at {where})",
                            PluginFailed.exit_code)
    problems = check_results(results, tuple(given))
    if problems:
        return [], _failure(pname, spec, fname,
                            "it returned results that break the EvalProtocol contract: "
                            + "; ".join(problems[:5]), PluginFailed.exit_code)
    return [{"features": fname, **{k: v for k, v in r.items() if k != "features"},
             "protocol": r.get("protocol", pname)} for r in results], None


def run_protocols(protocols: list[tuple[str, ComponentSpec, Any]], names: list[str],
                  features_of: Callable[[str], dict], context: Any
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    """(results, failures, timings) of every protocol on every set of features (`names`,
    each read as {kind: (train, test)} by `features_of(name)`); timings: one
    {"protocol", "features", "seconds"} per run. A protocol that failed is not run on the
    later sets: its fault would repeat, and each run may take long."""
    results: list[dict] = []
    failed: list[dict] = []
    timings: list[dict] = []
    for fname in names:
        available = features_of(fname)
        for pname, spec, protocol in protocols:
            if any(f["protocol"] == pname for f in failed):
                continue
            t0 = time.perf_counter()
            rows, failure = run_one(pname, spec, protocol, available, fname, context)
            timings.append({"protocol": pname, "features": fname,
                            "seconds": round(time.perf_counter() - t0, 3)})
            results += rows
            if failure is not None:
                failed.append(failure)
            cache.release_freed_memory()  # what the protocol freed, before the next
    return results, failed, timings


def failure_error(results: dict, written: str) -> ProtocolsFailed | None:
    """The error a command raises once eval.json (`written`: where it went, or why not) is
    out, when protocols failed; None when none did."""
    failed = results.get("failed") or []
    if not failed:
        return None
    parts = []
    for f in failed:
        dist = (f"{f['distribution']} {f['version'] or ''}".strip() if f["distribution"]
                else "no distribution")
        parts.append(f"eval protocol {f['protocol']!r} of plugin {f['plugin']!r} ({dist}) "
                     f"failed on the {f['features']} features: {f['error'].rstrip('.')}")
    data = results.get("data") or {}
    splits = (f" (probe-training split: {data['train']['split']}, {data['train']['images']} "
              f"readable; test split: {data['test']['split']}, {data['test']['images']} "
              f"readable)" if "train" in data and "test" in data else "")
    users = all(f.get("exit_code") == 2 for f in failed)
    fix = ("Once that is changed, run `jepa eval RUN` again" if users else
           "If the protocol's settings are right, the fault is in the plugin: report it to its "
           "authors, or leave the protocol out of eval.protocols")
    error = ProtocolsFailed(
        "; ".join(parts) + f"{splits}. A failed protocol is not run on the other features. "
        f"The other protocols' results are in {written}, the failure(s) under \"failed\". "
        f"{fix}.")
    if users:
        error.exit_code, error.title = 2, "evaluation refused"
    return error
