"""Hypothesis strategies for the video plugin's masker configs (a test dependency only).

`MultiBlock3DConfig.hypothesis_configs` names `multiblock3d_configs`, so
`jepa_core.testing.strategies.masker_configs(spec, grid)` draws varied configs; whether the
factory accepts one on `grid` is for `masker_configs` to filter.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from jepa_video.configs import MaskSetConfig, MultiBlock3DConfig


def _pair(lo: float, hi: float) -> st.SearchStrategy[tuple[float, float]]:
    """(a, b) with lo <= a <= b <= hi, rounded to 3 decimals."""
    side = st.floats(lo, hi).map(lambda x: round(x, 3))
    return st.tuples(side, side).map(lambda p: (min(p), max(p)))


@st.composite
def _set(draw: Any, name: str) -> MaskSetConfig:
    return MaskSetConfig(name, num_blocks=draw(st.integers(1, 8)),
                         spatial_scale=draw(_pair(0.05, 0.8)),
                         temporal_scale=draw(st.sampled_from([(1.0, 1.0), (0.5, 1.0)])),
                         aspect_ratio=draw(st.sampled_from([(1.0, 1.0), (0.75, 1.5),
                                                            (0.3, 3.0)])))


@st.composite
def _configs(draw: Any) -> MultiBlock3DConfig:
    count = draw(st.integers(1, 3))
    sets = tuple(draw(_set(f"set{i}")) for i in range(count))
    return MultiBlock3DConfig(sets, style=draw(st.sampled_from(["reference", "whole"])),
                              equalize_group=draw(st.sampled_from([None, 1, 3])))


def multiblock3d_configs(grid: tuple[int, ...]) -> st.SearchStrategy[MultiBlock3DConfig]:
    """MultiBlock3DConfigs of either style with 1-3 mask sets (any grid)."""
    return _configs()
