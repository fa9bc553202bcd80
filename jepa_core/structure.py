"""Turn plain YAML data into frozen attrs configs, collecting every problem with its path.

One small converter instead of a general library, because the error report is the product:
`$.masker.target_scale[1]: must be <= 1 (got 1.5)`, unknown keys with the nearest valid key,
and component sections validated by the config class their plugin registered.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, Union

import attrs

from jepa_core.validate import Invalid

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry

NoneType = type(None)
COMPONENT_KIND = "jepa_component_kind"  # attrs field metadata key for component sections
COMPONENT_LIST = "jepa_component_list"  # ... for a list of component sections


@attrs.frozen
class Component:
    """A recipe section `{name: ..., <config fields>}` resolved against the registry."""

    kind: str
    name: str
    config: Any


def component_field(kind: str, *, optional: bool = False) -> Any:
    """A recipe section `{name: ..., ...}` of a registered `kind`; an optional one may be
    absent (None), for a method that does not use that kind of component."""
    if optional:
        return attrs.field(default=None, metadata={COMPONENT_KIND: kind})
    return attrs.field(metadata={COMPONENT_KIND: kind})


def component_list_field(kind: str) -> Any:
    """A list of recipe sections `[{name: ..., ...}, ...]` of a registered `kind`, e.g.
    `eval.protocols`. Default: None (the loader fills in the kernel's default list)."""
    return attrs.field(default=None, metadata={COMPONENT_KIND: kind, COMPONENT_LIST: True})


class _Failed:
    """Marker for a value that could not be structured (its problem is already recorded)."""


FAILED = _Failed()


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class Structurer:
    """Structures data into `cls`; problems accumulate in `self.problems` as (path, message)."""

    def __init__(self, registry: Registry | None = None):
        self.registry = registry
        self.problems: list[tuple[str, str]] = []

    def problem(self, path: str, message: str) -> _Failed:
        """Record a problem at `path` and return the FAILED marker."""
        self.problems.append((path, message))
        return FAILED

    # -- dispatch -----------------------------------------------------------------------
    def structure(self, value: Any, tp: Any, path: str) -> Any:
        """`value` as type `tp` (attrs classes, unions, literals, tuples, lists, dicts and
        scalars), or FAILED with the problems recorded at `path`."""
        if tp is Any:
            return value
        if attrs.has(tp):
            return self.structure_attrs(value, tp, path)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (Union, types.UnionType):
            return self._union(value, args, path)
        if origin is Literal:
            if value in args:
                return value
            return self.problem(path, f"must be one of {', '.join(map(repr, args))} "
                                      f"(got {value!r})")
        if origin is tuple:
            return self._tuple(value, args, path)
        if origin is list:
            if not isinstance(value, (list, tuple)):
                return self.problem(path, f"must be a list (got {value!r})")
            return [self.structure(v, args[0] if args else Any, f"{path}[{i}]")
                    for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                return self.problem(path, f"must be a mapping (got {value!r})")
            vt = args[1] if args else Any
            return {str(k): self.structure(v, vt, f"{path}.{k}") for k, v in value.items()}
        return self._scalar(value, tp, path)

    def _scalar(self, value: Any, tp: Any, path: str) -> Any:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):  # ${VAR} results
                return value.lower() == "true"
            return self.problem(path, f"must be true or false (got {value!r})")
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):  # e.g. `${BATCH:-64}`: interpolation yields strings
                try:
                    return int(value)
                except ValueError:
                    pass
            return self.problem(path, f"must be an integer (got {value!r})")
        if tp is float:
            number = None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                number = float(value)
            elif isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
                try:
                    number = float(value)
                except ValueError:
                    pass
            if number is None:
                return self.problem(path, f"must be a number (got {value!r})")
            if not math.isfinite(number):
                return self.problem(path, f"must be a finite number (got {value!r})")
            return number
        if tp is str:
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            return self.problem(path, f"must be a string (got {value!r})")
        raise TypeError(f"config type {tp!r} at {path} is not supported by the recipe loader")

    def _union(self, value: Any, args: tuple, path: str) -> Any:
        if value is None:
            if NoneType in args:
                return None
            return self.problem(path, "must not be empty (null)")
        options = [a for a in args if a is not NoneType]
        for option in options:
            trial = Structurer(self.registry)
            result = trial.structure(value, option, path)
            if not trial.problems:
                return result
        if len(options) == 1:
            return self.structure(value, options[0], path)
        names = " or ".join(_type_name(o) for o in options)
        return self.problem(path, f"must be {names} (got {value!r})")

    def _tuple(self, value: Any, args: tuple, path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            return self.problem(path, f"must be a list (got {value!r})")
        if len(args) == 2 and args[1] is Ellipsis:
            items = [self.structure(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                return self.problem(path, f"must have {len(args)} items (got {len(value)})")
            items = [self.structure(v, t, f"{path}[{i}]") for i, (v, t) in
                     enumerate(zip(value, args, strict=True))]
        return FAILED if any(i is FAILED for i in items) else tuple(items)

    # -- attrs classes ------------------------------------------------------------------
    def structure_attrs(self, value: Any, cls: type, path: str) -> Any:
        """An instance of the attrs class `cls` from a mapping; unknown keys, bad values and
        validator failures are recorded as problems under `path`."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return self.problem(path, f"must be a mapping of {cls.__name__} fields (got {value!r})")
        attrs.resolve_types(cls)
        fields = {f.name: f for f in attrs.fields(cls) if f.init}
        before = len(self.problems)
        for key in value:
            if key not in fields:
                self._unknown_key(str(key), sorted(fields), f"{path}.{key}")
        kwargs: dict[str, Any] = {}
        for name, field in fields.items():
            fpath = f"{path}.{name}"
            if name not in value:
                if field.default is attrs.NOTHING:
                    self.problem(fpath, "is required but missing")
                continue
            kind = field.metadata.get(COMPONENT_KIND)
            if kind is not None and value[name] is None and field.default is None:
                kwargs[name] = None  # `predictor: null`: an optional section left out
                continue
            if kind is not None and field.metadata.get(COMPONENT_LIST):
                result = self.structure_component_list(value[name], kind, fpath)
            elif kind is not None:
                result = self.structure_component(value[name], kind, fpath)
            else:
                result = self.structure(value[name], field.type, fpath)
            if result is FAILED:
                continue
            if field.validator is not None and self._validate(field, result, fpath):
                kwargs[name] = result
            elif field.validator is None:
                kwargs[name] = result
        if len(self.problems) > before:
            return FAILED
        try:
            return cls(**kwargs)
        except Invalid as exc:
            return self.problem(path + exc.subpath, exc.message)
        except (ValueError, TypeError) as exc:
            return self.problem(path, str(exc))

    def _validate(self, field: Any, value: Any, path: str) -> bool:
        try:
            field.validator(None, field, value)
        except Invalid as exc:
            self.problem(path + exc.subpath, exc.message)
            return False
        except (ValueError, TypeError) as exc:
            self.problem(path, str(exc))
            return False
        return True

    def _unknown_key(self, key: str, valid: list[str], path: str) -> None:
        near = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        self.problem(path, f"unknown key; {hint}valid keys: {', '.join(valid)}")

    def structure_component_list(self, value: Any, kind: str, path: str) -> Any:
        """A list of component sections; a bare name stands for `{name: that}`."""
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            return self.problem(path, f"must be a list of {kind} sections, e.g. "
                                      f"[{{name: ...}}, ...] (got {value!r})")
        items = [self.structure_component({"name": v} if isinstance(v, str) else v, kind,
                                          f"{path}[{i}]") for i, v in enumerate(value)]
        return FAILED if any(i is FAILED for i in items) else tuple(items)

    def structure_component(self, value: Any, kind: str, path: str) -> Any:
        """A Component from a `{name: ..., ...}` section: the name must be a registered
        `kind`, the other keys are structured as that component's config class."""
        if not isinstance(value, dict) or "name" not in value:
            return self.problem(path, f"must be a mapping with a `name:` of a registered {kind}")
        name = value["name"]
        if self.registry is None:
            raise RuntimeError("structuring a component section needs a registry")
        if not isinstance(name, str):  # a list or mapping here is not hashable
            return self.problem(f"{path}.name", self.registry.unknown_message(kind, name))
        if name not in self.registry.components[kind]:
            return self.problem(f"{path}.name", self.registry.unknown_message(kind, name))
        spec = self.registry.get(kind, name)
        rest = {k: v for k, v in value.items() if k != "name"}
        config = self.structure_attrs(rest, spec.config_class, path)
        if config is FAILED:
            return FAILED
        return Component(kind, name, config)


def unstructure(obj: Any) -> Any:
    """The inverse for saving: attrs → dicts, components → {name, ...}, tuples → lists."""
    if isinstance(obj, Component):
        return {"name": obj.name, **unstructure(obj.config)}
    if attrs.has(type(obj)):
        return {f.name: unstructure(getattr(obj, f.name)) for f in attrs.fields(type(obj))}
    if isinstance(obj, (list, tuple)):
        return [unstructure(v) for v in obj]
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items()}
    return obj
