"""`train.compile` on the CPU: the path a GPU run takes with torch.compile, exercised where CI
can run it (inductor's C++ backend), so a GPU, once lent, only measures it."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.trainer import train


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow  # compiling the tiny ViT, its predictor and the loss takes ~1 min on 2 cores
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="inductor's CPU backend needs a C compiler")
def test_a_compiled_run_trains_as_the_eager_one(tiny_dict):
    tiny_dict["train"]["max_steps"] = 3
    registry = make_plugin_manager()
    eager_dict = copy.deepcopy(tiny_dict)
    eager_dict["name"] = "eager"
    compiled_dict = copy.deepcopy(tiny_dict)
    compiled_dict["name"] = "compiled"
    compiled_dict["train"]["compile"] = True
    eager = train(recipe_from_dict(eager_dict, registry, "eager"), registry)
    compiled = train(recipe_from_dict(compiled_dict, registry, "compiled"), registry)
    called = list(compiled.modules.values())  # what the loop called: torch.compile's wrappers
    assert called and all(isinstance(m, torch._dynamo.eval_frame.OptimizedModule)
                          for m in called)
    assert not any(isinstance(m, torch._dynamo.eval_frame.OptimizedModule)
                   for m in eager.modules.values())
    # the same draws, the same steps: equal up to the fused kernels' float rounding
    assert _losses(compiled.run_dir) == pytest.approx(_losses(eager.run_dir), rel=1e-4)
    a = eager.method.modules["encoder"].state_dict()
    b = compiled.method.modules["encoder"].state_dict()
    b = {k.replace("_orig_mod.", ""): v for k, v in b.items()}
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
