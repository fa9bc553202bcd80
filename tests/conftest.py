"""Shared fixtures: a fresh registry per test and a tiny recipe that trains in seconds."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "synthetic", "num_images": 64},
    "encoder": {"name": "vit", "model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8,
                "embed_dim": 32, "depth": 2, "num_heads": 2},
    "predictor": {"name": "vit_predictor", "embed_dim": 16, "depth": 1, "num_heads": 2},
    "masker": {"name": "multiblock", "num_targets": 2, "target_scale": [0.15, 0.25],
               "min_keep": 2},
    "target_updater": {"name": "ema"},
    "loss": {"name": "smooth_l1"},
    "optim": {"lr": 1e-3, "warmup_epochs": 1},
    "train": {"epochs": 2, "global_batch_size": 8, "log_every": 1},
    "eval": {"after_train": False},
}


# What each first-party method does without (see each method config's `needs()`).
UNUSED_SECTIONS = {"ijepa": (), "cjepa": (), "ijepa_sigreg": ("target_updater",),
                   "lejepa": ("predictor", "masker", "target_updater", "loss"),
                  "vjepa": ()}
METHODS = tuple(UNUSED_SECTIONS)


def tiny_method(d: dict, method: str, **config) -> dict:
    """The tiny recipe dict `d` (in place) turned into one of `method`, with its config."""
    d["method"] = {"name": method, **config}
    for section in UNUSED_SECTIONS[method]:
        d.pop(section, None)
    if method == "lejepa":
        d["method"].setdefault("num_views", 2)
        d["method"].setdefault("projector", [32, 16])
    return d


def install_example(tmp_path_factory, name: str) -> Path:
    """examples/<name> pip-installed (no deps, offline) into a fresh folder, returned, to be
    put on PYTHONPATH / sys.path: never into the test venv, so other tests keep their registry.
    Skips where the example cannot be built offline."""
    import shutil
    import subprocess
    import sys

    if importlib.util.find_spec("setuptools") is None:  # venvs of Python >= 3.12 lack it
        pytest.skip("building the example offline needs setuptools in this environment")
    example = Path(__file__).resolve().parents[1] / "examples" / name
    source = tmp_path_factory.mktemp("src") / name  # builds leave files behind: build a copy
    shutil.copytree(example, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
           "--no-build-isolation", "--no-index", "--target", str(target), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        pytest.skip(f"cannot build the example plugin here: {done.stderr[-500:]}")
    return target


# Shipped recipes naming components that other branches of issue 11 register (the video
# masker, method, loss and data source): expected to fail until every one is registered, then
# tested like the rest.
PENDING_RECIPES = {"vjepa_vitl16": (("method", "vjepa"), ("masker", "multiblock3d"),
                                    ("loss", "l1"), ("data_source", "video_folder"))}


def recipe_param(path: Path, label: str) -> object:
    """pytest.param(path) for a test over the shipped recipes, a strict xfail while
    PENDING_RECIPES says the recipe names components no installed plugin registers yet."""
    components = make_plugin_manager().components
    missing = [f"{kind} {name}" for kind, name in PENDING_RECIPES.get(path.stem, ())
               if name not in components.get(kind, {})]
    marks = ([pytest.mark.xfail(strict=True, reason="not registered yet: " + ", ".join(missing))]
             if missing else [])
    return pytest.param(path, marks=marks, id=label)


def load_bench(name: str) -> ModuleType:
    """The script bench/<name>.py imported as a module (bench/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def registry():
    return make_plugin_manager()


@pytest.fixture
def tiny_dict(tmp_path):
    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path / "runs")
    return d


@pytest.fixture
def tiny_recipe(tiny_dict, registry):
    return recipe_from_dict(tiny_dict, registry, "tiny")
