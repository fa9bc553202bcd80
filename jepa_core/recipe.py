"""Recipes: the YAML file that names the components of a run and the settings of training.

    recipe = load_recipe("recipes/quickstart.yaml", registry, overrides=["optim.lr=1e-3"])

Loading = safe YAML with bounds on aliases, nesting and duplicate keys (jepa_core.safe_yaml)
→ dotted overrides → ${VAR} / ${VAR:-default} interpolation in strings → structuring into the
frozen classes below, with every problem reported by path at once.

An override of a component's name (`masker.name=random`) switches the component: the section
starts again from the new component's defaults, keeping the keys its config class also has
(see `switch_component`).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import yaml

from jepa_core import safe_yaml
from jepa_core.errors import RecipeError
from jepa_core.geometry import geometry_problems
from jepa_core.structure import (
    COMPONENT_KIND,
    FAILED,
    Component,
    Structurer,
    component_field,
    component_list_field,
    unstructure,
)
from jepa_core.validate import (
    at_least,
    at_most,
    between,
    fits_in_paths,
    greater,
    plain_name,
    range_pair,
)

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry

# The largest learning rate accepted: AdamW hands lr / (1 - beta1) to float32 as a scalar, so
# 1e39 overflows inside the optimizer; every rate up to this runs into the non-finite guard.
MAX_LR = 1e30


@attrs.frozen
class OptimConfig:
    """AdamW with linear warmup then cosine lr, and a cosine weight-decay ramp (I-JEPA)."""

    # AdamW hands lr / (1 - beta1) and lr * weight_decay to float32 kernels as scalars: past
    # ~1e37 they overflow (a crash, not a non-finite step the guard can skip). Up to MAX_LR a
    # diverging run stops cleanly at the non-finite guard.
    lr: float = attrs.field(default=1e-3, validator=[greater(0), at_most(MAX_LR)])  # peak
    start_lr: float = attrs.field(default=2e-4, validator=between(0, MAX_LR))  # lr at step 0
    final_lr: float = attrs.field(default=1e-6, validator=between(0, MAX_LR))  # at the last step
    warmup_epochs: float = attrs.field(default=40.0, validator=at_least(0))
    weight_decay: float = attrs.field(default=0.04, validator=at_least(0))  # at step 0
    final_weight_decay: float = attrs.field(default=0.4, validator=at_least(0))
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=range_pair(0, 1))
    eps: float = attrs.field(default=1e-8, validator=greater(0))
    grad_clip: float | None = attrs.field(default=None, validator=greater(0))  # max grad norm


@attrs.frozen
class TrainConfig:
    """The recipe's `train:` section: epochs, global batch, step limits, precision, device,
    logging, checkpointing and stop conditions."""
    epochs: float = attrs.field(default=300.0, validator=greater(0))
    global_batch_size: int = attrs.field(default=2048, validator=at_least(1))
    # Steps per epoch; None: len(data) // global_batch_size (drop last).
    steps_per_epoch: int | None = attrs.field(default=None, validator=at_least(1))
    # Stop after this many steps (smoke tests); schedules still span the whole run.
    max_steps: int | None = attrs.field(default=None, validator=at_least(1))
    num_workers: int = attrs.field(default=0, validator=at_least(0))
    # torch's CPU threads in each training process (and its evaluation after training); None:
    # OMP_NUM_THREADS if set, else all cores (shared out under --nproc). See runtime/threads.
    threads: int | None = attrs.field(default=None, validator=at_least(1))
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, else fp32
    compile: bool = False  # torch.compile the encoders and predictor
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = attrs.field(default=10, validator=at_least(1))
    checkpoint_every: int = attrs.field(default=0, validator=at_least(0))  # steps; 0: at end only
    keep_last: int = attrs.field(default=2, validator=at_least(1))
    # Checkpoints at multiples of this many steps are kept for good (0: none).
    milestone_every: int = attrs.field(default=0, validator=at_least(0))
    # Steps with a non-finite loss or gradient are skipped; this many in a row stop the run.
    max_nonfinite_steps: int = attrs.field(default=10, validator=at_least(1))


@attrs.frozen
class EvalConfig:
    """`jepa eval` (and the evaluation after training): the protocols to run on frozen
    features of the method's eval module, a random-init encoder and raw pixels.

    protocols: registered eval protocols, `[knn, {name: linear, epochs: 50}, ...]`; left out:
        DEFAULT_PROTOCOLS. Features are extracted once per encoder into a cache of shards
        (`cache_dir`, default RUN_DIR/features/step_N), which every protocol reads.
    batch_size: images per forward pass when extracting. shard_size: images per cache shard
        (the most features held in memory at once while extracting).
    max_images: a seeded random subset of each split (None: all of them).
    tokens: where token features live (see the field).
    """

    after_train: bool = True
    protocols: tuple[Component, ...] | None = component_list_field("eval_protocol")
    batch_size: int = attrs.field(default=256, validator=at_least(1))
    shard_size: int = attrs.field(default=4096, validator=at_least(1))
    max_images: int | None = attrs.field(default=None, validator=at_least(2))
    cache_dir: str | None = None
    # Token features (the attentive probe): "cache" on disk like the others, "on_the_fly"
    # computed each time a protocol reads a shard (nothing stored), "auto": on the fly when
    # the token cache would take more than half of the free disk under the cache folder.
    tokens: Literal["auto", "cache", "on_the_fly"] = "auto"
    # Evaluation during training: at every K-th checkpoint (steps that are multiples of
    # K x train.checkpoint_every) and at the last one, the main process runs a kNN of the
    # method's eval module on `live_images` seeded probe-training and as many test images,
    # and writes {"step", "live_knn", ...} to metrics.jsonl. None: off.
    every_checkpoints: int | None = attrs.field(default=None, validator=at_least(1))
    live_images: int = attrs.field(default=500, validator=at_least(2))
    live_k: int = attrs.field(default=20, validator=at_least(1))  # neighbours of that kNN


# The protocols of a recipe without `eval.protocols` (names of registered eval protocols, as
# DEFAULT_METHOD is a method's name).
DEFAULT_PROTOCOLS = ("knn", "linear", "rankme")
# Keys of the L-BFGS probe that protocols replaced: accepted in old recipes with a note.
RETIRED_EVAL_KEYS = {
    "probe_epochs": "the L-BFGS probe is replaced by the `linear` protocol "
                    "(eval.protocols: [{name: linear, epochs: ...}])",
    "knn_k": "set k on the knn protocol (eval.protocols: [{name: knn, k: ...}])",
}


@attrs.frozen
class DistConfig:
    """The recipe's `dist:` section: DDP or FSDP2, the process-group backend, and the
    largest batch per device per micro-step."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    # Largest batch per device per micro-step; larger shares become gradient accumulation.
    per_device_batch_cap: int | None = attrs.field(default=None, validator=at_least(1))


