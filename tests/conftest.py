"""Shared fixtures: a fresh registry per test and a tiny recipe that trains in seconds."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from jepa_core.runtime.threads import set_defaults

# The suite trains in this process and starts `jepa` processes, on machines busy with other
# work: jepa's OpenMP defaults (idle threads spin briefly, then sleep), set before torch
# is imported.
set_defaults()

from jepa_core.plugins import make_plugin_manager  # noqa: E402
from jepa_core.recipe import recipe_from_dict  # noqa: E402

# The first-party plugins' entry modules, for registries that must not see other installed
# plugins (autoload=False).
FIRST_PARTY_PLUGINS = ["jepa_image.plugin", "jepa_vit.plugin", "jepa_objectives.plugin",
                       "jepa_eval.plugin", "jepa_video.plugin"]

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


def assert_same_training(a: dict, b: dict) -> None:
    """Two checkpoint states hold the same run: every module tensor and the optimizer's first
    moments bit-equal (a resumed run is the same run, not a close one)."""
    import torch

    for part in a["modules"]:
        for k, v in a["modules"][part].items():
            assert torch.equal(v, b["modules"][part][k]), f"{part}.{k} differs"
    for (_, va), (_, vb) in zip(a["optimizer"]["state"].items(),
                                b["optimizer"]["state"].items(), strict=True):
        assert torch.equal(va["exp_avg"], vb["exp_avg"])


def train_tiny(tmp_path_factory, steps: int = 2) -> Path:
    """The run directory of the tiny recipe trained `steps` steps in a fresh folder (for
    module-scoped fixtures of tests that evaluate or read a real run)."""
    from jepa_core.runtime.trainer import train

    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path_factory.mktemp("runs"))
    d["train"]["max_steps"] = steps
    registry = make_plugin_manager()
    return train(recipe_from_dict(d, registry, "t"), registry).run_dir
