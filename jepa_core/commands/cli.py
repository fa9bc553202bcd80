"""The `jepa` command line. Thin: each command parses its arguments and delegates.

    jepa plugins [--json]                 what is installed, from which plugin and distribution
    jepa check RECIPE [key=value ...]     validate a recipe as `jepa run` would (plugins, factories,
                                          data; --no-data skips the data), print it and the plan
    jepa run RECIPE [key=value ...]       train (CPU, one GPU, all local GPUs, torchrun, SLURM)
    jepa masks RECIPE --out masks.png     picture and statistics of the recipe's masker
    jepa eval RUN_OR_CHECKPOINT           the recipe's eval protocols on frozen features
    jepa eval RUN_A RUN_B [...] [--json]  the runs' eval.json side by side, recipe differences
    jepa plot RUN_DIR [--out FILE.png]    loss, lr, EMA, rank, live kNN and probes in one PNG

Global options come before the command: `jepa -p my_plugin.module check recipe.yaml`;
`jepa -p no:NAME ...` leaves an installed plugin out.
Recipe and usage errors exit with 2 and one paragraph of explanation, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jepa_core import __version__
from jepa_core.errors import JepaError, RunError

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry
    from jepa_core.recipe import Recipe


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jepa", description="Train and evaluate joint-embedding predictive architectures.")
    p.add_argument("--version", action="version", version=f"jepa {__version__}")
    p.add_argument("-p", "--plugin", action="append", default=[], metavar="MODULE",
                   help="load a plugin module (repeatable), after the installed entry points; "
                        "-p no:NAME leaves out the plugin of that entry-point, module or "
                        "distribution name (as JEPA_DISABLE_PLUGINS=NAME,... does)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser("plugins", help="list installed plugins and their components")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    def recipe_command(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("recipe", help="path to a YAML recipe")
        c.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. optim.lr=1e-3 train.epochs=10")
        return c

    c = recipe_command("check", "validate a recipe and print it resolved, with the run plan")
    c.add_argument("--gpus", type=int, default=None, help="plan for this many GPUs")
    c.add_argument("--no-data", action="store_true",
                   help="plan without reading the data (its size is assumed, and stated)")

    r = recipe_command("run", "train from a recipe")
    r.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="resume from the latest checkpoint of the run (auto) or from PATH")
    r.add_argument("--nproc", default=None, metavar="N|gpu",
                   help="processes on this machine: a number (CPU: gloo) or 'gpu' (one per GPU)")
    r.add_argument("--force", action="store_true",
                   help="resume even if the recipe differs from the checkpoint's")
    s = r.add_argument_group("SLURM submission (pip install 'jepa-core[slurm]')")
    s.add_argument("--slurm", action="store_true", help="submit the run through submitit")
    s.add_argument("--slurm-cluster", choices=["slurm", "local"], default="slurm",
                   help="'local' runs the job here through submitit's local executor")
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, default=8, help="one task per GPU")
    s.add_argument("--tasks-per-node", type=int, default=1, help="tasks for --slurm-cluster local")
    s.add_argument("--cpus-per-task", type=int, default=10)
    s.add_argument("--partition", default=None)
    s.add_argument("--time-min", type=int, default=4320, help="time limit in minutes")
    s.add_argument("--slurm-dir", default=None, help="submitit folder (default RUN_DIR/slurm)")
    s.add_argument("--wait", action="store_true", help="wait for the job and show its result")

    m = recipe_command("masks", "draw the recipe's masks and print their statistics")
    m.add_argument("--out", default="masks.png", help="PNG to write (default masks.png)")
    m.add_argument("--samples", type=int, default=4, help="samples to draw in the picture")
    m.add_argument("--batch-size", type=int, default=None,
                   help="batch size for the statistics (default: the recipe's global batch)")
    m.add_argument("--seed", type=int, default=None, help="default: the recipe's seed")

    e = sub.add_parser("eval", help="evaluation protocols (kNN, linear, ...) on frozen "
                                    "features; with several runs, their eval.json side by side",
                       usage="jepa eval [-h] [--no-baseline] [--nproc N] RUN_OR_CHECKPOINT "
                             "[KEY=VALUE ...]"
                             "\n       jepa eval [--json] RUN_A RUN_B [RUN ...]")
    e.add_argument("source", nargs="+", metavar="SOURCE",
                   help="a run directory or a checkpoint file, then overrides of the run's "
                        "recipe (e.g. data.name=digits); or two or more run directories / "
                        "eval.json files to compare (nothing is evaluated again)")
    e.set_defaults(overrides=[])
    e.add_argument("--no-baseline", action="store_true",
                   help="skip the randomly initialised encoder and raw pixels used for "
                        "comparison")
    e.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="extract features with N processes (each its share of the shards)")
    e.add_argument("--json", action="store_true",
                   help="the comparison of several runs as JSON")

    pl = sub.add_parser("plot", help="draw a run's metrics and probe results to a PNG")
    pl.add_argument("run_dir", help="a run directory (holding metrics.jsonl)")
    pl.add_argument("--out", default=None, metavar="FILE.png",
                    help="PNG to write (default RUN_DIR/plot.png)")
    i = sub.add_parser("import-checkpoint",
                       help="convert an official I-JEPA or V-JEPA checkpoint to a jepa checkpoint")
    i.add_argument("official", help="the official .pth.tar (encoder, predictor, target_encoder)")
    i.add_argument("recipe", help="recipe whose encoder and predictor match the checkpoint")
    i.add_argument("--out", required=True, metavar="PATH", help="jepa checkpoint to write")
    i.add_argument("--allow-partial", action="store_true",
                   help="import the keys that match; the others keep the recipe's init")

    x = sub.add_parser("export", help="write a checkpoint's encoder as timm safetensors weights")
    x.add_argument("checkpoint", help="a jepa checkpoint file")
    x.add_argument("--out", required=True, metavar="FILE.safetensors")
    x.add_argument("--which", default=None, metavar="MODULE",
                   help="which module of the checkpoint (default: the one `jepa eval` probes, "
                        "e.g. target_encoder for I-JEPA)")
    return p


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _registry(args: argparse.Namespace, warn: bool = True) -> Registry:
    """The registry of this command's plugins (`-p MODULE`, `-p no:NAME`); components refused
    for a name already taken are warned about on stderr (once, not by every worker)."""
    from jepa_core.plugins import make_plugin_manager

    registry = make_plugin_manager(args.plugin)
    if warn and registry.refused and os.environ.get("RANK", "0") == "0":
        from jepa_core.commands.listing import print_refused

        print_refused(registry, _console(stderr=True))
    return registry


def print_notes(notes: list[str]) -> None:
    """Notes from loading a recipe (a component switched by an override), on stderr."""
    if notes:
        from rich.markup import escape

        console = _console(stderr=True)
        for note in notes:
            console.print(f"[yellow]note:[/yellow] {escape(note)}")


def _load(args: argparse.Namespace, registry: Registry) -> Recipe:
    from jepa_core.recipe import load_recipe

    notes: list[str] = []
    try:
        return load_recipe(args.recipe, registry, args.overrides, notes)
    finally:  # also before the problems of a recipe that does not load
        print_notes(notes)


def cmd_plugins(args: argparse.Namespace) -> int:
    """`jepa plugins [--json]`: the components, their plugins, what broke or was left out."""
    from jepa_core.commands.listing import plugins_json, print_plugins

    registry = _registry(args, warn=False)  # the listing shows them
    if args.json:
        print(json.dumps(plugins_json(registry), indent=2))
    else:
        print_plugins(registry, _console())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """`jepa check RECIPE`: refuse what `jepa run` refuses, print the recipe and its plan."""
    registry = _registry(args)
    registry.raise_if_broken()  # as `jepa run` does: check passes only what run accepts
    recipe = _load(args, registry)
    from jepa_core.commands.plan import print_check  # torch: only for a recipe that loads

    print_check(recipe, registry, _console(), gpus=args.gpus, read_data=not args.no_data)
    return 0


def check_nproc(value: str | None) -> None:
    """`--nproc`: a whole number of processes >= 1, or 'gpu'; refused before anything starts."""
    if value is None or value == "gpu":
        return
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        from jepa_core.errors import ConfigError

        raise ConfigError(f"--nproc must be a number of processes of at least 1, or 'gpu' for "
                          f"one process per visible GPU (got {value!r}). Leave it out to train "
                          f"in this one process.")


def cmd_run(args: argparse.Namespace) -> int:
    """`jepa run RECIPE`: train here, with --nproc processes, or through SLURM."""
    check_nproc(args.nproc)
    registry = _registry(args)
    registry.raise_if_broken()
    recipe = _load(args, registry)
    if args.slurm:
        from jepa_core.runtime.slurm import submit

        job = submit(args, recipe.run_dir)
        if args.wait:
            from jepa_core.runtime.slurm import wait

            wait(job)
        return 0
    from jepa_core.runtime.launch import launch  # torch: only once the recipe is known to be good

    return launch(recipe, registry, args)


def cmd_masks(args: argparse.Namespace) -> int:
    """`jepa masks RECIPE`: a picture and the statistics of the recipe's masks."""
    registry = _registry(args)
    recipe = _load(args, registry)
    from jepa_core.commands.mask_preview import masks_command  # torch: only for a valid recipe

    masks_command(recipe, registry, args.out, samples=args.samples, seed=args.seed,
                  batch_size=args.batch_size, console=_console())
    return 0