# A recipe without a `method:` section is an I-JEPA recipe (every recipe written before
# methods were plugins); the name is the one default the kernel knows.
DEFAULT_METHOD = "ijepa"
# The component sections a method may go without (every run needs `data` and `encoder`).
METHOD_SECTIONS = ("predictor", "masker", "target_updater", "loss")


@attrs.frozen
class Recipe:
    """A validated recipe: the component sections (data, encoder, method and the sections
    the method builds), the seed, where runs go, and the optim/train/eval/dist settings."""
    name: str = attrs.field(validator=plain_name())  # the run's folder: out_dir/name
    data: Component = component_field("data_source")
    encoder: Component = component_field("encoder")
    method: Component | None = component_field("method", optional=True)
    predictor: Component | None = component_field("predictor", optional=True)
    masker: Component | None = component_field("masker", optional=True)
    target_updater: Component | None = component_field("target_updater", optional=True)
    loss: Component | None = component_field("loss", optional=True)
    seed: int = attrs.field(default=0, validator=at_least(0))
    out_dir: str = attrs.field(default="runs", validator=fits_in_paths())
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    dist: DistConfig = DistConfig()

    @property
    def run_dir(self) -> Path:
        """The run's folder, `out_dir/name`."""
        return Path(self.out_dir) / self.name

    @property
    def method_name(self) -> str:
        """The name of the recipe's method ("" before a method section is filled in)."""
        return self.method.name if self.method is not None else ""


# -- overrides and interpolation ---------------------------------------------------------
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def apply_override(data: dict, override: str) -> None:
    """Set `a.b.c=value` in nested dicts; the value is read as YAML (`1e-3`, `[0.1, 0.2]`)."""
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise RecipeError("command line", [(override, "an override must look like key.sub=value")])
    if len(parts) > safe_yaml.MAX_DEPTH:
        raise RecipeError("command line", [(override[:60] + "...", (
            f"nests deeper than {safe_yaml.MAX_DEPTH} sections; a recipe needs a few"))])
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = "$." + ".".join(parts[: i + 1])
            raise RecipeError("command line", [(where, f"is not a section; cannot set {key}")])
        node = child
    try:
        value = safe_yaml.load(raw) if raw.strip() else ""
    except safe_yaml.YamlProblem as exc:
        problems = [("$." + key + p[1:], m) for p, m in exc.problems]
        raise RecipeError("command line", problems) from exc
    except yaml.YAMLError as exc:
        problem = ("$." + key, f"value {raw!r} is not valid YAML: {exc}")
        raise RecipeError("command line", [problem]) from exc
    node[parts[-1]] = value


