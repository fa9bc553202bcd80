"""User-facing errors: each carries one paragraph that says what is wrong and how to fix it.

The CLI prints these without a traceback and exits with `exit_code`.
"""

from __future__ import annotations


class JepaError(Exception):
    """An error caused by the user's input (recipe, command line, plugin); exit code 2."""

    exit_code = 2
    title = "error"


class RecipeError(JepaError):
    """A recipe that cannot be loaded; `problems` lists every ("$.path", message) found.
    `origins`: {"$.path": "key=value"} of the problems whose value came from a command-line
    override rather than from `source` (the message says so: the file does not hold it)."""

    title = "invalid recipe"

    def __init__(self, source: str, problems: list[tuple[str, str]],
                 origins: dict[str, str] | None = None):
        self.source = source
        self.problems = list(problems)
        self.origins = dict(origins or {})
        lines = [f"{path}: {msg}" + (f" (set on the command line: {self.origins[path]})"
                                     if path in self.origins else "")
                 for path, msg in self.problems]
        where = f"{source} as changed on the command line" if self.origins else source
        super().__init__(
            f"{where} has {len(lines)} problem{'s' if len(lines) != 1 else ''}:\n  "
            + "\n  ".join(lines)
        )


class PluginError(JepaError):
    """A plugin that failed to import, register or validate its hooks."""

    title = "plugin error"


class PluginFailed(PluginError):
    """A plugin's own code raised while a command used it: a component factory or a lifecycle
    hook. Exit code 1, like RunError: the user's input was accepted, and the fault is in the
    plugin (or in what it ran into at run time), so retrying the same input is not "fixing a
    typo". It stays a PluginError so that `except PluginError` sees every plugin fault, and it
    is not a RunError, which callers read as "the data or the cluster failed"."""

    exit_code = 1
    title = "plugin failed"


class MaskerOutputError(PluginError):
    """Masks that break the masker contract (`jepa_core.maskcheck`), found by the trainer on
    the first steps of a run: a target leak, duplicate or out-of-range indices, a wrong dtype
    or shape, use of the global RNG. Exit code 2: the run is refused before it trains."""

    title = "masker output"


class UnknownComponentError(JepaError):
    """A recipe names a component no loaded plugin registers (the message suggests the
    closest name and lists the registered ones of that kind)."""
    title = "unknown component"


class ConfigError(JepaError):
    """A component configuration that is well-formed but cannot work (e.g. impossible masks)."""

    title = "invalid configuration"


class RunError(JepaError):
    """A failure of a run that is not a bug: missing data, failed distributed init, ..."""

    exit_code = 1
    title = "run failed"


class CheckpointError(RunError):
    """A checkpoint file that exists but cannot be used: truncated or corrupt, refused because
    it holds pickled code, or missing required keys. Resume and eval skip it for an older one."""

    title = "unusable checkpoint"


class BadSample(Exception):
    """Raised by a data source for one unreadable sample; the core skips it and counts it."""


class Preempted(JepaError):
    """The run stopped on SIGTERM / SIGUSR1 / SIGINT after writing a checkpoint; exit 128 +
    signal, the convention SLURM and submitit read as "killed by a signal" (requeue-able)."""

    title = "preempted"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
        if signum == 2:  # SIGINT: Ctrl-C
            self.title = "interrupted"
