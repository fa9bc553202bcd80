"""Maskers: the contract over every registered masker, and the multi-block sampler's own
promises (reference statistics and quirks, corrected reachability, no hang, collation)."""

from __future__ import annotations

import time

import attrs
import pytest
import torch
from conftest import load_bench
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jepa_core.errors import ConfigError
from jepa_core.plugins import make_plugin_manager
from jepa_core.runtime.data import batch_layout, mask_generator, train_loader
from jepa_core.testing import check_masker
from jepa_core.testing import strategies as js
from jepa_core.testing.contract import check_structure
from jepa_core.testing.strategies import builds_on
from jepa_image.configs import MultiBlockConfig, RandomPatchConfig
from jepa_image.multiblock import MAX_REDRAWS, build_masker
from jepa_image.random_patches import build_masker as build_random

REGISTRY = make_plugin_manager()
MASKERS = sorted(REGISTRY.components["masker"])
REFERENCE = MultiBlockConfig(style="reference")
CORRECTED = MultiBlockConfig()
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.filter_too_much])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the contract, over the registry -----------------------------------------------------
@pytest.mark.parametrize("name", MASKERS)
@settings(max_examples=25, **SETTINGS)
@given(data=st.data(), batch_size=js.batch_sizes(16), seed=js.seeds())
def test_every_registered_masker_honours_the_contract(name, data, batch_size, seed):
    # Varied configs where the masker offers a strategy (hypothesis_configs), else the default,
    # on grids of the rank it works on (2-D unless its config says `grid_rank`).
    spec = REGISTRY.get("masker", name)
    grid = data.draw(js.grids_for(spec, 2, 24), label="grid")
    config = data.draw(js.masker_configs(spec, grid), label="config")
    masker = spec.build(config, grid=grid)
    assert masker.grid == grid
    check_masker(masker, batch_size, seed, time_limit_s=5)


@pytest.mark.parametrize("name", ["multiblock", "random"])
def test_first_party_maskers_offer_varied_configs(name):
    spec = REGISTRY.get("masker", name)
    assert js.config_strategy(spec) is not None
    seen: dict[str, set] = {field.name: set() for field in attrs.fields(spec.config_class)}

    @settings(max_examples=60, database=None, derandomize=True, **SETTINGS)
    @given(js.masker_configs(spec, (14, 14)))
    def collect(config):
        assert builds_on(spec, config, (14, 14))
        for field in seen:
            seen[field].add(repr(getattr(config, field)))

    collect()
    assert [field for field, values in seen.items() if len(values) < 2] == []


@settings(max_examples=150, **SETTINGS)
@given(data=st.data(), grid=js.grids(2, 28), batch_size=js.batch_sizes(16), seed=js.seeds())
def test_multiblock_contract_for_any_valid_config(data, grid, batch_size, seed):
    config = data.draw(js.masker_configs(REGISTRY.get("masker", "multiblock"), grid))
    masker = build_masker(config, grid)
    _, stats = masker.sample_with_stats(batch_size, _gen(seed))
    # A sample that falls back keeps some overlap (documented); the contract then skips it.
    overlap = None if config.allow_overlap or stats.fallbacks else False
    check_masker(masker, batch_size, seed, scale_range=config.target_scale,
                 aspect_range=config.target_aspect, min_keep=config.min_keep,
                 allow_overlap=overlap, time_limit_s=5)
    if config.context_equalize in ("pad", "pack"):  # whole contexts, in either style
        masks = masker(batch_size, _gen(seed))
        assert masks.context_valid is not None
        assert torch.equal(masks.context_valid.sum(1), stats.context_sizes)
        assert masks.packed == (config.context_equalize == "pack")


# -- the reference style reproduces the official sampler ---------------------------------
def test_reference_statistics_match_the_official_sampler():
    masker = build_masker(REFERENCE, (14, 14))
    sizes, before, after = [], [], []
    for step in range(30):
        masks, stats = masker.sample_with_stats(128, mask_generator(0, step))
        sizes.append(masks.targets.shape[2])
        before.append(stats.context_sizes.double().mean())
        after.append(masks.context.shape[1])
    assert 30 <= min(sizes) and max(sizes) <= 40 and 30 <= sum(sizes) / len(sizes) <= 40
    assert abs(float(torch.stack(before).mean()) - 84) <= 8
    assert abs(sum(after) / len(after) - 54) <= 8


