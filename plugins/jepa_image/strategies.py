"""Hypothesis strategies for the image plugin's masker configs (a test dependency only).

The config classes name these functions in their `hypothesis_configs` attribute, so
`jepa_core.testing.strategies.masker_configs(spec, grid)` draws varied configs of either
masker; nothing imports this module outside tests (hypothesis is not a runtime dependency).
Each function returns configs the attrs validators accept; whether the factory accepts one on
`grid` is for `masker_configs` to filter.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from jepa_image.configs import MultiBlockConfig, RandomPatchConfig


def _pair(lo: st.SearchStrategy[float], width: st.SearchStrategy[float], top: float):
    """(lo, lo + width) capped at `top`, rounded to 3 decimals."""
    return st.tuples(lo, width).map(lambda p: (round(p[0], 3), round(min(top, p[0] + p[1]), 3)))


@st.composite
def _multiblock_fields(draw: Any, grid: tuple[int, int]) -> dict[str, Any]:
    n = grid[0] * grid[1]
    return dict(
        style=draw(st.sampled_from(["corrected", "reference"])),
        num_targets=draw(st.integers(1, 6)),
        target_scale=draw(_pair(st.floats(0.02, 0.4), st.floats(0, 0.2), 1.0)),
        target_aspect=draw(st.tuples(st.floats(0.3, 1.0), st.floats(1.0, 3.0)).map(
            lambda p: (round(p[0], 3), round(p[1], 3)))),
        num_context=draw(st.integers(1, 2)),
        context_scale=draw(_pair(st.floats(0.5, 1.0), st.floats(0, 0.5), 1.0)),
        context_aspect=draw(st.sampled_from([(1.0, 1.0), (0.75, 1.5), (0.5, 2.0)])),
        min_keep=draw(st.integers(1, max(1, n // 8))),
        allow_overlap=draw(st.booleans()),
        context_equalize=draw(st.sampled_from(["subset", "pad", "pack"])),
        equalize_group=draw(st.one_of(st.none(), st.integers(1, 8))),
    )


def multiblock_configs(grid: tuple[int, int]) -> st.SearchStrategy[MultiBlockConfig]:
    """MultiBlockConfigs of either style, sized for a (gh, gw) grid (min_keep <= N / 8)."""
    return _multiblock_fields(grid).map(lambda fields: MultiBlockConfig(**fields))


def random_patch_configs(grid: tuple[int, int]) -> st.SearchStrategy[RandomPatchConfig]:
    """RandomPatchConfigs with context and target ratios from sparse to dense."""
    return st.builds(RandomPatchConfig,
                     context_ratio=st.floats(0.05, 0.9).map(lambda r: round(r, 3)),
                     num_targets=st.integers(1, 6),
                     target_ratio=st.floats(0.02, 0.5).map(lambda r: round(r, 3)))
