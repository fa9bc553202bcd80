"""Plugin discovery and the component registry.

Discovery order (later plugins cannot shadow earlier components: a clash is an error):
  1. built-ins (`BUILTIN_PLUGINS`, the core's own hook implementations);
  2. entry points in group "jepa" of every installed distribution, unless the environment
     variable JEPA_DISABLE_PLUGIN_AUTOLOAD is set to a non-empty value;
  3. modules named on the command line (`jepa -p my_pkg.plugin ...`), or in JEPA_PLUGINS
     (comma separated).

A plugin that fails to import or to register is recorded as a `BrokenPlugin`; listing
commands still work and report it, while building a run refuses (`Registry.raise_if_broken`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
from typing import Any, Callable, Iterable

import attrs
import pluggy

from jepa_core import KINDS, hookspecs
from jepa_core.errors import PluginError, UnknownComponentError

AUTOLOAD_OFF_ENV = "JEPA_DISABLE_PLUGIN_AUTOLOAD"
EXTRA_PLUGINS_ENV = "JEPA_PLUGINS"
TRACE_ENV = "JEPA_TRACE_HOOKS"
ENTRY_POINT_GROUP = "jepa"
BUILTIN_PLUGINS: tuple[str, ...] = ()


@attrs.frozen
class PluginInfo:
    name: str
    source: str  # "builtin", "entry point", "command line"
    distribution: str | None
    version: str | None
    module: str


@attrs.frozen
class BrokenPlugin:
    name: str
    source: str
    distribution: str | None
    error: str


@attrs.frozen
class ComponentSpec:
    """One registered component: which kind, its recipe name, config class and origin."""

    kind: str
    name: str
    config_class: type
    factory: Any  # callable or "module:attribute"
    plugin: str
    distribution: str | None
    version: str | None
    description: str = ""

    def build(self, config: Any, **context: Any) -> Any:
        factory = self.factory
        if isinstance(factory, str):
            module_name, _, attr = factory.partition(":")
            try:
                factory = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"plugin {self.plugin!r} registered {self.kind} {self.name!r} with factory "
                    f"{self.factory!r}, which cannot be imported: {exc}. Reinstall the "
                    f"distribution {self.distribution or '(unknown)'} or fix the factory path."
                ) from exc
        return factory(config, **context)


def _dist_of_module(module_name: str) -> tuple[str | None, str | None]:
    top = module_name.split(".")[0]
    dists = md.packages_distributions().get(top) or []
    if not dists:
        return None, None
    try:
        return dists[0], md.version(dists[0])
    except md.PackageNotFoundError:
        return dists[0], None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Registry:
    """Components by kind and name, the plugins they came from, and the plugins that broke."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.plugins: dict[str, PluginInfo] = {}
        self.broken: list[BrokenPlugin] = []
        self.components: dict[str, dict[str, ComponentSpec]] = {kind: {} for kind in KINDS}

    # -- lookup -------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> ComponentSpec:
        known = self.components[kind]
        if name in known:
            return known[name]
        raise UnknownComponentError(self.unknown_message(kind, name))

    def unknown_message(self, kind: str, name: str) -> str:
        known = sorted(self.components[kind])
        near = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        listing = ", ".join(repr(k) for k in known) or "none"
        msg = f"no {kind} named {name!r} is registered.{hint} Registered {kind}s: {listing}."
        if self.broken:
            msg += " Some plugins failed to load (see `jepa plugins`); it may be in one of them."
        else:
            msg += " Install the plugin that provides it, or load it with `jepa -p MODULE`."
        return msg

    def all_components(self) -> list[ComponentSpec]:
        return [spec for kind in KINDS for _, spec in sorted(self.components[kind].items())]

    def raise_if_broken(self) -> None:
        if not self.broken:
            return
        lines = "; ".join(f"{b.name} ({b.source}): {b.error}" for b in self.broken)
        raise PluginError(
            f"{len(self.broken)} plugin(s) failed to load: {lines}. Fix or uninstall the "
            f"plugin, or set {AUTOLOAD_OFF_ENV}=1 to skip entry-point plugins and load the ones "
            f"you need with `jepa -p MODULE`."
        )

    # -- registration -------------------------------------------------------------------
    def _collect(self) -> None:
        for kind, hook_name in hookspecs.REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            # Call each implementation on its own so every component knows its plugin.
            for impl in caller.get_hookimpls():  # registration order
                plugin_name = impl.plugin_name
                if any(b.name == plugin_name for b in self.broken):
                    continue
                register = self._register_callback(kind, plugin_name)
                try:
                    impl.function(register=register)
                except PluginError as exc:
                    self._mark_broken(plugin_name, str(exc))
                except Exception as exc:  # a plugin bug must not take the CLI down
                    self._mark_broken(plugin_name, f"{hook_name} raised {_describe(exc)}")

    def _mark_broken(self, plugin_name: str, error: str) -> None:
        info = self.plugins.pop(plugin_name, None)  # listed as broken, not as loaded
        self.broken.append(BrokenPlugin(
            plugin_name, info.source if info else "?", info.distribution if info else None,
            error))
        for kind in KINDS:
            for name in [n for n, s in self.components[kind].items() if s.plugin == plugin_name]:
                del self.components[kind][name]

    def _register_callback(self, kind: str, plugin_name: str) -> Callable[..., None]:
        info = self.plugins.get(plugin_name)

        def register(name: str, config_class: type, factory: Any, *,
                     description: str = "") -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin_name!r} registered a {kind} with name "
                                  f"{name!r}; names must be non-empty strings.")
            if not attrs.has(config_class):
                raise PluginError(
                    f"plugin {plugin_name!r} registered {kind} {name!r} with config class "
                    f"{config_class!r}, which is not an attrs class. Decorate it with "
                    f"@attrs.frozen.")
            if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
                raise PluginError(
                    f"plugin {plugin_name!r} registered {kind} {name!r} with factory "
                    f"{factory!r}; pass a callable or a 'module:attribute' string.")
            existing = self.components[kind].get(name)
            if existing is not None:
                raise PluginError(
                    f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} "
                    f"({existing.distribution or 'no distribution'}) and by plugin "
                    f"{plugin_name!r} ({(info and info.distribution) or 'no distribution'}). "
                    f"Uninstall one of them, or rename the component in one plugin.")
            self.components[kind][name] = ComponentSpec(
                kind=kind, name=name, config_class=config_class, factory=factory,
                plugin=plugin_name, distribution=info.distribution if info else None,
                version=info.version if info else None,
                description=description or (config_class.__doc__ or "").strip().split("\n")[0],
            )

        return register


