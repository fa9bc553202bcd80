"""Packed contexts (masker context_equalize: pack, MaskBatch.packed): the encoder and the
predictor run the valid tokens only, and the loss and every gradient are those of the padded
computation of the same batch (fp32 tolerance)."""

from __future__ import annotations

import copy
import functools
import json

import attrs
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jepa_core.errors import ConfigError
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_core.runtime.build import build_components
from jepa_core.runtime.data import Batch, _take_rows, mask_generator
from jepa_core.runtime.tokens import context_layouts
from jepa_core.runtime.trainer import train
from jepa_image.configs import MultiBlockConfig
from jepa_image.multiblock import build_masker
from jepa_vit.configs import PredictorConfig, ViTConfig
from jepa_vit.encoder import build_encoder
from jepa_vit.packing import Packing
from jepa_vit.predictor import build_predictor

RTOL, ATOL = 1e-5, 1e-6  # fp32: the two layouts sum in different orders


def packed_recipe(tiny_dict: dict, method: str = "ijepa", **train) -> dict:
    d = copy.deepcopy(tiny_dict)
    d["masker"]["context_equalize"] = "pack"
    d["method"] = {"name": method}
    if method == "ijepa_sigreg":
        d.pop("target_updater")
    d["train"].update(train)
    return d


def grads_of(modules: dict, names=("encoder", "predictor")) -> dict[str, torch.Tensor]:
    out = {f"{m}.{n}": p.grad.clone() for m in names
           for n, p in modules[m].named_parameters() if p.grad is not None}
    for m in names:
        modules[m].zero_grad(set_to_none=True)
    return out


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        scale = float(b[name].abs().max())  # fp32 sums in another order: relative to it
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=max(ATOL, 1e-5 * scale),
                                   msg=lambda m, name=name: f"{name}: {m}")


# -- the method: one batch, padded and packed --------------------------------------------
@pytest.mark.parametrize("method", ["ijepa", "cjepa", "ijepa_sigreg"])
def test_pack_gives_the_loss_and_gradients_of_pad(tiny_dict, method):
    registry = make_plugin_manager()
    recipe = recipe_from_dict(packed_recipe(tiny_dict, method), registry, "tiny")
    parts = build_components(recipe, registry)
    modules = parts.method.modules
    masks = parts.masker(8, mask_generator(0, 0))
    assert masks.packed and masks.context_valid is not None
    assert len(set(masks.context_valid.sum(1).tolist())) > 1  # rows of unequal length
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def loss(packed: bool):
        batch = Batch({"image": images}, torch.zeros(8), {"masks": attrs.evolve(
            masks, packed=packed)}, 0, 0)
        out = parts.method.loss(modules, batch)
        out.loss.backward()
        return out.loss.detach(), grads_of(modules)

    (pad_loss, pad_grads), (pack_loss, pack_grads) = loss(False), loss(True)
    torch.testing.assert_close(pack_loss, pad_loss, rtol=RTOL, atol=ATOL)
    assert_same_grads(pack_grads, pad_grads)


def test_the_method_passes_pack_only_when_the_masks_ask(tiny_dict, monkeypatch):
    registry = make_plugin_manager()
    parts = build_components(recipe_from_dict(packed_recipe(tiny_dict), registry, "t"), registry)
    seen = []
    for name in ("encoder", "predictor"):
        module = parts.method.modules[name]
        original = module.forward

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, kwargs.get("pack", False)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "forward", spy)
    masks = parts.masker(8, mask_generator(0, 0))
    images = torch.randn(8, 3, 32, 32)
    for packed in (True, False):
        batch = Batch({"image": images}, torch.zeros(8),
                      {"masks": attrs.evolve(masks, packed=packed)}, 0, 0)
        parts.method.loss(parts.method.modules, batch)
    assert seen == [("encoder", True), ("predictor", True), ("encoder", False),
                    ("predictor", False)]


