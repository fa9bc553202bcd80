"""Field validators for config classes, with messages that read well after a recipe path.

Use them as attrs validators: `lr: float = attrs.field(default=1e-3, validator=greater(0))`.
A failing validator raises `Invalid`; the recipe loader reports it as `$.optim.lr: must be > 0`.
`Invalid.subpath` points inside a value (`[1]` for the second element of a range).

Each validator carries its limits as `validator.bounds` (a `Bounds`), so that
`jepa_core.testing.strategies` can draw values that pass it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

Validator = Callable[[Any, Any, Any], None]


@attrs.frozen
class Bounds:
    """The numbers a validator accepts: lo..hi (None: no limit), each end open or closed;
    `pair`: the value is a (low, high) pair, each item within the bounds."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    pair: bool = False


class Invalid(ValueError):
    """A validator's refusal: `message`, and `subpath` below the field it concerns."""
    def __init__(self, message: str, subpath: str = ""):
        super().__init__(message)
        self.message = message
        self.subpath = subpath


def _skip_none(check: Callable[[Any], str | None], bounds: Bounds | None = None) -> Validator:
    def validator(_inst: Any, _attr: Any, value: Any) -> None:
        if value is None:
            return
        problem = check(value)
        if problem:
            raise Invalid(problem)

    validator.bounds = bounds  # type: ignore[attr-defined]
    return validator


def greater(lo: float) -> Validator:
    """value > lo."""
    return _skip_none(lambda v: None if v > lo else f"must be > {lo} (got {v})",
                      Bounds(lo=lo, lo_open=True))


def at_least(lo: float) -> Validator:
    """value >= lo."""
    return _skip_none(lambda v: None if v >= lo else f"must be >= {lo} (got {v})", Bounds(lo=lo))


def at_most(hi: float) -> Validator:
    """value <= hi."""
    return _skip_none(lambda v: None if v <= hi else f"must be <= {hi} (got {v})", Bounds(hi=hi))


def between(lo: float, hi: float) -> Validator:
    """lo <= value <= hi."""
    return _skip_none(lambda v: None if lo <= v <= hi else f"must be in [{lo}, {hi}] (got {v})",
                      Bounds(lo=lo, hi=hi))


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

    validator.bounds = Bounds(lo=lo, hi=hi, lo_open=strict_lo, pair=True)  # type: ignore[attr-defined]
    return validator


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")
# The longest name of one file or folder that Linux, macOS and Windows file systems accept
# (NAME_MAX, in bytes), and the longest path a system call takes (PATH_MAX).
NAME_MAX = 255
PATH_MAX = 4096


def plain_name() -> Validator:
    """A name that is one path component: letters, digits, '.', '_', '-'; not '.' or '..';
    at most NAME_MAX characters."""

    def check(v: str) -> str | None:
        if not (_PLAIN_NAME.fullmatch(v) and v not in (".", "..")):
            return (f"must be a plain name of letters, digits, '.', '_' and '-' (got {v!r}); "
                    f"it names a folder inside out_dir, so '/', '..' or an absolute path would "
                    f"write elsewhere. Choose the parent folder with out_dir instead")
        if len(v) > NAME_MAX:
            return (f"is {len(v)} characters long ({v[:20]}...); a folder name can have at "
                    f"most {NAME_MAX} (the file system's limit). Choose a shorter name")
        return None

    return _skip_none(check)


def fits_in_paths(room: int = NAME_MAX + 100) -> Validator:
    """A folder path whose every component has at most NAME_MAX bytes (UTF-8) and that leaves
    `room` bytes below PATH_MAX for what is written inside it."""

    def check(v: str) -> str | None:
        long = [part for part in v.split("/") if len(part.encode()) > NAME_MAX]
        if long:
            return (f"holds a folder name of {len(long[0].encode())} bytes ({long[0][:20]}...); "
                    f"a file system allows at most {NAME_MAX}. Choose a shorter path")
        if len(v.encode()) > PATH_MAX - room:
            return (f"is {len(v.encode())} bytes long; with the files written inside it, "
                    f"paths would pass the system's limit of {PATH_MAX} bytes. Choose a "
                    f"path of at most {PATH_MAX - room} bytes")
        return None

    return _skip_none(check)


def each(validator: Validator, allow_empty: bool = False) -> Validator:
    """A list (non-empty unless `allow_empty`) whose every item passes `validator`;
    `$.x.lrs[2]: must be > 0`."""
    def check(inst: Any, attr: Any, value: Any) -> None:
        if value is None:
            return
        if len(value) == 0 and not allow_empty:
            raise Invalid("must list at least one value")
        for i, item in enumerate(value):
            try:
                validator(inst, attr, item)
            except Invalid as exc:
                raise Invalid(exc.message, f"[{i}]{exc.subpath}") from None

    check.bounds = getattr(validator, "bounds", None)  # type: ignore[attr-defined]
    return check