def _load_module(registry: Registry, module_name: str, name: str, source: str,
                 dist: str | None = None, version: str | None = None) -> None:
    if dist is None:
        dist, version = _dist_of_module(module_name)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        registry.broken.append(BrokenPlugin(name, source, dist, f"import failed: {_describe(exc)}"))
        return
    _add_plugin(registry, module, name, source, dist, version, module_name)


def _add_plugin(registry: Registry, plugin: Any, name: str, source: str,
                dist: str | None, version: str | None, module_name: str) -> None:
    if registry.pm.is_registered(plugin) or registry.pm.has_plugin(name):
        return
    try:
        registry.pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        registry.broken.append(BrokenPlugin(name, source, dist, f"invalid hook: {exc}"))
        return
    registry.plugins[name] = PluginInfo(name, source, dist, version, module_name)


def make_plugin_manager(extra_plugins: Iterable[str] = (), *, autoload: bool | None = None,
                        objects: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Build a fresh plugin manager and registry (never a module global).

    extra_plugins: module names to load after the entry points (the CLI's `-p`).
    autoload: load entry points; None reads the JEPA_DISABLE_PLUGIN_AUTOLOAD switch.
    objects: (name, plugin object) pairs registered last, for tests and embedding.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if os.environ.get(TRACE_ENV):
        pm.trace.root.setwriter(lambda msg: print(msg, end=""))
        pm.enable_tracing()
    registry = Registry(pm)

    for module_name in BUILTIN_PLUGINS:
        _load_module(registry, module_name, module_name, "builtin")

    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_OFF_ENV)
    if autoload:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            _load_module(registry, ep.value.split(":")[0], ep.name, "entry point", dist, version)

    env_extra = [m.strip() for m in os.environ.get(EXTRA_PLUGINS_ENV, "").split(",") if m.strip()]
    for module_name in [*env_extra, *extra_plugins]:
        _load_module(registry, module_name, module_name, "command line")
    for name, obj in objects:
        _add_plugin(registry, obj, name, "object", None, None, getattr(obj, "__name__", name))

    while True:  # a misspelt hook marks its plugin broken; the others go on
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            plugin_name = pm.get_name(exc.plugin) or "?"
            registry._mark_broken(
                plugin_name, f"{exc}. Hook names must match `jepa_core.hookspecs` (misspelt?)")
            pm.unregister(exc.plugin)
    registry._collect()
    return registry