def interpolate(value: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """`value` with `${VAR}` and `${VAR:-default}` replaced from the environment, recursively;
    an unset variable without a default is recorded in `problems` at its `path`."""
    if isinstance(value, dict):
        return {k: interpolate(v, f"{path}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.append((path, f"environment variable {name} is not set; set it, or write "
                               f"${{{name}:-default}} to give a default"))
        return match.group(0)

    result = _ENV.sub(sub, value)
    if result != value and path.endswith(("_root", ".root", "_dir", ".path")):
        result = os.path.expanduser(result)
    return result


# -- loading -----------------------------------------------------------------------------
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few kB; a larger file is almost surely another


def _decode(source: str, raw: bytes) -> str:
    """The text of a recipe file, or RecipeError for data, binaries and non-UTF-8 text."""
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(source, [("$", f"is {len(raw) / 2**20:.1f} MiB; a recipe is a small "
                                         f"text file (at most 1 MiB). Check the path")])
    if b"\0" in raw:
        raise RecipeError(source, [("$", "is a binary file (it holds NUL bytes), not a YAML "
                                         "recipe. Check the path")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError(source, [("$", (
            f"is not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}, column {column} "
            f"cannot be decoded. Save the file as UTF-8"))]) from None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """One sentence for a YAML syntax error: where, and what."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character in otherwise good text
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return (f"holds the control character U+{exc.character:04X} at line {line}, column "
                f"{column}, which YAML does not allow; is this a text recipe?")
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
    problem = getattr(exc, "problem", None) or str(exc)
    return f"is not valid YAML at {where}: {problem}"


def parse_yaml(text: str, source: str) -> Any:
    """YAML text → data through the bounded loader (jepa_core.safe_yaml), or RecipeError."""
    try:
        return safe_yaml.load(text)
    except safe_yaml.YamlProblem as exc:
        raise RecipeError(source, exc.problems) from None
    except yaml.YAMLError as exc:
        raise RecipeError(source, [("$", _yaml_problem(exc, text))]) from None


def read_yaml(path: str | os.PathLike) -> dict:
    """The YAML mapping in the file at `path`; RecipeError naming the file for a missing or
    unreadable file, bad YAML, or a top level that is not a mapping."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise RecipeError(source, [("$", "file not found; check the path")]) from None
    except OSError as exc:
        raise RecipeError(source, [("$", f"cannot be read: {exc.strerror}")]) from None
    data = parse_yaml(_decode(source, raw), source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, [("$", "must be a mapping of sections "
                                         f"(got {type(data).__name__})")])
    return data


def component_sections() -> dict[str, str]:
    """{recipe section: component kind} of every component section (`data: data_source`, ...)."""
    return {f.name: f.metadata[COMPONENT_KIND] for f in attrs.fields(Recipe)
            if COMPONENT_KIND in f.metadata}


def switch_component(data: dict, section: str, old: Any, registry: Registry) -> str | None:
    """After `<section>.name=<new>` changed a component section's name: the section again from
    <new>'s defaults, keeping the keys of the old section that <new>'s config class also has.
    Returns a note naming the dropped keys (None when nothing was dropped). An unknown name
    changes nothing (the loader reports it, with the registered names)."""
    new = data.get(section)
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    kind, name, old_name = component_sections()[section], new.get("name"), old.get("name")
    if not isinstance(name, str) or name == old_name or name not in registry.components[kind]:
        return None
    fields = {f.alias or f.name for f in attrs.fields(registry.get(kind, name).config_class)
              if f.init}
    kept = [k for k in new if k != "name" and k in fields]
    dropped = [k for k in new if k != "name" and k not in fields]
    data[section] = {"name": name, **{k: new[k] for k in kept}}
    if not dropped:
        return None
    return (f"{section}.name={name}: the {section} section starts again from the defaults of "
            f"{kind} {name!r}; dropped the keys it does not have (from {old_name!r}): "
            f"{', '.join(map(str, dropped))}" + (f"; kept: {', '.join(map(str, kept))}"
                                                  if kept else ""))


def apply_overrides(data: dict, overrides: Sequence[str], registry: Registry,
                    notes: list[str] | None = None) -> None:
    """Apply `key=value` overrides in order (see `apply_override`); one that renames a
    component section switches the component (see `switch_component`), its note appended to
    `notes`."""
    sections = component_sections()
    for override in overrides:
        parts = override.partition("=")[0].strip().split(".")
        switching = len(parts) == 2 and parts[1] == "name" and parts[0] in sections
        old = copy.deepcopy(data.get(parts[0])) if switching else None
        apply_override(data, override)
        note = switch_component(data, parts[0], old, registry) if switching else None
        if note and notes is not None:
            notes.append(note)


def recipe_from_dict(data: dict, registry: Registry, source: str = "recipe",
                     overrides: Sequence[str] = (), notes: list[str] | None = None) -> Recipe:
    """The Recipe of YAML data, overrides applied (their notes appended to `notes`), or
    RecipeError listing every problem by path."""
    data = copy.deepcopy(data)  # overrides write into nested sections: never the caller's
    apply_overrides(data, list(overrides), registry, notes)
    problems: list[tuple[str, str]] = []
    data = interpolate(data, "$", problems)
    if isinstance(data, dict) and data.get("method") is None:
        data["method"] = {"name": DEFAULT_METHOD}
    if isinstance(data, dict):
        retire_eval_keys(data, notes, registry)
    structurer = Structurer(registry)
    recipe = structurer.structure_attrs(data, Recipe, "$")
    problems.extend(structurer.problems)
    if isinstance(data, dict):
        problems.extend(method_section_problems(data, registry))
    if recipe is not FAILED:
        problems.extend(live_eval_problems(recipe))
        problems.extend(geometry_problems(recipe))
    if problems or recipe is FAILED:
        raise RecipeError(source, problems, override_origins(problems, list(overrides)))
    return recipe


def override_origins(problems: list[tuple[str, str]], overrides: Sequence[str]
                     ) -> dict[str, str]:
    """{"$.path": "key=value"} of the problems at or under a key set on the command line
    (`RecipeError` then says the value came from there, not from the file)."""
    keys = {"$." + o.partition("=")[0].strip(): o for o in overrides}
    origins = {}
    for path, _ in problems:
        for key, override in keys.items():
            if path == key or path.startswith((key + ".", key + "[")):
                origins[path] = override
    return origins


def retire_eval_keys(data: dict, notes: list[str] | None, registry: Registry) -> None:
    """Fill in the default protocols (those of DEFAULT_PROTOCOLS that are registered: with
    the evaluation plugin left out, a recipe still loads and evaluates nothing), and drop the
    retired keys of the old probe (recipes saved in older checkpoints have them) with a note
    saying what replaced each."""
    section = data.get("eval")
    if section is None:
        section = data["eval"] = {}
    if not isinstance(section, dict):
        return  # reported by the structurer
    for key, instead in RETIRED_EVAL_KEYS.items():
        if key in section:
            value = section.pop(key)
            if notes is not None:
                notes.append(f"eval.{key}={value} is no longer used: {instead}")
    if section.get("protocols") is None:
        known = registry.components.get("eval_protocol", {}) if registry is not None else {}
        section["protocols"] = [name for name in DEFAULT_PROTOCOLS if name in known]


def live_eval_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """eval.every_checkpoints counts checkpoints, so the run needs periodic ones."""
    if recipe.eval.every_checkpoints is not None and not recipe.train.checkpoint_every:
        return [("$.eval.every_checkpoints", (
            f"runs the in-training kNN every {recipe.eval.every_checkpoints} checkpoint(s), "
            f"but train.checkpoint_every is 0 (one checkpoint, at the end); set "
            f"train.checkpoint_every=N too (the kNN then runs every "
            f"N x {recipe.eval.every_checkpoints} steps), or remove eval.every_checkpoints"))]
    return []


def method_section_problems(data: dict, registry: Registry) -> list[tuple[str, str]]:
    """A section the method needs but the recipe lacks, or one it has but the method never
    uses, as (path, message); nothing when the method's config does not declare `needs()` or
    the method is unknown (that problem is reported on its own)."""
    trial = Structurer(registry)
    raw = data.get("method")
    method = trial.structure_component(raw, "method", "$.method")
    if trial.problems:  # a wrong value in the method's own config: judge by its defaults
        name = raw.get("name") if isinstance(raw, dict) else None
        method = Structurer(registry).structure_component({"name": name}, "method", "$.method")
    needs = getattr(getattr(method, "config", None), "needs", None)
    if needs is None:
        return []
    wanted, name = tuple(needs()), method.name
    problems = []
    for section in METHOD_SECTIONS:
        present = data.get(section) is not None
        if section in wanted and not present:
            problems.append((f"$.{section}", f"method {name!r} needs a {section} section "
                             f"(`{section}: {{name: ...}}`); add one, see `jepa plugins` for "
                             f"the registered ones"))
        elif present and section not in wanted:
            problems.append((f"$.{section}", f"method {name!r} does not use a {section}; "
                             f"remove this section (or choose a method that uses it)"))
    return problems


def load_recipe(path: str | os.PathLike, registry: Registry, overrides: Sequence[str] = (),
                notes: list[str] | None = None) -> Recipe:
    """The recipe file at `path` with `overrides` (see `recipe_from_dict`)."""
    return recipe_from_dict(read_yaml(path), registry, str(path), list(overrides), notes)


def recipe_to_dict(recipe: Recipe) -> dict:
    """The recipe as plain data (what checkpoints store and `recipe_from_dict` reads back)."""
    return unstructure(recipe)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The recipe as YAML, sections in declaration order (`jepa check` and the run folder)."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
