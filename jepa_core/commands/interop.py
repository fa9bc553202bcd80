"""Interop: official I-JEPA and V-JEPA checkpoints in, plain timm weights out.

    jepa import-checkpoint IN1K-vit.h.14-300e.pth.tar recipes/in1k_vith14.yaml --out vith14.pt
    jepa eval vith14.pt data.name=...                 # probes the imported target encoder
    jepa export vith14.pt --out vith14.safetensors    # + vith14.json: the create_model kwargs

An official checkpoint is a dict with `encoder`, `predictor`, `target_encoder` (DDP state dicts:
every key starts with `module.`) and `opt`, `scaler`, `epoch`, `loss`, `batch_size`,
`world_size`, `lr`. Less the prefix, its encoder keys are timm's and its predictor keys are the
official predictor's (a recipe whose predictor plugin keeps that layout, as `vit_predictor`
does, can import them), so the import is a prefix strip plus a strict check of every key and
shape against the models the recipe builds. A partial match is refused unless asked for.

An official V-JEPA checkpoint has the same top-level keys; its models were wrapped once more
(`MultiMaskWrapper`), so its keys start with `module.backbone.`. Less both prefixes, its
encoder keys are those of `vit_video` (`patch_embed.proj` a Conv3d, `pos_embed`, `blocks.N.*`,
`norm`) and its predictor keys those of `vit_predictor` with `num_mask_tokens` set
(`mask_tokens.0`, `mask_tokens.1`, ...).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch

from jepa_core.errors import ConfigError, RunError
from jepa_core.recipe import Recipe, load_recipe, recipe_from_dict, recipe_to_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.build import build, build_models
from jepa_core.runtime.rundir import ensure_writable

if TYPE_CHECKING:  # pragma: no cover
    from jepa_core.plugins import Registry

MODELS = ("encoder", "predictor", "target_encoder")
EXTRAS = ("opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr")
PREFIX = "module."  # DistributedDataParallel's, on every key of the official state dicts
WRAPPER = "backbone."  # V-JEPA's MultiMaskWrapper / PredictorMultiMaskWrapper, after PREFIX
SHOW = 5  # key names quoted per problem in messages


@attrs.frozen
class KeyMatch:
    """How one state dict of the file lines up with the model the recipe builds."""

    model: str  # "encoder", "predictor" or "target_encoder"
    matched: list[str]
    missing: list[str]  # the model has them, the file does not
    unexpected: list[str]  # the file has them, the model does not
    mismatched: list[tuple[str, tuple, tuple]]  # (key, shape in the file, shape in the model)

    @property
    def complete(self) -> bool:
        """True when every key matched in name and shape (nothing missing, unexpected or
        mismatched)."""
        return not (self.missing or self.unexpected or self.mismatched)


@attrs.frozen
class ImportReport:
    """What an import did: the source file, the checkpoint written, the epoch the source
    recorded, and how each model's keys matched."""
    source: str
    out_path: str
    epoch: int | None
    models: list[KeyMatch]

    @property
    def complete(self) -> bool:
        """True when every model of the import matched completely."""
        return all(m.complete for m in self.models)


# -- reading ------------------------------------------------------------------------------
_PICKLED_CLASS = re.compile(r"Unsupported (?:global|class):? (?:GLOBAL )?([\w.]+)")


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # only used to enrich an error message; the file is already unreadable
        return []


