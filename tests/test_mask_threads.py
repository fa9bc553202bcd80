"""Masks cost the same wherever they are drawn: the core draws them on one torch thread (as in
a DataLoader worker), restores the thread count afterwards, also when the masker raises, and
the first-party maskers' masks do not depend on the thread count."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jepa_core.errors import PluginFailed
from jepa_core.runtime.data import MaskingCollate, batch_layout, draw_masks, one_thread
from jepa_core.runtime.mask_guard import MaskGuard
from jepa_image.configs import MultiBlockConfig
from jepa_image.multiblock import build_masker


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class Recording:
    """A masker that notes torch's thread count while it draws, and may raise."""

    grid = (4, 4)

    def __init__(self, fail: bool = False):
        self.fail, self.seen = fail, []
        self.inner = build_masker(MultiBlockConfig(min_keep=2), self.grid)

    def __call__(self, batch_size, generator):
        self.seen.append(torch.get_num_threads())
        if self.fail:
            raise RuntimeError("broken masker")
        return self.inner(batch_size, generator)


@settings(max_examples=20, deadline=None)
@given(threads=st.integers(1, 4), fail=st.booleans())
def test_one_thread_restores_the_thread_count_even_on_exceptions(threads, fail):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with pytest.raises(ValueError) if fail else contextlib.nullcontext():
            with one_thread():
                assert torch.get_num_threads() == 1
                if fail:
                    raise ValueError("inside")
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_the_collator_draws_on_one_thread_and_restores_the_count(two_threads):
    masker = Recording()
    MaskingCollate(masker, seed=0, global_batch=8).step_masks(3)
    assert masker.seen == [1] and torch.get_num_threads() == 2
    draw_masks(masker, 8, 0, 3)
    assert masker.seen == [1, 1] and torch.get_num_threads() == 2


def test_the_mask_guard_draws_on_one_thread_and_restores_the_count_when_it_raises(two_threads):
    masker = Recording(fail=True)
    guard = MaskGuard(masker, "masker 'recording'", 0, batch_layout(8, 1), 0, 3)
    with pytest.raises(PluginFailed, match="broken masker"):
        guard.check_start()
    assert masker.seen == [1] and torch.get_num_threads() == 2
    with pytest.raises(RuntimeError):
        MaskingCollate(masker, seed=0, global_batch=8).step_masks(0)
    assert masker.seen[-1] == 1 and torch.get_num_threads() == 2


@pytest.mark.parametrize("config", [MultiBlockConfig(style="reference"), MultiBlockConfig(),
                                    MultiBlockConfig(context_equalize="pad")])
def test_multiblock_masks_do_not_depend_on_the_thread_count(config, two_threads):
    masker = build_masker(config, (28, 28))
    many = masker(128, torch.Generator().manual_seed(4))
    torch.set_num_threads(1)
    one = masker(128, torch.Generator().manual_seed(4))
    assert torch.equal(many.context, one.context) and torch.equal(many.targets, one.targets)
    assert (many.context_valid is None) == (one.context_valid is None)
