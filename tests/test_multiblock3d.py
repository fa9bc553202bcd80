"""The V-JEPA `multiblock3d` masker, and the core's support for patch grids of any rank: the
contract kit, the structure checks, `jepa masks` and the token counts of `jepa check`."""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from jepa_core.errors import ConfigError
from jepa_core.interfaces import MaskBatch
from jepa_core.maskcheck import overlap_problem, structure_problem, target_membership
from jepa_core.plugins import make_plugin_manager
from jepa_core.testing import check_masker
from jepa_core.testing import strategies as js
from jepa_core.testing.contract import ContractSkipped, box_extents, check_block_ranges
from jepa_video.configs import MaskSetConfig, MultiBlock3DConfig
from jepa_video.masker import block_membership, build_masker

VITL_GRID = (8, 14, 14)
FEW = settings(max_examples=15, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def spec():
    return make_plugin_manager().get("masker", "multiblock3d")


def test_registered_with_the_vitl_sets(spec):
    config = spec.config_class()
    assert [(s.name, s.num_blocks, s.spatial_scale, s.temporal_scale, s.aspect_ratio)
            for s in config.sets] == [("short", 8, (0.15, 0.15), (1.0, 1.0), (0.75, 1.5)),
                                      ("long", 2, (0.7, 0.7), (1.0, 1.0), (0.75, 1.5))]
    masker = spec.build(config, grid=VITL_GRID)
    out = masker(4, gen(0))
    assert list(out) == ["short", "long"] and masker.grid == VITL_GRID
    assert all(m.targets.shape[:2] == (4, 1) for m in out.values())


# -- the contract kit on 3-D grids --------------------------------------------------------
@FEW
@given(st.data(), js.video_grids(max_t=4, min_side=3, max_side=10), js.batch_sizes(8),
       js.seeds())
def test_the_contract_holds_on_video_grids(spec, data, grid, batch_size, seed):
    config = data.draw(js.masker_configs(spec, grid))
    masker = spec.build(config, grid=grid)
    out = check_masker(masker, batch_size, seed, allow_overlap=False, min_keep=1)
    assert set(out) == {s.name for s in config.sets}


def test_every_patch_is_reachable_as_context_and_target(spec):
    masker = spec.build(MultiBlock3DConfig(
        (MaskSetConfig("a", 2, (0.2, 0.3), (0.5, 1.0), (0.75, 1.5)),), style="whole"),
        grid=(4, 6, 6))
    check_masker(masker, 16, 0, claims_reachable=True, reach_samples=2048)


def _whole(config: MultiBlock3DConfig) -> MultiBlock3DConfig:
    return MultiBlock3DConfig(config.sets, style="whole")


@FEW
@given(st.data(), js.video_grids(max_t=4, min_side=3, max_side=10), js.batch_sizes(8),
       js.seeds())
def test_the_target_is_the_union_of_the_drawn_boxes(spec, data, grid, batch_size, seed):
    config = _whole(data.draw(js.masker_configs(spec, grid)))
    masker = spec.build(config, grid=grid)
    n = math.prod(grid)
    g = gen(seed)
    for set_config in config.sets:
        draw = masker.draw_set(set_config, batch_size, g)
        masks = masker.masks_of(draw)
        t, h, w = draw.block
        lo_t, hi_t = set_config.temporal_scale
        assert max(1, int(grid[0] * lo_t)) <= t <= max(1, int(grid[0] * hi_t))
        assert 1 <= h <= grid[1] and 1 <= w <= grid[2]
        corners = draw.corners
        assert corners.shape == (batch_size, set_config.num_blocks, 3)
        assert bool((corners >= 0).all())
        assert bool((corners + torch.tensor(draw.block) <= torch.tensor(grid)).all())
        boxes = block_membership(corners, draw.block, grid)  # [B, K, N]
        kept = torch.arange(set_config.num_blocks) < draw.kept[:, None]
        union = (boxes & kept[..., None]).any(1)
        member = target_membership(masks, n)
        assert torch.equal(member, union)
        # the context is exactly the rest of the clip
        idx = masks.context if masks.context_valid is None else \
            torch.where(masks.context_valid, masks.context, n)  # padding to a scratch column
        ctx = torch.zeros(batch_size, n + 1, dtype=torch.bool).scatter_(1, idx, True)[:, :n]
        assert torch.equal(ctx, ~union)


@FEW
@given(st.data(), js.video_grids(max_t=4, min_side=3, max_side=10), js.batch_sizes(8),
       js.seeds())
def test_reference_rows_are_the_batch_minimum_in_raster_order(spec, data, grid, batch_size,
                                                              seed):
    config = MultiBlock3DConfig(data.draw(js.masker_configs(spec, grid)).sets,
                                style="reference")
    masker = spec.build(config, grid=grid)
    out, stats = masker.sample_with_details(batch_size, gen(seed))
    whole = spec.build(_whole(config), grid=grid)(batch_size, gen(seed))
    for name, masks in out.items():
        assert masks.context_valid is None and masks.targets_valid is None
        assert masks.context.shape[1] == int(stats[name].context_sizes.min())
        assert masks.targets.shape[2] == int(stats[name].target_sizes.min())
        # the same blocks as the whole style, each row's first indices in raster order
        full = whole[name]
        assert torch.equal(masks.context, full.context[:, :masks.context.shape[1]])
        assert torch.equal(masks.targets, full.targets[:, :, :masks.targets.shape[2]])
        assert bool((masks.context.diff(dim=1) > 0).all())
        assert bool((masks.targets.diff(dim=2) > 0).all())


def test_whole_style_pads_with_a_real_index(spec):
    masker = spec.build(_whole(spec.config_class()), grid=VITL_GRID)
    out, stats = masker.sample_with_details(16, gen(3))
    for name, masks in out.items():
        assert masks.context_valid is not None and masks.targets_valid is not None
        assert torch.equal(masks.context_valid.sum(1), stats[name].context_sizes)
        assert torch.equal(masks.targets_valid[:, 0].sum(1), stats[name].target_sizes)
        pad = ~masks.context_valid
        first = masks.context[:, :1].expand_as(masks.context)
        assert torch.equal(masks.context[pad], first[pad])


def test_same_generator_same_masks_and_seeds_differ(spec):
    masker = spec.build(spec.config_class(), grid=VITL_GRID)
    a, b, c = masker(6, gen(5)), masker(6, gen(5)), masker(6, gen(6))
    for name in a:
        assert torch.equal(a[name].context, b[name].context)
        assert torch.equal(a[name].targets, b[name].targets)
    assert any(a[n].context.shape != c[n].context.shape or
               not torch.equal(a[n].context, c[n].context) for n in a)


def test_vitl_token_counts_match_the_reference():
    """REFERENCE.md: on 8x14x14 with batch 24 the official sampler leaves about 366 / 107
    context and 745 / 1102 target tokens per clip (short / long range sets)."""
    masker = build_masker(MultiBlock3DConfig(), VITL_GRID)
    sums = {"short": [0.0, 0.0], "long": [0.0, 0.0]}
    draws = 300
    for seed in range(draws):
        for name, masks in masker(24, gen(seed)).items():
            sums[name][0] += masks.context.shape[1]
            sums[name][1] += masks.targets.shape[2]
    means = {k: (c / draws, t / draws) for k, (c, t) in sums.items()}
    assert means["short"][0] == pytest.approx(366, rel=0.05), means
    assert means["short"][1] == pytest.approx(745, rel=0.04), means
    assert means["long"][0] == pytest.approx(107, rel=0.10), means
    assert means["long"][1] == pytest.approx(1102, rel=0.03), means


def test_clips_left_without_context_fall_back_to_fewer_blocks(spec):
    # two blocks of 4x4 on a 1x4x5 grid cover the clip whenever their columns are apart
    config = MultiBlock3DConfig((MaskSetConfig("a", 2, (0.8, 0.8), (1.0, 1.0), (1.0, 1.0)),),
                                style="whole")
    masker = spec.build(config, grid=(1, 4, 5))
    out, stats = masker.sample_with_details(256, gen(0))
    masks = out["a"]
    assert int(masks.context_valid.sum(1).min() if masks.context_valid is not None
               else masks.context.shape[1]) >= 1
    assert stats["a"].block == (1, 4, 4)
    assert overlap_problem(masks, (1, 4, 5)) is None


@pytest.mark.parametrize("grid, sets, words", [
    ((14, 14), None, "(t, h, w) patch grid"),
    ((2, 4, 4), (MaskSetConfig("a", 1, (1.0, 1.0), (1.0, 1.0), (1.0, 1.0)),), "whole"),
    ((2, 4, 4), (MaskSetConfig("a", 1, (0.01, 0.1)),), "rounds to 0 patches"),
])
def test_the_factory_refuses_impossible_configs(spec, grid, sets, words):
    config = spec.config_class() if sets is None else MultiBlock3DConfig(sets)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        spec.build(config, grid=grid)


def test_mask_set_names_must_differ():
    with pytest.raises(ValueError, match="must differ"):
        MultiBlock3DConfig((MaskSetConfig("a"), MaskSetConfig("a")))


# -- N-D grids in the kit and the structure checks -------------------------------------------
class RandomND:
    """Random patches on a grid of any rank: context the first half of a permutation, one
    target block the rest."""

    def __init__(self, grid):
        self.grid = grid

    def __call__(self, batch_size, generator):
        n = math.prod(self.grid)
        order = torch.rand(batch_size, n, generator=generator).argsort(1)
        half = max(1, n // 2)
        return MaskBatch(order[:, :half], order[:, None, half:] if n > 1 else order[:, None])


@settings(max_examples=20, deadline=None)
@given(js.nd_grids(min_rank=1, max_rank=4, min_side=2, max_side=5), js.seeds())
def test_the_kit_accepts_grids_of_any_rank(grid, seed):
    check_masker(RandomND(grid), 4, seed, allow_overlap=False)


def test_the_kit_refuses_a_grid_that_is_not_a_tuple_of_ints():
    with pytest.raises(AssertionError, match="tuple of positive ints"):
        check_masker(RandomND([4, 4]), 2, 0)


def test_block_checks_on_a_3d_grid():
    grid = (2, 4, 4)
    box = torch.tensor([[[0, 1, 4, 5, 16, 17, 20, 21]]])  # t 0-1, rows 0-1, cols 0-1
    masker = types.SimpleNamespace(grid=grid)
    extents = box_extents(masker, MaskBatch(torch.tensor([[2]]), box))
    assert [int(e) for e in extents] == [2, 2, 2]
    holed = MaskBatch(torch.tensor([[2]]), box[..., :7].contiguous())
    with pytest.raises(AssertionError, match="target blocks are boxes"):
        box_extents(masker, holed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_block_ranges(masker, MaskBatch(torch.tensor([[2]]), box), (0.1, 0.2), None)
    assert any(issubclass(w.category, ContractSkipped) and "3-D grid" in str(w.message)
               for w in caught)


def test_unreachable_patches_are_named_by_3d_coordinates():
    class NeverLast(RandomND):
        def __call__(self, batch_size, generator):
            n = math.prod(self.grid)
            order = torch.rand(batch_size, n - 1, generator=generator).argsort(1)
            return MaskBatch(order[:, :4], order[:, None, 4:])

    with pytest.raises(AssertionError, match=r"\(t, row, col\) \(1, 2, 2\)"):
        check_masker(NeverLast((2, 3, 3)), 4, 0, claims_reachable=True, reach_samples=64)


def test_structure_checks_use_the_product_of_the_grid():
    grid = (2, 3, 4)
    ok = MaskBatch(torch.tensor([[0, 23]]), torch.tensor([[[5, 6]]]))
    assert structure_problem(ok, grid, 1) is None and overlap_problem(ok, grid) is None
    bad = MaskBatch(torch.tensor([[0, 24]]), torch.tensor([[[5, 6]]]))
    problem = structure_problem(bad, grid, 1)
    assert problem is not None and "2x3x4 grid" in problem.detail
    assert "(t * 3 + row) * 4 + col" in problem.fix
    leak = MaskBatch(torch.tensor([[0, 5]]), torch.tensor([[[5, 6]]]))
    assert overlap_problem(leak, grid) is not None


# -- jepa masks and jepa check ---------------------------------------------------------------
class TubeNet:
    """A stand-in video encoder: only the interface (until `vit_video` lands)."""

    embed_dim, num_heads, image_size, patch_grid = 8, 1, (64, 64), (4, 8, 8)

    def __call__(self, clips, keep=None, keep_valid=None):
        return clips


def _video_recipe(spec, config):
    encoder_spec = types.SimpleNamespace(build=lambda config: TubeNet(), plugin="test",
                                         kind="encoder", name="tubes")
    registry = types.SimpleNamespace(
        get=lambda kind, name: encoder_spec if kind == "encoder" else spec)
    recipe = types.SimpleNamespace(
        encoder=types.SimpleNamespace(name="tubes", config=None),
        masker=types.SimpleNamespace(name="multiblock3d", config=config),
        seed=0, train=types.SimpleNamespace(global_batch_size=8))
    return recipe, registry


def test_jepa_masks_draws_every_set_of_a_3d_masker(spec, tmp_path):
    from PIL import Image

    from jepa_core.commands.mask_preview import masks_command

    recipe, registry = _video_recipe(spec, spec.config_class())
    console = Console(record=True, width=160)
    out = tmp_path / "m.png"
    stats = masks_command(recipe, registry, out, samples=2, console=console)
    text = console.export_text()
    assert set(stats["sets"]) == {"short", "long"}
    assert "mask set 'short'" in text and "mask set 'long'" in text and "4x8x8 grid" in text
    for name in ("short", "long"):
        s = stats["sets"][name]
        assert s["grid"] == [4, 8, 8] and len(s["target_coverage"]) == 4
    image = Image.open(out)
    assert image.format == "PNG" and image.width >= 4 * 8 * 2  # one tile per time step
    # the picture holds the context colour and a target colour
    colours = {c for _, c in image.getcolors(1 << 16)}
    assert (66, 110, 180) in colours and (240, 140, 30) in colours


def test_jepa_check_counts_tokens_per_mask_set(spec):
    from jepa_core.commands.plan import token_table
    from jepa_core.runtime.tokens import draw_set_token_counts

    masker = spec.build(spec.config_class(), grid=VITL_GRID)
    counts = draw_set_token_counts(masker, seed=0, batch_size=24, batches=4)
    assert list(counts) == ["short", "long"]
    assert counts["short"].context > counts["long"].context
    assert counts["long"].target > counts["short"].target
    assert all(c.num_targets == 1 for c in counts.values())
    plan = types.SimpleNamespace(grid=VITL_GRID, token_counts=counts["short"],
                                 set_tokens=counts, tokens=None)
    console = Console(record=True, width=160)
    console.print(token_table(plan, None))
    text = console.export_text()
    assert "8x14x14 grid" in text and "1568" in text
    assert "set short: context Nc" in text and "set long: context Nc" in text
    assert f"{counts['long'].context:.1f}" in text


@FEW
@given(st.data(), js.video_grids(max_t=4, min_side=3, max_side=10), st.integers(2, 12),
       st.integers(1, 5), js.seeds())
def test_grouped_reference_rows_are_their_groups_minimum(spec, data, grid, batch_size, group,
                                                         seed):
    """equalize_group G: each run of G rows is what the reference style gives a batch of
    those rows alone (cut to their minimum), padded with the row's first index and marked
    invalid up to the longest group."""
    sets = data.draw(js.masker_configs(spec, grid)).sets
    grouped = spec.build(MultiBlock3DConfig(sets, style="reference", equalize_group=group),
                         grid=grid)
    out, stats = grouped.sample_with_details(batch_size, gen(seed))
    whole = spec.build(_whole(MultiBlock3DConfig(sets)), grid=grid)(batch_size, gen(seed))
    for name, masks in out.items():
        full = whole[name]
        ctx_valid = (masks.context_valid if masks.context_valid is not None
                     else torch.ones_like(masks.context, dtype=torch.bool))
        for start in range(0, batch_size, group):
            rows = slice(start, start + group)
            keep = int(stats[name].context_sizes[rows].min())
            assert ctx_valid[rows].sum(1).tolist() == [keep] * len(ctx_valid[rows])
            assert torch.equal(masks.context[rows, :keep], full.context[rows, :keep])
            pad = masks.context[rows, keep:]
            assert torch.equal(pad, masks.context[rows, :1].expand_as(pad))
            cut = int(stats[name].target_sizes[rows].min())
            assert torch.equal(masks.targets[rows, :, :cut], full.targets[rows, :, :cut])


def test_the_vitl_recipe_cuts_per_gpu_batch_as_the_official_sampler():
    """Global batch 3072 in groups of 24 (recipes/vjepa_vitl16.yaml): the context each clip
    keeps is that of batch-24 draws (about 366 / 107, REFERENCE.md), not the minimum of
    3072 clips."""
    masker = build_masker(MultiBlock3DConfig(equalize_group=24), VITL_GRID)
    kept: dict[str, list[float]] = {"short": [], "long": []}
    for seed in range(30):  # one block shape per batch: average over batches
        for name, masks in masker(24 * 4, gen(seed)).items():
            valid = masks.context_valid
            rows = masks.context.shape[1] if valid is None else valid.sum(1).double().mean()
            kept[name].append(float(rows))
    short, long = (sum(kept[n]) / len(kept[n]) for n in ("short", "long"))
    assert abs(short - 366) / 366 < 0.06 and abs(long - 107) / 107 < 0.12
