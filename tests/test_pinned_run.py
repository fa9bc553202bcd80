"""Today's I-JEPA numbers, pinned: a fixed short run must end with exactly the weights (and
optimizer moments) recorded in tests/fixtures/ijepa_v1_step4.pt, which was written by the
trainer before I-JEPA became a method plugin. Any refactor that changes a bit fails here."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime import checkpoint as ckpt
from jepa_core.runtime.trainer import train

FIXTURE = Path(__file__).parent / "fixtures" / "ijepa_v1_step4.pt"


def pinned_recipe(tiny_dict: dict) -> dict:
    """The recipe the fixture was trained with: the tiny recipe, padded contexts, 4 steps of a
    global batch of 8 in two micro-batches of 4 (gradient accumulation)."""
    d = copy.deepcopy(tiny_dict)
    d["masker"]["context_equalize"] = "pad"
    d["train"].update(max_steps=4, global_batch_size=8)
    d["dist"] = {"per_device_batch_cap": 4}
    return d


def module_states(state: dict) -> dict[str, dict]:
    if "modules" in state:
        return state["modules"]
    return {k: state[k] for k in ("encoder", "predictor", "target_encoder")}


# The fixture was made on one CPU; another CPU's float kernels (AVX2 vs AVX-512 MKL paths)
# round differently, by a few ulp (seen: 7e-9 on weights of 0.08 after 4 steps). A change of
# the algorithm (masks, op order, a schedule) moves weights by 1e-5 and more in 4 steps, so
# off the fixture's machine the pin allows 1e-7 relative and warns that it is not bitwise.
ULP_RTOL, ULP_ATOL = 1e-7, 1e-8
NOT_BITWISE: list[str] = []


def assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        if not torch.equal(a, b):
            torch.testing.assert_close(a, b, rtol=ULP_RTOL, atol=ULP_ATOL, msg=where)
            NOT_BITWISE.append(where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_ijepa_final_weights_are_bit_identical_to_the_pinned_run(tiny_dict):
    registry = make_plugin_manager()
    recipe = recipe_from_dict(pinned_recipe(tiny_dict), registry, "pinned")
    run = train(recipe, registry)
    ours = ckpt.load(ckpt.list_checkpoints(run.run_dir / "checkpoints")[-1])
    pinned = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    assert ours["step"] == pinned["step"] == 4
    theirs = module_states(pinned)
    mine = module_states(ours)
    for name in ("encoder", "predictor", "target_encoder"):
        assert_same_tensors(mine[name], theirs[name], name)
    assert_same_tensors(ours["optimizer"]["state"], pinned["optimizer"]["state"], "optimizer")
    if NOT_BITWISE:
        import warnings

        warnings.warn(f"{len(NOT_BITWISE)} tensors equal the pinned run to a few ulp, not "
                      f"bitwise (this CPU's float kernels differ from the one that made the "
                      f"fixture), e.g. {NOT_BITWISE[0]}", stacklevel=1)


def test_a_format_1_checkpoint_resumes_evaluates_and_exports(tiny_dict, tmp_path):
    import io
    import json
    import shutil

    from rich.console import Console

    from jepa_core.commands.evaluate import eval_command
    from jepa_core.commands.interop import export_timm
    from jepa_core.runtime.launch import find_resume

    registry = make_plugin_manager()
    d = pinned_recipe(tiny_dict)
    d["train"]["max_steps"] = 6
    recipe = recipe_from_dict(d, registry, "pinned")
    directory = recipe.run_dir / "checkpoints"
    directory.mkdir(parents=True)
    shutil.copy(FIXTURE, directory / ckpt.checkpoint_name(4))
    state = find_resume(recipe, "auto", force=False)  # the old recipe has no method: ijepa
    assert state["version"] == ckpt.FORMAT_VERSION and state["eval_module"] == "target_encoder"
    run = train(recipe, registry, resume=state)
    assert run.step == 6

    out = io.StringIO()
    old = tmp_path / "old" / "ijepa_v1_step4.pt"  # eval.json and the cache go beside it
    old.parent.mkdir()
    shutil.copy(FIXTURE, old)
    knn = ["eval.max_images=16", "eval.protocols=[{name: knn, k: 5}]"]  # k <= 16 images
    assert eval_command(str(old), registry, knn,
                        baseline=False, console=Console(file=out, width=300)) == 0
    import re

    assert "trained target encoder" in out.getvalue()
    assert re.search(r"step\s+4", out.getvalue())
    assert (old.parent / "eval.json").exists()
    assert not (FIXTURE.parent / "eval.json").exists()  # the repository stays clean

    info = export_timm(FIXTURE, tmp_path / "old.safetensors", registry=registry)
    assert info["which"] == "target_encoder"
    assert json.loads((tmp_path / "old.json").read_text())["step"] == 4