@pytest.mark.parametrize("grid", [(14, 14), (7, 12), (16, 16)])
def test_reference_never_covers_the_last_row_or_column(grid):
    masker = build_masker(REFERENCE, grid)
    gh, gw = grid
    for step in range(20):
        masks = masker(64, mask_generator(1, step))
        for idx in (masks.context, masks.targets):
            assert not bool((idx // gw == gh - 1).any()) and not bool((idx % gw == gw - 1).any())


def test_reference_truncation_drops_the_bottom_and_subset_does_not():
    def mean_row(config):
        masker = build_masker(config, (14, 14))
        rows = [masker(128, mask_generator(2, s)).context // 14 for s in range(10)]
        return float(torch.cat([r.flatten() for r in rows]).double().mean())

    assert mean_row(REFERENCE) < 5.5  # the context block is rows 0..12: unbiased mean 6
    assert abs(mean_row(CORRECTED) - 6.5) < 0.4  # symmetric in expectation


@pytest.mark.parametrize("grid", [(14, 14), (7, 12), (16, 16)])
def test_corrected_reaches_every_patch(grid):
    check_masker(build_masker(CORRECTED, grid), 64, 0, claims_reachable=True,
                 allow_overlap=False, min_keep=CORRECTED.min_keep)


# -- never hang, fail early --------------------------------------------------------------
@pytest.mark.parametrize("build, config, grid, field", [
    (build_masker, MultiBlockConfig(target_scale=(0.001, 0.002)), (14, 14), "target_scale"),
    (build_masker, MultiBlockConfig(min_keep=500), (14, 14), "min_keep"),
    (build_masker, MultiBlockConfig(), (2, 2), "min_keep"),
    (build_masker, MultiBlockConfig(style="reference"), (1, 8), "grid"),
    (build_masker, MultiBlockConfig(style="reference", min_keep=170), (14, 14), "min_keep"),
    (build_random, RandomPatchConfig(target_ratio=0.0), (14, 14), "target_ratio"),
    (build_random, RandomPatchConfig(context_ratio=0.9, target_ratio=0.5), (4, 4), "target_ratio"),
])
def test_impossible_configs_raise_config_error_quickly(build, config, grid, field):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=field):
        build(config, grid)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("style", ["reference", "corrected"])
@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (4, 4), (5, 5), (3, 7)])
def test_small_grids_build_or_refuse_but_never_hang(style, grid):
    # The official sampler loops forever when a target block holds <= min_keep patches.
    for min_keep in (1, 2, 4, 10):
        config = MultiBlockConfig(style=style, min_keep=min_keep)
        try:
            masker = build_masker(config, grid)
        except ConfigError:
            continue
        check_masker(masker, 16, min_keep, min_keep=min_keep, time_limit_s=2)


def test_fallback_keeps_min_keep_when_targets_cover_the_context():
    config = MultiBlockConfig(target_scale=(0.45, 0.45), target_aspect=(1.0, 1.0),
                              context_scale=(1.0, 1.0), min_keep=30)
    masker = build_masker(config, (6, 6))
    masks, stats = masker.sample_with_stats(8, _gen(0))
    assert stats.redraw_rounds == MAX_REDRAWS and stats.fallbacks == 8
    assert masks.context.shape[1] >= 30
    check_masker(masker, 8, 0, min_keep=30, time_limit_s=2)


def test_pad_equalisation_keeps_every_patch_and_repeats_a_real_index():
    masker = build_masker(MultiBlockConfig(context_equalize="pad"), (14, 14))
    masks, stats = masker.sample_with_stats(32, _gen(3))
    valid = masks.context_valid
    assert torch.equal(valid.sum(1), stats.context_sizes)
    assert torch.equal(masks.context[~valid], masks.context[:, :1].expand_as(valid)[~valid])


# -- determinism -------------------------------------------------------------------------
@pytest.mark.parametrize("name", MASKERS)
def test_masks_depend_only_on_the_generator_seed(name):
    spec = REGISTRY.get("masker", name)
    grid = (14, 14) if getattr(spec.config_class, "grid_rank", 2) == 2 else (8, 14, 14)
    masker = spec.build(spec.config_class(), grid=grid)

    def draw(seed):  # [(context, targets)] of each mask set
        out = masker(16, _gen(seed))
        return [(m.context, m.targets) for m in (out.values() if isinstance(out, dict)
                                                 else [out])]

    def same(a, b):
        return all(x.shape == y.shape and torch.equal(x, y)
                   for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True))

    first = draw(7)
    draw(8)  # a call in between changes nothing
    torch.manual_seed(123)
    again, other = draw(7), draw(8)
    assert same(first, again)
    assert not same(first, other)