def load_torch_file(path: Path) -> Any:
    """torch.load with weights_only=True (never runs code from the file), memory-mapped when the
    file is in torch's zip format so multi-GB checkpoints are not read twice."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise RunError(f"{path} is empty (0 bytes); the download or copy did not finish.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True,
                          mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        # A pickled class (numpy scalar, argparse.Namespace, ...) needs weights_only=False;
        # any other unpickling failure means the file is not a checkpoint at all.
        if not _PICKLED_CLASS.search(str(exc)):
            raise _unreadable(path, exc) from exc
        names = _unsafe_globals(path) or _PICKLED_CLASS.findall(str(exc))
        what = f" (it pickles {', '.join(names[:SHOW])})" if names else ""
        raise RunError(
            f"{path} can only be read with torch.load(weights_only=False){what}, which runs code "
            f"stored in the file; jepa does not do that. If you trust the file, re-save just its "
            f"tensors: `c = torch.load(PATH, weights_only=False); torch.save({{k: c[k] for k in "
            f"('encoder', 'predictor', 'target_encoder')}} | {{'epoch': int(c['epoch'])}}, "
            f"'clean.pth')`, then import clean.pth.") from exc
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> RunError:
    # torch wraps the cause in advice to retry with weights_only=False, which would not help.
    cause = str(exc).partition("WeightsUnpickler error:")[2].strip() or str(exc)
    cause = cause.splitlines()[0] if cause else "no details"
    return RunError(f"{path} cannot be read by torch.load ({type(exc).__name__}: {cause}); it "
                    f"is not a PyTorch checkpoint, or it is truncated or corrupt.")


def read_official(path: Path) -> dict:
    """The file's dict, after checking that it looks like an official I-JEPA or V-JEPA
    checkpoint."""
    data = load_torch_file(path)
    if isinstance(data, dict) and data.get("format") == ckpt.FORMAT:
        raise RunError(f"{path} is already a jepa checkpoint; use it directly (`jepa eval`, "
                       f"`jepa run --resume`), there is nothing to import.")
    if not isinstance(data, dict) or not any(isinstance(data.get(m), dict) for m in MODELS):
        keys = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise RunError(
            f"{path} is not an official I-JEPA or V-JEPA checkpoint: it has no 'encoder', "
            f"'predictor' or "
            f"'target_encoder' state dict (found: {keys}). A bare encoder state dict (e.g. timm "
            f"weights) can be loaded with timm directly.")
    return data


def strip_key(key: str) -> str:
    """A key less its DDP `module.` prefix and then V-JEPA's wrapper `backbone.` prefix (each
    where present)."""
    for prefix in (PREFIX, WRAPPER):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def strip_prefix(state: dict) -> dict:
    """The state dict with the DDP `module.` and V-JEPA's `backbone.` prefixes removed from
    the keys that have them."""
    return {strip_key(k): v for k, v in state.items()}


def official_format(data: dict) -> str:
    """The source's format: "official-vjepa" when any model's keys carry V-JEPA's `backbone.`
    wrapper prefix, else "official-ijepa"."""
    for model in MODELS:
        state = data.get(model)
        if isinstance(state, dict) and any(
                str(k).removeprefix(PREFIX).startswith(WRAPPER) for k in state):
            return "official-vjepa"
    return "official-ijepa"


def match_keys(model: str, theirs: dict, ours: dict) -> KeyMatch:
    """Compare a file's state dict (prefix stripped) with a model's, key by key and by shape."""
    matched, mismatched = [], []
    for key in ours:
        if key in theirs:
            shape = tuple(getattr(theirs[key], "shape", ()) or ())
            if torch.is_tensor(theirs[key]) and shape == tuple(ours[key].shape):
                matched.append(key)
            else:
                mismatched.append((key, shape, tuple(ours[key].shape)))
    return KeyMatch(model, matched, [k for k in ours if k not in theirs],
                    [k for k in theirs if k not in ours], mismatched)


# -- import -------------------------------------------------------------------------------
def _refusal(report: ImportReport, recipe_name: str) -> ConfigError:
    lines = []
    for m in report.models:
        if m.missing:
            lines.append(f"{m.model}: {len(m.missing)} missing ({', '.join(m.missing[:SHOW])})")
        if m.unexpected:
            lines.append(f"{m.model}: {len(m.unexpected)} unexpected "
                         f"({', '.join(m.unexpected[:SHOW])})")
        if m.mismatched:
            shown = ", ".join(f"{k} {list(a)} in the file vs {list(b)}"
                              for k, a, b in m.mismatched[:SHOW])
            lines.append(f"{m.model}: {len(m.mismatched)} with other shapes ({shown})")
    return ConfigError(
        f"{report.source} does not match the models of recipe {recipe_name!r}:\n  "
        + "\n  ".join(lines) + "\nMake the recipe's encoder and predictor match the checkpoint "
        "(model, img_size, patch_size, num_frames/tubelet_size for video, predictor "
        "embed_dim/depth/num_mask_tokens), or pass --allow-partial to "
        "import the keys that match and keep the recipe's initialisation for the rest.")


def _load_matching(model: torch.nn.Module, theirs: dict, match: KeyMatch) -> None:
    state = model.state_dict()
    state.update({k: theirs[k] for k in match.matched})
    model.load_state_dict(state, strict=True)


def _plain(value: Any) -> int | float | str | None:
    """A scalar from the file as a plain Python value (our checkpoints load with weights_only)."""
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


def import_official(path_in: str | os.PathLike, recipe: Recipe | str | os.PathLike,
                    registry: Registry, out_path: str | os.PathLike, *,
                    allow_partial: bool = False) -> ImportReport:
    """Convert an official I-JEPA or V-JEPA checkpoint into a jepa checkpoint at `out_path`
    (step 0, no optimizer state, `imported_from` recording the source and its epoch), using
    the models of `recipe` (a Recipe or a recipe path). Raises ConfigError on any missing,
    unexpected or differently shaped key unless `allow_partial`; those keys then keep the
    recipe's init."""
    path_in, out_path = Path(path_in), Path(out_path)
    if out_path.resolve() == path_in.resolve():
        raise ConfigError(f"--out {out_path} is the file being imported; choose another path.")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, registry)
    data = read_official(path_in)
    encoder, predictor = build_models(recipe, registry)
    models = {"encoder": encoder, "predictor": predictor, "target_encoder": copy.deepcopy(encoder)}
    theirs = {m: strip_prefix(data.get(m) or {}) for m in MODELS}
    matches = [match_keys(m, theirs[m], models[m].state_dict()) for m in MODELS]
    epoch = _plain(data.get("epoch"))
    report = ImportReport(str(path_in), str(out_path), epoch if isinstance(epoch, int) else None,
                          matches)
    if not report.complete and not allow_partial:
        raise _refusal(report, recipe.name)
    for match in matches:
        _load_matching(models[match.model], theirs[match.model], match)
    ckpt.save_atomic(_imported_state(models, recipe, registry, data, report), out_path)
    return report


