"""Target blocks of unequal size: `MaskBatch.targets_valid` [B, M, Nt] marks padding, end to
end (contract kit, collate, Batch.to, predictor, losses, methods, token statistics); without
it every number is what it was."""

from __future__ import annotations

import copy
import json

import maskers_for_tests
import pytest
import torch

from jepa_core.interfaces import MaskBatch
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.data import Batch, _take_rows, mask_generator
from jepa_core.runtime.trainer import mask_counts, train
from jepa_core.testing import check_masker

GRID = (4, 4)


def padded_masker():
    return maskers_for_tests.PaddedMasker(maskers_for_tests.PaddedConfig(), GRID)


# -- the contract kit ------------------------------------------------------------------------
def test_the_contract_kit_accepts_padded_targets():
    masks = check_masker(padded_masker(), 16, 0, allow_overlap=False)
    assert masks.targets_valid is not None and not bool(masks.targets_valid.all())


@pytest.mark.parametrize("change, check", [
    (lambda m: MaskBatch(m.context, m.targets, None, m.targets_valid.long()),
     "targets_valid is bool like targets"),
    (lambda m: MaskBatch(m.context, m.targets, None, m.targets_valid[:, :1]),
     "targets_valid is bool like targets"),
    (lambda m: MaskBatch(m.context, m.targets, None,
                         torch.cat([m.targets_valid[:, :1] & False, m.targets_valid[:, 1:]], 1)),
     "a block has no valid index"),
    (lambda m: MaskBatch(m.context, m.targets, None, torch.ones_like(m.targets_valid)),
     "unique indices per target block"),  # the padding repeats an index: now it counts
])
def test_the_contract_kit_refuses_a_bad_targets_valid(change, check):
    masker = padded_masker()
    broken = type("Broken", (), {"grid": GRID,
                                 "__call__": lambda self, b, g: change(masker(b, g))})()
    with pytest.raises(AssertionError, match=check):
        check_masker(broken, 16, 0)


def test_padding_positions_do_not_count_as_target_leaks():
    """A padded target position repeating a context patch is no leak; a valid one is."""
    from jepa_core.maskcheck import overlap_problem

    context = torch.tensor([[0, 1, 2]])
    targets = torch.tensor([[[5, 6, 1]]])
    valid = torch.tensor([[[True, True, False]]])
    assert overlap_problem(MaskBatch(context, targets, None, valid), GRID) is None
    assert overlap_problem(MaskBatch(context, targets), GRID) is not None


# -- collate and Batch.to --------------------------------------------------------------------
def test_rows_keep_their_target_validity_and_drop_padding_no_row_needs():
    masks = padded_masker()(16, mask_generator(0, 0))
    sizes = masks.targets_valid[:, 0].sum(1)
    short = int((sizes < 3).nonzero()[0])
    part = _take_rows(masks, slice(short, short + 1))
    assert torch.equal(part.targets_valid, masks.targets_valid[short:short + 1])
    full = int((sizes == 3).nonzero()[0])
    part = _take_rows(masks, slice(full, full + 1))  # all valid: the fast path, no mask
    assert part.targets_valid is None and torch.equal(part.targets, masks.targets[full:full + 1])
    moved = Batch({"image": torch.zeros(1)}, torch.zeros(1), {"masks": masks}, 0, 0).to("cpu")
    assert torch.equal(moved.mask.targets_valid, masks.targets_valid)


def test_context_padding_inside_a_row_is_not_cut_off():
    """Padding need not be at the end of a row: only columns that are padding in every row
    are dropped (before, the first `max valid count` columns were kept)."""
    context = torch.tensor([[3, 3, 4, 5], [6, 7, 8, 9]])
    valid = torch.tensor([[False, True, True, True], [True, True, True, False]])
    masks = MaskBatch(context, torch.zeros(2, 1, 1, dtype=torch.int64), valid)
    first = _take_rows(masks, slice(0, 1))  # leading padding: nothing to drop, 5 stays
    assert first.context.tolist() == [[3, 3, 4, 5]]
    assert first.context_valid.tolist() == [[False, True, True, True]]
    second = _take_rows(masks, slice(1, 2))  # trailing padding: dropped, the rest all valid
    assert second.context.tolist() == [[6, 7, 8]] and second.context_valid is None


# -- losses ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["smooth_l1", "l2", "l1"])
def test_losses_average_over_valid_tokens_and_match_exactly_when_all_are_valid(name):
    registry = make_plugin_manager()
    spec = registry.get("loss", name)
    loss = spec.build(spec.config_class())
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 5, 8, generator=g)
    everything = torch.ones(2, 3, 5, dtype=torch.bool)
    assert torch.equal(loss(pred, target, valid=everything), loss(pred, target))
    valid = torch.rand(2, 3, 5, generator=g) < 0.5
    valid[:, :, 0] = True
    junk = torch.where(valid[..., None], pred, torch.full_like(pred, 1e6))
    expected = loss(pred[valid][None, None], target[valid][None, None])
    torch.testing.assert_close(loss(junk, target, valid=valid), expected, rtol=0, atol=0)