def test_mask_generator_mixes_seed_and_step():
    draws = {(seed, step): float(torch.rand(1, generator=mask_generator(seed, step)))
             for seed in (0, 1) for step in (0, 1, 2)}
    assert len(set(draws.values())) == len(draws)
    assert float(torch.rand(1, generator=mask_generator(1, 2))) == draws[(1, 2)]


# -- collation (the trainer's data pipeline) --------------------------------------------
class _Images:
    """A data source whose image i is filled with i (so rows can be traced)."""

    num_classes = 0

    def __len__(self):
        return 24

    def get(self, index, generator):
        return torch.full((1, 4, 4), float(index)), index


def _batches(num_workers, world_size=1, rank=0, cap=None):
    layout = batch_layout(8, world_size, rank, cap)
    loader = train_loader(_Images(), build_masker(CORRECTED, (14, 14)), layout, seed=5,
                          steps_per_epoch=3, start_step=2, stop_step=6, num_workers=num_workers)
    return list(loader)


def test_masks_and_images_do_not_depend_on_the_number_of_workers():
    serial, parallel = _batches(0), _batches(2)
    assert [b.step for b in serial] == [2, 3, 4, 5] == [b.step for b in parallel]
    masker = build_masker(CORRECTED, (14, 14))
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.mask.context, b.mask.context)
        assert torch.equal(a.mask.targets, b.mask.targets)
        direct = masker(8, mask_generator(5, a.step))
        assert torch.equal(direct.context, a.mask.context)