def split_eval_sources(values: list[str]) -> tuple[list[str], list[str]]:
    """(sources, overrides) of `jepa eval`'s positional arguments: KEY=VALUE is an override
    unless it names an existing path."""
    sources: list[str] = []
    overrides: list[str] = []
    for value in values:
        is_override = "=" in value and not os.path.exists(value)
        (overrides if is_override else sources).append(value)
    return sources, overrides


def cmd_eval(args: argparse.Namespace) -> int:
    """`jepa eval RUN`: the recipe's evaluation protocols on the run's frozen encoder."""
    from jepa_core.errors import ConfigError

    sources, overrides = split_eval_sources(args.source)
    overrides += args.overrides
    if not sources:
        raise ConfigError("jepa eval needs a run directory or a checkpoint file (got only "
                          f"overrides: {' '.join(overrides)}).")
    if len(sources) > 1:
        unused = [*overrides, *(["--no-baseline"] if args.no_baseline else [])]
        if unused:
            raise ConfigError(
                f"jepa eval with {len(sources)} runs compares their eval.json and evaluates "
                f"nothing, so {' '.join(unused)} would change nothing. Evaluate each run on its "
                f"own with them (`jepa eval RUN {' '.join(unused)}`), then compare.")
        from jepa_core.commands.compare import compare_command  # no torch: reads files

        return compare_command(sources, args.json, _console())
    if args.json:
        raise ConfigError("--json is for comparing two or more runs (`jepa eval RUN_A RUN_B "
                          "--json`); the evaluation of one run writes its eval.json.")
    registry = _registry(args)
    registry.raise_if_broken()
    from jepa_core.commands.evaluate import eval_command  # torch: only once the plugins are sound

    argv = [*sum((["-p", m] for m in args.plugin), []), "eval", sources[0], *overrides,
            *(["--no-baseline"] if args.no_baseline else [])]
    return eval_command(sources[0], registry, overrides, baseline=not args.no_baseline,
                        console=_console(), nproc=args.nproc, argv=argv)


