"""Field validators for config classes, with messages that read well after a recipe path.

Use them as attrs validators: `lr: float = attrs.field(default=1e-3, validator=greater(0))`.
A failing validator raises `Invalid`; the recipe loader reports it as `$.optim.lr: must be > 0`.
`Invalid.subpath` points inside a value (`[1]` for the second element of a range).
"""

from __future__ import annotations

import re
from typing import Any, Callable

Validator = Callable[[Any, Any, Any], None]


class Invalid(ValueError):
    def __init__(self, message: str, subpath: str = ""):
        super().__init__(message)
        self.message = message
        self.subpath = subpath


def _skip_none(check: Callable[[Any], str | None]) -> Validator:
    def validator(_inst: Any, _attr: Any, value: Any) -> None:
        if value is None:
            return
        problem = check(value)
        if problem:
            raise Invalid(problem)

    return validator


def greater(lo: float) -> Validator:
    return _skip_none(lambda v: None if v > lo else f"must be > {lo} (got {v})")


def at_least(lo: float) -> Validator:
    return _skip_none(lambda v: None if v >= lo else f"must be >= {lo} (got {v})")


def at_most(hi: float) -> Validator:
    return _skip_none(lambda v: None if v <= hi else f"must be <= {hi} (got {v})")


def between(lo: float, hi: float) -> Validator:
    """lo <= value <= hi."""
    return _skip_none(lambda v: None if lo <= v <= hi else f"must be in [{lo}, {hi}] (got {v})")


def range_pair(lo: float | None = None, hi: float | None = None, *,
               strict_lo: bool = False) -> Validator:
    """A (low, high) pair with low <= high and both inside [lo, hi] (lo exclusive if strict)."""

    def validator(_inst: Any, _attr: Any, value: Any) -> None:
        if value is None:
            return
        for i, v in enumerate(value):
            if lo is not None and (v <= lo if strict_lo else v < lo):
                raise Invalid(f"must be {'>' if strict_lo else '>='} {lo} (got {v})", f"[{i}]")
            if hi is not None and v > hi:
                raise Invalid(f"must be <= {hi} (got {v})", f"[{i}]")
        if value[0] > value[1]:
            raise Invalid(f"low end {value[0]} is above high end {value[1]}; write [low, high]")

    return validator


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def plain_name() -> Validator:
    """A name that is one path component: letters, digits, '.', '_', '-'; not '.' or '..'."""

    def check(v: str) -> str | None:
        if _PLAIN_NAME.fullmatch(v) and v not in (".", ".."):
            return None
        return (f"must be a plain name of letters, digits, '.', '_' and '-' (got {v!r}); it "
                f"names a folder inside out_dir, so '/', '..' or an absolute path would write "
                f"elsewhere. Choose the parent folder with out_dir instead")

    return _skip_none(check)