def test_packed_masks_with_a_module_that_cannot_pack_are_refused_clearly(tiny_dict):
    registry = make_plugin_manager()
    parts = build_components(recipe_from_dict(packed_recipe(tiny_dict), registry, "t"), registry)

    class PlainEncoder(torch.nn.Module):  # keeps the encoder's forward, but says nothing
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    parts.method.modules["encoder"] = PlainEncoder(parts.method.modules["encoder"])
    masks = parts.masker(8, mask_generator(0, 0))
    batch = Batch({"image": torch.randn(8, 3, 32, 32)}, torch.zeros(8), {"masks": masks}, 0, 0)
    with pytest.raises(ConfigError, match=r"encoder \(PlainEncoder\).*context_equalize: pad"):
        parts.method.loss(parts.method.modules, batch)


# -- the models: any validity pattern -----------------------------------------------------
GRID = (4, 4)


@functools.cache
def small_models(**encoder):
    """A tiny encoder and predictor (cached: tests only read their gradients)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = build_encoder(ViTConfig(img_size=16, patch_size=4, embed_dim=16, depth=2,
                                      num_heads=2, **encoder))
        pred = build_predictor(PredictorConfig(embed_dim=8, depth=2, num_heads=2), enc)
    return enc, pred


@st.composite
def padded_batches(draw):
    """(context [B, K], context_valid [B, K], targets [B, M, Nt], targets_valid or None),
    unique indices per row and block, at least one valid index per row and block, anywhere."""
    b, k, m, nt = (draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 3)),
                   draw(st.integers(1, 4)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    n = GRID[0] * GRID[1]
    context = torch.rand(b, n, generator=g).argsort(1)[:, :k]
    targets = torch.rand(b * m, n, generator=g).argsort(1)[:, :nt].reshape(b, m, nt)

    def validity(shape, on):
        if not on:
            return None
        valid = torch.rand(shape, generator=g) < draw(st.floats(0.2, 0.9))
        valid[..., draw(st.integers(0, shape[-1] - 1))] = True  # any position may be the one
        return valid

    context_valid = validity((b, k), True)
    targets_valid = validity((b, m, nt), draw(st.booleans()))
    return context, context_valid, targets, targets_valid


def forward_backward(enc, pred, images, batch, pack: bool):
    context, context_valid, targets, targets_valid = batch
    z = enc(images, context, context_valid, pack=pack)
    out = pred(z, context, targets, context_valid, targets_valid, pack=pack)
    def weights(t):  # a loss that weighs every output differently
        return torch.linspace(-1, 1, t.numel()).reshape(t.shape)

    keep = (torch.ones(targets.shape, dtype=torch.bool) if targets_valid is None
            else targets_valid)
    loss = (out * weights(out))[keep].sum() + (z * weights(z))[context_valid].sum()
    loss.backward()
    return z, out, loss.detach(), grads_of({"encoder": enc, "predictor": pred})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=padded_batches())
def test_packed_models_match_the_padded_ones_at_valid_positions(batch):
    enc, pred = small_models()
    images = torch.randn(batch[0].shape[0], 3, 16, 16,
                         generator=torch.Generator().manual_seed(1))
    z0, out0, loss0, grads0 = forward_backward(enc, pred, images, batch, pack=False)
    z1, out1, loss1, grads1 = forward_backward(enc, pred, images, batch, pack=True)
    context_valid, targets_valid = batch[1], batch[3]
    torch.testing.assert_close(z1[context_valid], z0[context_valid], rtol=RTOL, atol=ATOL)
    keep = torch.ones(out0.shape[:3], dtype=torch.bool) if targets_valid is None else targets_valid
    torch.testing.assert_close(out1[keep], out0[keep], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(loss1, loss0, rtol=RTOL, atol=1e-5)
    assert_same_grads(grads1, grads0)


@pytest.mark.parametrize("options", [{"attention": "math"}, {"checkpointing": True}])
def test_packing_matches_with_explicit_attention_and_gradient_checkpointing(options):
    enc, pred = small_models.__wrapped__(**({"attention": "math"} if "attention" in options
                                            else {}))  # a fresh pair: this test changes it
    if options.get("checkpointing"):
        enc.set_grad_checkpointing()
        pred.set_grad_checkpointing()
    masker = build_masker(MultiBlockConfig(context_equalize="pack", min_keep=2,
                                           target_scale=(0.1, 0.2)), GRID)
    masks = masker(6, torch.Generator().manual_seed(3))
    batch = (masks.context, masks.context_valid, masks.targets, masks.targets_valid)
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    *_, loss0, grads0 = forward_backward(enc, pred, images, batch, pack=False)
    *_, loss1, grads1 = forward_backward(enc, pred, images, batch, pack=True)
    torch.testing.assert_close(loss1, loss0, rtol=RTOL, atol=1e-5)
    assert_same_grads(grads1, grads0)


def test_stochastic_depth_drops_whole_samples_when_packed():
    """timm drops a padded row's whole residual branch; packed, the same draws (one per
    sample, from the same global stream) drop the same samples, not single tokens."""
    enc, _ = small_models(drop_path_rate=0.6)
    valid = torch.tensor([[True, True, True, False], [True, False, True, True],
                          [True, True, False, False]])
    context = torch.tensor([[0, 5, 9, 0], [1, 1, 6, 12], [3, 15, 3, 3]])
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    outs = []
    for pack in (False, True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)
            outs.append(enc(images, context, valid, pack=pack))
    torch.testing.assert_close(outs[1][valid], outs[0][valid], rtol=RTOL, atol=ATOL)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 5), width=st.integers(1, 7))
def test_packing_round_trips_any_validity_mask(seed, rows, width):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(rows, width, generator=g) < 0.6
    x = torch.randn(rows, width, 3, generator=g)
    p = Packing(valid)
    assert p.num_tokens == int(valid.sum())
    assert torch.equal(p.scatter(p.gather(x)), torch.where(valid[..., None], x, 0.0))
    packed = p.gather(x)
    # the stream: whole sequences, shortest first, each in column order
    start = 0
    for row in sorted(range(rows), key=lambda r: (int(valid[r].sum()), r)):
        n = int(valid[row].sum())
        assert bool((p.rows[start:start + n] == row).all())
        assert torch.equal(packed[start:start + n], x[row][valid[row]])
        start += n
    # buckets cover the stream in order; re-padded, each sequence is a prefix of its row
    assert sum(b.tokens for b in p.buckets) == p.num_tokens and len(p.buckets) <= 4
    start = 0
    for b in p.buckets:
        padded = packed.new_zeros(b.n * b.width, 3).index_copy(0, b.index, packed[
            start:start + b.tokens]).view(b.n, b.width, 3)
        have = (padded != 0).any(-1) if b.key_mask is None else b.key_mask[:, 0, 0]
        assert int(have.sum()) == b.tokens
        assert torch.equal(have, torch.arange(b.width) < have.sum(1, keepdim=True))
        start += b.tokens


# -- the masker, the loader and a real run --------------------------------------------------
@pytest.mark.parametrize("style", ["corrected", "reference"])
def test_pack_draws_the_masks_of_pad_and_keeps_whole_contexts(style):
    pad = build_masker(MultiBlockConfig(style=style, context_equalize="pad"), (14, 14))
    pack = build_masker(MultiBlockConfig(style=style, context_equalize="pack"), (14, 14))
    cut = build_masker(MultiBlockConfig(style=style), (14, 14))
    a, stats = pad.sample_with_stats(16, mask_generator(0, 2))
    b = pack(16, mask_generator(0, 2))
    c = cut(16, mask_generator(0, 2))
    assert not a.packed and b.packed and not c.packed
    for name in ("context", "targets", "context_valid", "targets_valid"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name
    assert torch.equal(b.context_valid.sum(1), stats.context_sizes)  # nothing thrown away
    assert c.context_valid is None and c.context.shape[1] == int(stats.context_sizes.min())
    if style == "reference":  # the official block draws: only the cut differs
        assert torch.equal(a.targets, c.targets)
        assert torch.equal(c.context, a.context[:, :c.context.shape[1]])


def test_the_loader_keeps_packed_through_rows_and_devices():
    masks = build_masker(MultiBlockConfig(context_equalize="pack"), (8, 8))(
        8, mask_generator(0, 0))
    part = _take_rows(masks, slice(2, 6))
    assert part.packed
    batch = Batch({"image": torch.zeros(4, 3, 8, 8)}, torch.zeros(4), {"masks": part}, 0, 0)
    assert batch.to("cpu").mask.packed


def test_a_packed_run_trains_with_the_losses_of_a_padded_one(tiny_dict, tmp_path):
    registry = make_plugin_manager()
    losses = {}
    for layout in ("pad", "pack"):
        d = packed_recipe(tiny_dict, max_steps=3)
        d["masker"]["context_equalize"] = layout
        d["out_dir"] = str(tmp_path / layout)
        run = train(recipe_from_dict(d, registry, layout), registry)
        rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[layout] = [r["loss"] for r in rows]
        tokens = rows[0]["context_tokens"]
    assert len(losses["pack"]) == 3
    assert losses["pack"] == pytest.approx(losses["pad"], rel=1e-4)
    assert tokens < 16  # valid tokens only, padding not counted


# -- token counts (jepa check) -------------------------------------------------------------
def test_context_tokens_per_layout_count_what_each_layout_computes():
    config = MultiBlockConfig(context_equalize="pack", target_scale=(0.1, 0.15), min_keep=4)
    masker = build_masker(config, (8, 8))
    counts = context_layouts(masker, seed=0, batch_size=16, micro_batch=8, batches=2)
    sizes = [masker.sample_with_stats(16, mask_generator(0, s))[1].context_sizes
             for s in range(2)]
    halves = [c[i:i + 8] for c in sizes for i in (0, 8)]
    assert counts.layout == "pack" and counts.by_layout is not None
    assert counts.by_layout["pack"] == pytest.approx(sum(float(c.sum()) for c in sizes) / 2)
    assert counts.by_layout["pad"] == pytest.approx(sum(8 * int(h.max()) for h in halves) / 2)
    assert counts.by_layout["truncate"] == pytest.approx(
        sum(8 * int(h.min()) for h in halves) / 2)
    assert counts.processed == counts.valid == counts.by_layout["pack"]
    pad = context_layouts(build_masker(attrs.evolve(config, context_equalize="pad"), (8, 8)),
                          seed=0, batch_size=16, micro_batch=8, batches=2)
    assert pad.layout == "pad" and pad.processed == counts.by_layout["pad"] > pad.valid
    cut = context_layouts(build_masker(attrs.evolve(config, context_equalize="subset"),
                                       (8, 8)), seed=0, batch_size=16, micro_batch=8,
                          batches=2)
    assert cut.layout == "truncate" and cut.processed == cut.valid


def test_jepa_check_prints_the_context_tokens_of_each_layout(tiny_dict, tmp_path):
    from rich.console import Console

    from jepa_core.commands.plan import print_check

    registry = make_plugin_manager()
    recipe = recipe_from_dict(packed_recipe(tiny_dict), registry, "tiny")
    console = Console(record=True, width=200)
    print_check(recipe, registry, console, gpus=1)
    text = " ".join(console.export_text().split())
    assert "Context tokens per step (global batch 8)" in text
    for row in ("truncate", "pack (this recipe)", "as trained (pack)"):
        assert row in text
    assert ("Chosen by the masker (multiblock: context_equalize pack, of subset / pad / "
            "pack)") in text