def _imported_state(models: dict, recipe: Recipe, registry: Registry, data: dict,
                    report: ImportReport) -> dict:
    origin: dict[str, Any] = {k: _plain(data.get(k)) for k in EXTRAS if k not in ("opt", "scaler")}
    origin.update(path=report.source, format=official_format(data), complete=report.complete,
                  not_imported={m.model: m.missing + [k for k, _, _ in m.mismatched]
                                for m in report.models if not m.complete})
    return {
        "format": ckpt.FORMAT, "version": ckpt.FORMAT_VERSION,
        # Steps per epoch of the original run are not in the file: the step count restarts.
        "step": 0, "epoch": report.epoch or 0,
        "modules": {name: model.state_dict() for name, model in models.items()},
        "method": recipe.method_name or "ijepa", "eval_module": "target_encoder",
        "optimizer": None,  # the official AdamW state is not carried over
        "recipe": recipe_to_dict(recipe),
        "plugins": {name: info.version or "" for name, info in registry.plugins.items()},
        "counters": {}, "metrics": {},
        "imported_from": origin,
    }


def print_report(report: ImportReport, console: Any) -> None:
    """Print an ImportReport as a table: per model, the keys matched, missing, unexpected and
    of another shape."""
    from rich.table import Table

    title = f"{report.source} → {report.out_path}" + (
        f" (epoch {report.epoch})" if report.epoch is not None else "")
    table = Table(title=title, title_justify="left")
    for col in ("state dict", "matched", "missing", "unexpected", "other shape"):
        table.add_column(col)
    for m in report.models:
        table.add_row(m.model, str(len(m.matched)), _cell(m.missing), _cell(m.unexpected),
                      _cell([f"{k} {list(a)}≠{list(b)}" for k, a, b in m.mismatched]))
    console.print(table)
    if not report.complete:
        console.print("[yellow]partial import: the keys not matched keep the recipe's "
                      "initialisation.[/yellow]")


def _cell(keys: list[str]) -> str:
    if not keys:
        return "0"
    more = f", … (+{len(keys) - 3})" if len(keys) > 3 else ""
    return f"{len(keys)}: " + ", ".join(keys[:3]) + more


def to_official_layout(our_state: dict) -> dict:
    """Our checkpoint (or any dict holding encoder/predictor/target_encoder state dicts) laid
    out as the official I-JEPA training code saves it: DDP `module.` key prefixes and its
    top-level keys. The optimizer and scaler states are empty. Used to test the import."""
    modules = our_state.get("modules", our_state)
    official: dict[str, Any] = {m: {PREFIX + k: v for k, v in modules[m].items()} for m in MODELS}
    official.update(opt={"state": {}, "param_groups": []}, scaler=None,
                    epoch=int(our_state.get("epoch", 0)), loss=0.0, batch_size=1, world_size=1,
                    lr=0.0)
    return official