# -- predictor and method: padded + masked == the unpadded blocks one by one -----------------
def _ijepa(tiny_dict):
    d = copy.deepcopy(tiny_dict)
    registry = make_plugin_manager()
    recipe = recipe_from_dict(d, registry, "tiny")
    from jepa_core.runtime.build import build_components

    return build_components(recipe, registry).method


def test_padded_targets_give_the_loss_and_gradients_of_the_unpadded_blocks(tiny_dict):
    from jepa_objectives.tokens import gather_tokens, normalised_targets

    method = _ijepa(tiny_dict)
    modules = method.modules
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=g)
    masks = padded_masker()(2, mask_generator(0, 3))
    masks = MaskBatch(masks.context, masks.targets, None,
                      masks.targets_valid.clone())
    masks.targets_valid[0, 0, 1:] = False  # sample 0 block 0: one patch; block 1: three
    batch = Batch({"image": images}, torch.zeros(2), {"masks": masks}, 0, 0)

    def grads():
        out = {n: p.grad.clone() for m in ("encoder", "predictor")
               for n, p in modules[m].named_parameters(prefix=m) if p.grad is not None}
        for m in ("encoder", "predictor"):
            modules[m].zero_grad(set_to_none=True)
        return out

    padded = method.loss(modules, batch).loss
    padded.backward()
    padded_grads = grads()

    preds, targets = [], []  # reference: each valid block on its own, without padding
    for b in range(2):
        h = normalised_targets(modules["target_encoder"](images[b:b + 1])).detach()
        z = modules["encoder"](images[b:b + 1], masks.context[b:b + 1])
        for m in range(2):
            block = masks.targets[b, m][masks.targets_valid[b, m]][None, None]
            preds.append(modules["predictor"](z, masks.context[b:b + 1], block).reshape(-1, 32))
            targets.append(gather_tokens(h, block).reshape(-1, 32))
    reference = method.prediction_loss(torch.cat(preds)[None, None], torch.cat(targets)[None, None])
    reference.backward()
    reference_grads = grads()

    torch.testing.assert_close(padded, reference, rtol=1e-5, atol=1e-6)
    assert padded_grads.keys() == reference_grads.keys() and padded_grads
    for name in padded_grads:
        torch.testing.assert_close(padded_grads[name], reference_grads[name], rtol=1e-4,
                                   atol=1e-6, msg=name)


def test_an_all_valid_targets_valid_changes_no_prediction(tiny_dict):
    predictor = _ijepa(tiny_dict).modules["predictor"]
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 6, 32, generator=g)
    masks = padded_masker()(2, mask_generator(0, 0))
    plain = predictor(z, masks.context, masks.targets)
    with_mask = predictor(z, masks.context, masks.targets,
                          targets_valid=torch.ones_like(masks.targets_valid))
    torch.testing.assert_close(with_mask, plain, rtol=1e-6, atol=1e-6)


# -- a real run, and the token counts ----------------------------------------------------------
def test_a_masker_with_unequal_target_blocks_trains_through_ijepa(tiny_dict):
    d = copy.deepcopy(tiny_dict)
    d["masker"] = {"name": "padded"}
    d["train"].update(max_steps=3)
    registry = make_plugin_manager(objects=[("padded_plugin", maskers_for_tests)])
    run = train(recipe_from_dict(d, registry, "padded"), registry)
    rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["loss"] > 0 for r in rows)
    masks = padded_masker()(8, mask_generator(0, 0))
    valid_per_sample = masks.targets_valid.sum((1, 2)).float()
    assert rows[0]["target_tokens"] == pytest.approx(float(valid_per_sample.mean()))
    assert rows[0]["target_tokens"] < 6  # padding is not counted


def test_token_counts_count_valid_target_indices_only():
    from jepa_core.commands.mask_preview import mask_statistics

    masker = padded_masker()
    masks = masker(8, mask_generator(0, 0))
    counts = mask_counts({"masks": masks})
    assert counts["target_tokens"] == float(masks.targets_valid.sum((1, 2)).float().mean())
    stats = mask_statistics(masker, batch_size=8, seed=0, batches=2)
    assert stats["target_size"]["min"] == 1 and stats["target_size"]["max"] == 3
    assert stats["overlap_fraction"] == 0.0


def test_jepa_check_measures_valid_target_tokens(tiny_dict):
    from jepa_core.commands.plan import measure_tokens

    registry = make_plugin_manager()
    recipe = recipe_from_dict(copy.deepcopy(tiny_dict), registry, "tiny")
    counts = measure_tokens(padded_masker(), recipe)
    # block 1 has 3, block 0 one to three
    assert counts.num_targets == 2 and 2.0 < counts.target < 3.0