def test_ranks_and_micro_batches_are_slices_of_the_one_process_batch():
    whole = _batches(0)
    for world_size, cap in ((2, None), (4, None), (2, 2)):
        for rank in range(world_size):
            parts = _batches(0, world_size, rank, cap)
            per_step = len(parts) // len(whole)
            for i, batch in enumerate(parts):
                ref = whole[i // per_step]
                lo = rank * (8 // world_size) + (i % per_step) * batch.images.shape[0]
                rows = slice(lo, lo + batch.images.shape[0])
                assert torch.equal(batch.images, ref.images[rows])
                assert torch.equal(batch.mask.context, ref.mask.context[rows])
                assert torch.equal(batch.mask.targets, ref.mask.targets[rows])


# -- the benchmark's per-sample loop draws the same distribution -------------------------
@pytest.mark.parametrize("config", [REFERENCE, CORRECTED, MultiBlockConfig(context_equalize="pad")])
def test_loop_baseline_draws_like_the_vectorised_sampler(config):
    bench = load_bench("masks")
    masker = build_masker(config, (14, 14))
    loop_sizes, fast_sizes = [], []
    for step in range(6):
        loop = bench.loop_masks(masker, 64, mask_generator(0, step))
        check_structure(masker, loop, 64)
        fast = masker(64, mask_generator(0, step))
        assert loop.targets.shape == fast.targets.shape  # same block sizes: same first draws
        loop_sizes.append(loop.context.shape[1])
        fast_sizes.append(fast.context.shape[1])
    assert abs(sum(loop_sizes) - sum(fast_sizes)) / sum(fast_sizes) < 0.25


# -- index helpers -----------------------------------------------------------------------
def test_first_of_rows_takes_each_rows_first_entries_and_pads_with_its_first():
    import numpy as np

    from jepa_image.multiblock import first_of_rows

    mask = np.array([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0]], dtype=bool)
    flat, counts = np.flatnonzero(mask), mask.sum(1)
    rows, valid = first_of_rows(flat, counts, counts, 5)
    assert rows.tolist() == [[1, 2, 4], [0, 0, 0]]
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    rows, valid = first_of_rows(flat, counts, np.array([1, 1]), 5)
    assert rows.tolist() == [[1], [0]] and valid is None
    full = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)  # rows of equal length: a reshape
    rows, valid = first_of_rows(np.flatnonzero(full), full.sum(1), full.sum(1), 3)
    assert rows.tolist() == [[0, 2], [1, 2]] and valid is None
    # 2 + 6 + 4 + 4 entries = 4 rows of 4, but rows are cut to 2, 2, 4, 4 (two groups)
    mixed = np.zeros((4, 8), dtype=bool)
    for i, n in enumerate((2, 6, 4, 4)):
        mixed[i, :n] = True
    rows, valid = first_of_rows(np.flatnonzero(mixed), mixed.sum(1), np.array([2, 2, 4, 4]), 8)
    assert rows.tolist() == [[0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert valid.sum(1).tolist() == [2, 2, 4, 4]


def test_smallest_keys_takes_exactly_length_and_breaks_ties_in_raster_order():
    import numpy as np

    from jepa_image.multiblock import smallest_keys

    keys = np.array([[5, 1, 5, 5, 9], [2, 2, 2, 2, 2]], dtype=np.int32)
    none = np.zeros(keys.shape, dtype=np.uint8)
    assert smallest_keys(keys, none, 2).astype(int).tolist() == [[1, 1, 0, 0, 0],
                                                                 [1, 1, 0, 0, 0]]
    assert smallest_keys(keys, none, 5).sum() == 10
    dropped = np.array([[0, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=np.uint8)  # never chosen
    assert smallest_keys(keys, dropped, 2).astype(int).tolist() == [[1, 0, 1, 0, 0],
                                                                    [0, 0, 1, 1, 0]]


@settings(max_examples=200, deadline=None)
@given(gh=st.integers(1, 9), gw=st.integers(1, 150), data=st.data())
def test_bit_rows_hold_exactly_the_patches_of_the_blocks(gh, gw, data):
    # Blocks as bit rows (one bit per column, in 64-bit words per grid row: several words
    # past 64 columns) must expand to the patches a naive [gh, gw] mask gives.
    import numpy as np

    from jepa_image.multiblock import BlockTables, bit_counts, bits_to_patches

    h, w = data.draw(st.integers(1, gh)), data.draw(st.integers(1, gw))
    n, k = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    tops = np.array(data.draw(st.lists(st.integers(0, gh - h), min_size=n * k,
                                       max_size=n * k))).reshape(n, k)
    lefts = np.array(data.draw(st.lists(st.integers(0, gw - w), min_size=n * k,
                                        max_size=n * k))).reshape(n, k)
    naive = np.zeros((n, k, gh, gw), dtype=bool)
    for i in range(n):
        for j in range(k):
            naive[i, j, tops[i, j]:tops[i, j] + h, lefts[i, j]:lefts[i, j] + w] = True
    tables = BlockTables((gh, gw))
    blocks = tables.blocks(tops, lefts, (h, w))
    expanded = np.stack([bits_to_patches(blocks[:, j], gw) for j in range(k)], axis=1)
    assert np.array_equal(expanded.reshape(naive.shape), naive)
    union = tables.union(tops, lefts, (h, w))
    assert np.array_equal(bits_to_patches(union, gw).reshape(n, gh, gw), naive.any(1))
    assert bit_counts(union).tolist() == naive.any(1).sum((1, 2)).tolist()
    carved = union & ~blocks[:, 0]  # differences keep no stray bits past the last column
    assert np.array_equal(bits_to_patches(carved, gw).reshape(n, gh, gw),
                          naive.any(1) & ~naive[:, 0])
    assert bit_counts(carved).tolist() == (naive.any(1) & ~naive[:, 0]).sum((1, 2)).tolist()


@pytest.mark.parametrize("style", ["reference", "corrected"])
@pytest.mark.parametrize("grid", [(4, 70), (3, 130), (70, 3)])
def test_grids_wider_than_a_word_honour_the_contract(style, grid):
    config = MultiBlockConfig(style=style, min_keep=4)
    check_masker(build_masker(config, grid), 16, 0, min_keep=4, time_limit_s=5,
                 claims_reachable=style == "corrected")


@pytest.mark.parametrize("style", ["reference", "corrected"])
def test_equalize_group_cuts_each_group_to_its_own_shortest_context(style):
    import attrs

    from jepa_core.runtime.data import _take_rows

    config = attrs.evolve(MultiBlockConfig(style=style), equalize_group=16)
    masker = build_masker(config, (14, 14))
    masks, stats = masker.sample_with_stats(64, _gen(3))
    lengths = masks.context_valid.sum(1) if masks.context_valid is not None else None
    assert lengths is not None  # groups almost surely differ in their shortest row
    for g in range(4):
        rows = slice(16 * g, 16 * g + 16)
        assert (lengths[rows] == stats.context_sizes[rows].min()).all()
        part = _take_rows(masks, rows)  # one group per micro-batch: no padding left
        assert part.context_valid is None and part.context.shape[1] == int(lengths[rows][0])
        valid_rows = masks.context[rows][:, : part.context.shape[1]]
        assert torch.equal(part.context, valid_rows)
    whole = build_masker(MultiBlockConfig(style=style), (14, 14))(64, _gen(3))
    assert whole.context.shape[1] <= int(lengths.min())
