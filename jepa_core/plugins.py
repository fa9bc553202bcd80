"""Plugin discovery and the component registry.

Discovery order (later plugins cannot shadow earlier components: a clash is an error):
  1. built-ins (`BUILTIN_PLUGINS`, the core's own hook implementations);
  2. entry points in group "jepa" of every installed distribution, unless the environment
     variable JEPA_DISABLE_PLUGIN_AUTOLOAD is on (1/true/yes/on; 0/false/no/off keep them);
  3. modules named on the command line (`jepa -p my_pkg.plugin ...`), or in JEPA_PLUGINS
     (comma separated).

A plugin that fails to import or to register is recorded as a `BrokenPlugin`; listing
commands still work and report it, while building a run refuses (`Registry.raise_if_broken`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import inspect
import os
import sys
import traceback
import types
from typing import Any, Callable, Iterable

import attrs
import pluggy

from jepa_core import KINDS, hookspecs
from jepa_core.errors import (ConfigError, JepaError, PluginError, PluginFailed,
                              UnknownComponentError)

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

    def resolve_factory(self) -> Callable[..., Any]:
        """The factory callable, importing a "module:attribute" string; PluginError if that
        cannot be imported (`jepa check` calls this for every component a recipe names)."""
        factory = self.factory
        if not isinstance(factory, str):
            return factory
        module_name, _, attr = factory.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # ImportError, AttributeError, or the module itself raising
            raise PluginError(
                f"plugin {self.plugin!r} registered {self.kind} {self.name!r} with factory "
                f"{self.factory!r}, which cannot be imported: {exc}. Reinstall the "
                f"distribution {self.distribution or '(unknown)'} or fix the factory path."
            ) from exc

    def build(self, config: Any, **context: Any) -> Any:
        """factory(config, **context). A JepaError from the factory (ConfigError, a RunError
        for missing data) passes as it is; any other exception is the plugin's fault and
        becomes PluginFailed naming the plugin, the component and where it was raised."""
        factory = self.resolve_factory()
        try:
            return factory(config, **context)
        except JepaError:
            raise
        except Exception as exc:
            where = raised_at(exc, code_roots(factory, self.factory))
            dist = (f"{self.distribution} {self.version or ''}".strip() if self.distribution
                    else "no distribution")
            raise PluginFailed(
                f"plugin {self.plugin!r} ({dist}) failed to build {self.kind} {self.name!r}: "
                f"{_describe(exc)} (raised at {where}). Check the settings of that section "
                f"against the plugin's documentation; if they are right, the fault is in the "
                f"plugin: report it to its authors."
            ) from exc


def code_roots(*objects: Any) -> list[str]:
    """Files and package folders that hold the code of `objects` (functions, plugin modules
    or objects, "module:attribute" strings): where a plugin's own frames live."""
    roots = []
    for obj in objects:
        code = getattr(inspect.unwrap(obj), "__code__", None) if callable(obj) else None
        if code is not None:
            roots.append(os.path.realpath(code.co_filename))
        if isinstance(obj, str):
            module_name = obj.partition(":")[0]
        elif isinstance(obj, types.ModuleType):
            module_name = obj.__name__
        else:
            module_name = getattr(obj, "__module__", None) or type(obj).__module__
        top = sys.modules.get(module_name.split(".")[0])
        file = getattr(top, "__file__", None)
        if file:
            path = os.path.realpath(file)
            roots.append(os.path.dirname(path) if os.path.basename(path) == "__init__.py"
                         else path)
    return roots


def raised_at(exc: BaseException, roots: list[str]) -> str:
    """"file:line" of the innermost frame of the traceback inside `roots` (the plugin's
    code), or of the innermost frame at all when none is."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"

    def inside(filename: str) -> bool:
        path = os.path.realpath(filename)
        return any(path == r or path.startswith(r + os.sep) for r in roots)

    frame = ([f for f in frames if inside(f.filename)] or frames)[-1]
    return f"{frame.filename}:{frame.lineno}"


class SafeHooks:
    """The hook relay for lifecycle hooks: `hooks.on_step_end(run=..., step=..., metrics=...)`
    calls pluggy's hook (tracing, ordering and wrappers unchanged); an exception from one
    plugin's implementation comes out as PluginFailed naming that plugin, the hook and the
    file:line it was raised at. A JepaError (Preempted, a plugin's own RunError) passes."""

    def __init__(self, pm: pluggy.PluginManager):
        self._pm = pm

    def __getattr__(self, hook_name: str) -> Callable[..., Any]:
        if hook_name.startswith("_"):  # copy / pickle probing, not a hook
            raise AttributeError(hook_name)
        caller = getattr(self._pm.hook, hook_name)

        def call(**kwargs: Any) -> Any:
            try:
                return caller(**kwargs)
            except JepaError:
                raise
            except Exception as exc:
                raise self._failure(caller, hook_name, exc, kwargs.get("run")) from exc

        return call

    @staticmethod
    def _failure(caller: Any, hook_name: str, exc: Exception, run: Any) -> PluginFailed:
        # Which implementation raised: the innermost frame of the traceback that runs one.
        impls = {impl.function.__code__: impl for impl in caller.get_hookimpls()
                 if hasattr(impl.function, "__code__")}
        frames = [frame.f_code for frame, _ in traceback.walk_tb(exc.__traceback__)]
        impl = next((impls[c] for c in reversed(frames) if c in impls), None)
        if impl is None:
            who = "a plugin (" + ", ".join(sorted({i.plugin_name for i in impls.values()})) + ")"
            where = raised_at(exc, [])
        else:
            who = f"plugin {impl.plugin_name!r}"
            where = raised_at(exc, code_roots(impl.function, impl.plugin))
        run_dir = getattr(run, "run_dir", None)
        kept = (f"Checkpoints already written in {run_dir}/checkpoints stay: once the plugin "
                f"is fixed (or left out), continue with `jepa run RECIPE --resume auto`."
                if run_dir is not None else "")
        return PluginFailed(f"{who} raised in its {hook_name} hook: {_describe(exc)} (raised at "
                            f"{where}). The run stopped; the fault is in the plugin. {kept}"
                            .rstrip())


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """An on/off environment variable: 1/true/yes/on or 0/false/no/off/empty (any case);
    unset is off; anything else is an error rather than a guess."""
    value = os.environ.get(name, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ConfigError(f"environment variable {name}={os.environ[name]!r} is not a yes or no: "
                      f"set it to 1, true, yes or on to turn it on, to 0, false, no, off or "
                      f"nothing to leave it off, or unset it.")


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

    @property
    def hooks(self) -> SafeHooks:
        """The lifecycle hook relay the trainer calls (a plugin's exception names the plugin)."""
        return SafeHooks(self.pm)

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
    if env_flag(TRACE_ENV):
        pm.trace.root.setwriter(lambda msg: print(msg, end=""))
        pm.enable_tracing()
    registry = Registry(pm)

    for module_name in BUILTIN_PLUGINS:
        _load_module(registry, module_name, module_name, "builtin")

    if autoload is None:
        autoload = not env_flag(AUTOLOAD_OFF_ENV)
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
