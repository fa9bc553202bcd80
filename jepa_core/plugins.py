"""Plugin discovery and the component registry.

Discovery order (a component name belongs to the first plugin that registers it):
  1. built-ins (`BUILTIN_PLUGINS`, the core's own hook implementations);
  2. the entry points of jepa-core itself (the first-party plugins image, vit, objectives);
  3. entry points in group "jepa" of every other installed distribution, by name, unless the
     environment variable JEPA_DISABLE_PLUGIN_AUTOLOAD is on (1/true/yes/on; 0/false/no/off
     keep them);
  4. modules named on the command line (`jepa -p my_pkg.plugin ...`), or in JEPA_PLUGINS
     (comma separated).

A later plugin registering a name already taken loses that component only (`RefusedComponent`,
listed by `jepa plugins`, warned about by the other commands); the rest of it loads. A plugin
can be left out by name: `jepa -p no:NAME`, or JEPA_DISABLE_PLUGINS=NAME,NAME (entry-point,
module or distribution names). A plugin that fails to import or to register is recorded as a
`BrokenPlugin`; listing commands still work and report it, while building a run refuses
(`Registry.raise_if_broken`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import inspect
import os
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

from jepa_core import KINDS, hookspecs
from jepa_core.errors import (
    ConfigError,
    JepaError,
    PluginError,
    PluginFailed,
    UnknownComponentError,
)

AUTOLOAD_OFF_ENV = "JEPA_DISABLE_PLUGIN_AUTOLOAD"
EXTRA_PLUGINS_ENV = "JEPA_PLUGINS"
BLOCKED_PLUGINS_ENV = "JEPA_DISABLE_PLUGINS"
BLOCK_PREFIX = "no:"
FIRST_PARTY_DISTRIBUTION = "jepa-core"
TRACE_ENV = "JEPA_TRACE_HOOKS"
ENTRY_POINT_GROUP = "jepa"
BUILTIN_PLUGINS: tuple[str, ...] = ()


@attrs.frozen
class PluginInfo:
    """A plugin that loaded: its name, where it came from, its distribution and module."""
    name: str
    source: str  # "builtin", "entry point", "command line"
    distribution: str | None
    version: str | None
    module: str


@attrs.frozen
class BrokenPlugin:
    """A plugin that failed to import or to register; `error` says why, with file:line."""

    name: str
    source: str
    distribution: str | None
    error: str


@attrs.frozen
class RefusedComponent:
    """A component a plugin registered under a name another plugin had already taken."""

    kind: str
    name: str
    plugin: str
    distribution: str | None
    kept_by: str
    kept_distribution: str | None

    @property
    def message(self) -> str:
        """One paragraph: who keeps the name, who lost it, and what to do."""
        return (f"plugin {self.plugin!r} ({self.distribution or 'no distribution'}) registers "
                f"{self.kind} {self.name!r}, a name plugin {self.kept_by!r} "
                f"({self.kept_distribution or 'no distribution'}) registered first: recipes "
                f"naming {self.name!r} get {self.kept_by!r}'s, and {self.plugin!r}'s is "
                f"ignored (its other components load). Rename the component in "
                f"{self.plugin!r}, or leave one plugin out with `jepa -p no:{self.plugin}`.")


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
        head = (f"plugin {self.plugin!r} registered {self.kind} {self.name!r} with factory "
                f"{self.factory!r}")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            if is_missing_module(exc, module_name):  # the path names no module
                raise PluginError(
                    f"{head}, which cannot be imported: {exc}. Reinstall the distribution "
                    f"{self.distribution or '(unknown)'} or fix the factory path.") from exc
            raise PluginFailed(
                f"{head}; the path is right, but importing module {module_name!r} raised "
                f"{import_failure(exc, module_name)}. The fault is in the plugin: "
                f"{fix_for(exc)}") from exc
        if not hasattr(module, attr):
            near = difflib.get_close_matches(attr, [n for n in dir(module)
                                                    if not n.startswith("_")], n=1)
            hint = f" (did you mean {module_name}:{near[0]}?)" if near else ""
            raise PluginError(
                f"{head}, which cannot be imported: module {module_name!r} "
                f"({getattr(module, '__file__', '?')}) has no attribute {attr!r}{hint}. "
                f"Reinstall the distribution {self.distribution or '(unknown)'} or fix the "
                f"factory path.")
        return getattr(module, attr)

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
    code), or of the innermost frame at all when none is; importlib's own frozen frames are
    never the place (an import that fails inside them names the importing line)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen ")]
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


def is_missing_module(exc: BaseException, module_name: str) -> bool:
    """Whether `exc` says that `module_name` itself (or a package above it) does not exist, as
    opposed to the module existing and failing, or one of its own imports missing."""
    missing = getattr(exc, "name", None)
    return (isinstance(exc, ModuleNotFoundError) and missing is not None
            and (module_name == missing or module_name.startswith(missing + ".")))


def import_failure(exc: BaseException, module_name: str) -> str:
    """"Type: message (at file:line)" for an exception raised while importing a module: the
    line of the module's own code (a SyntaxError's own line), not importlib's frames."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_describe(exc)} (at {exc.filename}:{exc.lineno})"
    roots = code_roots(module_name) if module_name.split(".")[0] in sys.modules else []
    where = raised_at(exc, roots)
    return _describe(exc) + (f" (at {where})" if where != "?" else "")


