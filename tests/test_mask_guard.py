"""The trainer checks the masker's output on the first steps of a run (jepa_core.runtime.
mask_guard): a broken masker is refused before it trains, with one paragraph naming the
masker, its plugin, the rule, the sample and the fix; a sound masker trains as before."""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
from pathlib import Path

import maskers_for_tests
import numpy as np
import pytest
import torch
import yaml
from conftest import TINY

from jepa_core.errors import MaskerOutputError, PluginFailed
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.trainer import train

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _train(tiny_dict, kind, **train_options):
    d = copy.deepcopy(tiny_dict)
    d["masker"] = {"name": "testmask", "kind": kind}
    d["train"].update(max_steps=2, **train_options)
    registry = make_plugin_manager(objects=[("testmask_plugin", maskers_for_tests)])
    return train(recipe_from_dict(d, registry, "guarded"), registry)


def _refused(tiny_dict, kind, **train_options) -> str:
    with pytest.raises(MaskerOutputError) as info:
        _train(tiny_dict, kind, **train_options)
    message = str(info.value)
    assert "masker 'testmask'" in message and "plugin 'testmask_plugin'" in message
    assert "check_masker" in message  # how to reproduce it in a test
    assert not (Path(tiny_dict["out_dir"]) / "guarded" / "checkpoints").exists()
    return " ".join(message.split())


def test_a_sound_masker_trains(tiny_dict):
    run = _train(tiny_dict, "good")
    assert run.step == 2


@pytest.mark.parametrize("kind, expected", [
    ("leak", ["context and targets disjoint", "sample 3: patch", "allow_overlap = True"]),
    ("duplicate", ["unique indices per context row", "sample 1", "appears more than once"]),
    ("int32", ["context is a 2-D int64 tensor", "torch.int32", ".long()"]),
    ("float", ["targets is a 3-D int64 tensor", "torch.float32"]),
    ("targets_2d", ["targets is a 3-D int64 tensor", "shape (8, 3)"]),
    ("out_of_range", ["targets indices in [0, 16)", "sample 2, block 0, position 1 holds 21"]),
    ("tuple", ["returns a MaskBatch", "got tuple"]),
])
def test_broken_output_is_refused_naming_masker_sample_and_fix(tiny_dict, kind, expected):
    message = _refused(tiny_dict, kind)
    assert "step 0" in message and "Fix:" in message
    for text in expected:
        assert text in message, (text, message)


@pytest.mark.parametrize("kind", ["global_torch", "numpy_global", "python_random"])
def test_global_rng_use_is_refused(tiny_dict, kind):
    message = _refused(tiny_dict, kind)
    assert "never touches the global RNG" in message and "generator=generator" in message


def test_global_rng_use_that_restores_the_state_is_caught_by_the_redraw(tiny_dict):
    message = _refused(tiny_dict, "hidden_global")
    assert "deterministic for a fixed generator state" in message
    assert "context differs between two draws from the same generator state" in message


def test_a_declared_overlap_trains(tiny_dict):
    assert _train(tiny_dict, "declared_overlap").step == 2


def test_a_masker_that_raises_is_named(tiny_dict):
    with pytest.raises(PluginFailed, match=r"masker 'testmask' .* raised while drawing the "
                                           r"masks of step 0 .*ValueError: no masks today"):
        _train(tiny_dict, "raises")


def test_masks_drawn_in_loader_workers_are_compared_with_the_checked_ones(tiny_dict):
    message = _refused(tiny_dict, "worker_state", num_workers=1)
    assert "the masks of step 0 that reached the trainer" in message
    assert "differ in masks.context" in message


def test_the_guard_leaves_the_global_rngs_as_it_found_them(tiny_dict):
    from jepa_core.runtime.data import batch_layout
    from jepa_core.runtime.mask_guard import MaskGuard

    masker = maskers_for_tests.TestMasker(maskers_for_tests.TestMaskConfig(), (4, 4))
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    expected = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    guard = MaskGuard(masker, "masker 'testmask'", 0, batch_layout(8, 1), 0, 10)
    guard.check_start()
    assert sorted(guard.drawn) == [0, 1, 2]
    got = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_multiblock_fallbacks_are_tolerated(tiny_dict):
    """A multi-block config that falls back (keeps overlap, as documented and counted by
    sample_with_stats) must not be refused as a target leak."""
    from jepa_core.maskcheck import overlap_problem
    from jepa_core.runtime.data import batch_layout, mask_generator
    from jepa_core.runtime.mask_guard import MaskGuard
    from jepa_image.configs import MultiBlockConfig
    from jepa_image.multiblock import build_masker

    config = MultiBlockConfig(num_targets=4, target_scale=(0.4, 0.5), context_scale=(0.9, 1.0),
                              min_keep=8)
    masker = build_masker(config, (4, 4))
    masks, stats = masker.sample_with_stats(8, mask_generator(0, 0))
    assert stats.fallbacks > 0  # the premise: this draw keeps overlap in some samples
    assert overlap_problem(masks, masker.grid) is not None
    MaskGuard(masker, "multiblock", 0, batch_layout(8, 1), 0, 3).check_start()


@pytest.mark.slow
def test_cli_refuses_a_leaking_masker_with_exit_2_and_no_traceback(tmp_path):
    recipe = copy.deepcopy(TINY)
    recipe["out_dir"] = str(tmp_path / "runs")
    recipe["masker"] = {"name": "testmask", "kind": "leak"}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items()
           if k not in ("JEPA_DISABLE_PLUGIN_AUTOLOAD", "JEPA_PLUGINS")}
    env.update(COLUMNS="250", PYTHONPATH=str(TESTS))
    done = subprocess.run([sys.executable, "-m", "jepa_core", "-p", "maskers_for_tests", "run",
                           str(tmp_path / "tiny.yaml")], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    flat = " ".join(" ".join(line.strip(" │╭╮╰╯─") for line in done.stderr.splitlines()).split())
    assert "masker output" in flat
    assert "context and targets disjoint" in flat and "sample 3" in flat


def test_the_contract_kit_catches_global_rng_use_hidden_by_a_restored_state():
    """check_masker redraws with the global RNGs in other states (it only compared two draws
    under the same global state before, which a fork_rng-wrapped global draw passes)."""
    from jepa_core.testing import check_masker

    masker = maskers_for_tests.TestMasker(maskers_for_tests.TestMaskConfig("hidden_global"),
                                          (4, 4))
    with pytest.raises(AssertionError, match="deterministic for a fixed generator state"):
        check_masker(masker, 8, 0)
    check_masker(maskers_for_tests.TestMasker(maskers_for_tests.TestMaskConfig(), (4, 4)), 8, 0,
                 allow_overlap=False)