# -- export -------------------------------------------------------------------------------
def timm_model_of(recipe: Recipe, registry: Registry) -> tuple[str, dict]:
    """(timm model name, create_model kwargs) of the recipe's encoder, from the optional
    `timm_model` attribute an encoder plugin gives its modules (read off an encoder built on
    the meta device); ConfigError for an encoder without one."""
    spec = registry.get("encoder", recipe.encoder.name)
    with torch.device("meta"):
        encoder = build("encoder", recipe, registry, "encoder")
    found = getattr(encoder, "timm_model", None)
    if found is None:
        raise ConfigError(
            f"encoder {recipe.encoder.name!r} (plugin {spec.plugin!r}) names no timm model "
            f"(its modules have no `timm_model` attribute), so there is nothing to export it "
            f"to. Save its state dict with torch instead, or give the encoder a `timm_model = "
            f"(name, create_model kwargs)` attribute in its plugin.")
    name, kwargs = found
    return str(name), dict(kwargs)


def _check_against_timm(name: str, kwargs: dict, state: dict) -> None:
    """The timm model (built on the meta device: no memory) must have exactly these keys and
    shapes, so that timm's pretrained loading, which is lenient without a head, loads all."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, weight_init="skip", **kwargs)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    if want != have:
        diff = [f"{k}: {list(have[k]) if k in have else 'absent'} in the checkpoint, "
                f"{list(want[k]) if k in want else 'absent'} in timm"
                for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
        raise ConfigError(f"the checkpoint's encoder does not fit timm model {name!r} with "
                          f"{kwargs}: {'; '.join(diff[:SHOW])}.")


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _write_atomic(path: Path, write: Any) -> None:
    """`write(tmp)` then rename over `path`, with the mode a plain open() would give (0644
    under the usual umask): safetensors writes through a private 0600 temp file of its own."""
    from safetensors import SafetensorError

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {path}: {getattr(exc, 'strerror', None) or exc}. "
                       f"Nothing was written in its place.") from None


def timm_usage(name: str, weights: str | os.PathLike, kwargs: dict) -> str:
    """A runnable line that loads exported weights in timm, with the real keyword arguments
    written out (not `**kwargs`): `import timm` first, then the `create_model` call."""
    args = "".join(f", {key}={value!r}" for key, value in kwargs.items())
    return (f"import timm; model = timm.create_model({name!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file={str(weights)!r}){args})")


def export_timm(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike, *,
                which: str | None = None, registry: Registry | None = None) -> dict:
    """Write one encoder of a jepa checkpoint as timm weights: `out_path` (.safetensors, timm
    key names) and `out_path` with suffix .json holding {model_name, kwargs, ...}, so that

        timm.create_model(model_name, pretrained=True,
                          pretrained_cfg_overlay=dict(file=out_path), **kwargs)

    gives the same tokens and average-pooled features. Returns the JSON's content."""
    from safetensors.torch import save_file

    checkpoint_path, out_path = Path(checkpoint_path), Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ConfigError(f"--out {out_path}: the name must end in .safetensors (timm reads a "
                          f"weight file as safetensors only by that suffix).")
    ensure_writable(out_path.parent, "export folder",
                    "Choose a writable folder for --out (or fix the folder's permissions).")
    if registry is None:
        from jepa_core.plugins import make_plugin_manager

        registry = make_plugin_manager()
    state = ckpt.load(checkpoint_path)
    which = which or state["eval_module"]
    if which not in state["modules"]:
        raise ConfigError(f"--which {which!r}: {checkpoint_path} holds the modules "
                          f"{', '.join(sorted(state['modules']))}; choose one of them (the "
                          f"default is the one `jepa eval` probes, {state['eval_module']!r}).")
    recipe = recipe_from_dict(state["recipe"], registry, f"recipe saved in {checkpoint_path}")
    name, kwargs = timm_model_of(recipe, registry)
    weights = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in state["modules"][which].items()}
    _check_against_timm(name, kwargs, weights)
    info = {"model_name": name, "kwargs": kwargs, "weights": out_path.name, "which": which,
            "source": str(checkpoint_path), "step": int(state.get("step", 0)),
            "usage": timm_usage(name, out_path, kwargs)}
    meta = {"format": "pt", "jepa_which": which, "jepa_model_name": name}
    _write_atomic(out_path, lambda p: save_file(weights, str(p), metadata=meta))
    _write_atomic(out_path.with_suffix(".json"),
                  lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    return info