def fix_for(exc: BaseException) -> str:
    """What to do about a plugin module that raised on import."""
    missing = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and missing:
        return (f"it needs {missing.split('.')[0]!r}, which is not installed: install it "
                f"(`pip install {missing.split('.')[0]}`, or the plugin's own dependencies), "
                f"or report the missing dependency to the plugin's authors.")
    return "fix that line, or report it to the plugin's authors."


class Registry:
    """Components by kind and name, the plugins they came from, and the plugins that broke."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.plugins: dict[str, PluginInfo] = {}
        self.broken: list[BrokenPlugin] = []
        self.refused: list[RefusedComponent] = []
        self.blocked: list[str] = []  # plugins left out by name (`-p no:NAME`)
        self.load_order: dict[str, int] = {}  # plugin name -> when it was discovered
        self.components: dict[str, dict[str, ComponentSpec]] = {kind: {} for kind in KINDS}

    @property
    def hooks(self) -> SafeHooks:
        """The lifecycle hook relay the trainer calls (a plugin's exception names the plugin)."""
        return SafeHooks(self.pm)

    # -- lookup -------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> ComponentSpec:
        """The component `name` of `kind`, or UnknownComponentError naming the nearest."""
        known = self.components[kind]
        if name in known:
            return known[name]
        raise UnknownComponentError(self.unknown_message(kind, name))

    def unknown_message(self, kind: str, name: str) -> str:
        """The paragraph for a name no plugin registered: the nearest name, the known ones."""
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
        """Every registered component, by kind then name."""
        return [spec for kind in KINDS for _, spec in sorted(self.components[kind].items())]

    def raise_if_broken(self) -> None:
        """PluginError naming every plugin that failed to load (commands that build refuse)."""
        if not self.broken:
            return
        lines = "; ".join(f"{b.name} ({b.source}): {b.error}" for b in self.broken)
        raise PluginError(
            f"{len(self.broken)} plugin(s) failed to load: {lines}. Fix or uninstall the "
            f"plugin, leave it out with `jepa -p no:NAME` (or {BLOCKED_PLUGINS_ENV}=NAME), or "
            f"set {AUTOLOAD_OFF_ENV}=1 to skip entry-point plugins and load the ones you need "
            f"with `jepa -p MODULE`."
        )

    # -- registration -------------------------------------------------------------------
    def _collect(self) -> None:
        for kind, hook_name in hookspecs.REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            # Call each implementation on its own so every component knows its plugin, in the
            # order the plugins were discovered (not pluggy's, which tryfirst could change):
            # the first to register a name keeps it.
            impls = sorted(caller.get_hookimpls(),
                           key=lambda i: self.load_order.get(i.plugin_name, len(self.load_order)))
            for impl in impls:
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
            if existing is not None and existing.plugin == plugin_name:
                raise PluginError(f"plugin {plugin_name!r} registers {kind} {name!r} twice; "
                                  f"register each name once.")
            if existing is not None:  # the newcomer loses this one component, not the plugin
                self.refused.append(RefusedComponent(
                    kind, name, plugin_name, info.distribution if info else None,
                    existing.plugin, existing.distribution))
                return
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
        if is_missing_module(exc, module_name):
            error = (f"import failed: {_describe(exc)}. "
                     + ("Check the module name." if source == "command line" else
                        f"The distribution {dist or '(unknown)'} is installed incompletely: "
                        f"reinstall it."))
        else:
            error = (f"import failed: {import_failure(exc, module_name)}. The fault is in the "
                     f"plugin: {fix_for(exc)}")
        registry.broken.append(BrokenPlugin(name, source, dist, error))
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
    registry.load_order[name] = len(registry.load_order)


def blocked_names(extra_plugins: Iterable[str]) -> tuple[list[str], set[str]]:
    """Split `-p` values into modules to load and names to leave out (`no:NAME`, and the
    comma-separated JEPA_DISABLE_PLUGINS)."""
    modules, blocked = [], set()
    for value in extra_plugins:
        if value.startswith(BLOCK_PREFIX):
            blocked.add(value[len(BLOCK_PREFIX):].strip())
        else:
            modules.append(value)
    blocked |= {n.strip() for n in os.environ.get(BLOCKED_PLUGINS_ENV, "").split(",")
                if n.strip()}
    return modules, blocked


def check_blocked(blocked: set[str], known: set[str]) -> None:
    """A name to leave out must name a plugin that is there: a typo would block nothing."""
    for name in sorted(blocked - known):
        near = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise PluginError(
            f"`-p no:{name}` (or {BLOCKED_PLUGINS_ENV}) names no installed plugin, so nothing "
            f"would be left out.{hint} Plugins by entry-point, module or distribution name: "
            f"{', '.join(sorted(known)) or 'none'}. `jepa plugins` lists them.")


def misspelt_hook(exc: pluggy.PluginValidationError, pm: pluggy.PluginManager) -> str:
    """pluggy's "unknown hook" message, with the nearest real hook name."""
    message = str(exc)
    match = re.search(r"unknown hook '([^']+)'", message)
    hooks = sorted(n for n in dir(hookspecs) if getattr(getattr(hookspecs, n), "jepa_spec", None))
    near = difflib.get_close_matches(match.group(1), hooks, n=1) if match else []
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return f"{message}.{hint} Hook names must match `jepa_core.hookspecs` (misspelt?)"


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
    extra_modules, blocked = blocked_names(extra_plugins)
    known: set[str] = set()

    def wanted(*names: str | None) -> bool:
        known.update(n for n in names if n)
        if blocked.intersection(names):
            registry.blocked.append(names[0] or "?")
            return False
        return True

    for module_name in BUILTIN_PLUGINS:
        _load_module(registry, module_name, module_name, "builtin")

    if autoload is None:
        autoload = not env_flag(AUTOLOAD_OFF_ENV)
    if autoload:
        def first_party_first(ep: md.EntryPoint) -> tuple[bool, str]:
            dist = ep.dist.name if ep.dist else None
            return dist != FIRST_PARTY_DISTRIBUTION, ep.name

        seen: set[str] = set()  # one distribution found twice on sys.path loads once
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=first_party_first):
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            module_name = ep.value.split(":")[0]
            if not wanted(ep.name, module_name, dist):
                continue
            if ep.name in seen:  # two distributions, one entry-point name
                holder = registry.plugins.get(ep.name)
                registry.broken.append(BrokenPlugin(
                    ep.name, "entry point", dist,
                    f"the entry-point name {ep.name!r} is already taken by distribution "
                    f"{(holder and holder.distribution) or '(another)'}; the plugin of {dist} "
                    f"was not loaded. Rename its entry point in group {ENTRY_POINT_GROUP!r}."))
                continue
            seen.add(ep.name)
            _load_module(registry, module_name, ep.name, "entry point", dist, version)

    env_extra = [m.strip() for m in os.environ.get(EXTRA_PLUGINS_ENV, "").split(",") if m.strip()]
    for module_name in [*env_extra, *extra_modules]:
        if wanted(module_name, *_dist_of_module(module_name)[:1]):
            _load_module(registry, module_name, module_name, "command line")
    check_blocked(blocked, known)
    for name, obj in objects:
        _add_plugin(registry, obj, name, "object", None, None, getattr(obj, "__name__", name))

    while True:  # a misspelt hook marks its plugin broken; the others go on
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            plugin_name = pm.get_name(exc.plugin) or "?"
            registry._mark_broken(plugin_name, misspelt_hook(exc, pm))
            pm.unregister(exc.plugin)
    registry._collect()
    return registry