def cmd_plot(args: argparse.Namespace) -> int:
    """`jepa plot RUN_DIR`: the run's metrics and evaluation as one PNG."""
    from jepa_core.commands.plot import plot_command  # matplotlib: only for this command

    return plot_command(args.run_dir, args.out, _console())


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    """`jepa import-checkpoint`: an official I-JEPA or V-JEPA checkpoint as a jepa one."""
    registry = _registry(args)
    registry.raise_if_broken()
    from jepa_core.commands.interop import import_official, print_report

    report = import_official(args.official, args.recipe, registry, args.out,
                             allow_partial=args.allow_partial)
    print_report(report, _console())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`jepa export`: a checkpoint's encoder as timm safetensors weights."""
    registry = _registry(args)
    registry.raise_if_broken()
    from jepa_core.commands.interop import export_timm

    info = export_timm(args.checkpoint, args.out, which=args.which, registry=registry)
    json_path = args.out.rsplit(".", 1)[0] + ".json"
    _console().print(f"wrote {args.out} and {json_path}; load it with:\n{info['usage']}")
    return 0


COMMANDS = {"plugins": cmd_plugins, "check": cmd_check, "run": cmd_run, "masks": cmd_masks,
            "eval": cmd_eval, "plot": cmd_plot, "import-checkpoint": cmd_import_checkpoint,
            "export": cmd_export}


def error_title(exc: JepaError, command: str | None = None) -> str:
    """The panel's title: the command that failed and what went wrong, e.g. "jepa check:
    recipe refused". RunError's generic "run failed" is said only of `jepa run`: another
    command ran nothing (`jepa check` refuses what `jepa run` would refuse)."""
    if command is None:
        return f"jepa: {exc.title}"
    title = exc.title
    if title == RunError.title and command != "run":
        title = "recipe refused" if command == "check" else "failed"
    return f"jepa {command}: {title}"


def report_error(exc: JepaError, command: str | None = None) -> None:
    """One red panel on stderr: the error's title (naming `command`) and its paragraph."""
    from rich.panel import Panel
    from rich.text import Text

    _console(stderr=True).print(Panel(Text(str(exc)), title=error_title(exc, command),
                                      title_align="left", border_style="red"))


def main(argv: Sequence[str] | None = None) -> int:
    """The `jepa` command: parse, run the command, map errors to exit codes."""
    from jepa_core.runtime.threads import set_defaults

    set_defaults()  # before anything imports torch: its OpenMP runtime reads them once
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (`jepa run r.yaml --nproc 2 optim.lr=1e-3`)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except JepaError as exc:
        report_error(exc, args.command)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
