"""Hypothesis strategies for the checkerboard masker's configs (a test dependency only)."""

from hypothesis import strategies as st

from jepa_checkerboard.plugin import CheckerboardConfig


def checkerboard_configs(grid):
    """Configs with cells of 1 to 4 patches a side and 1 to 6 targets; masker_configs keeps
    the ones the factory accepts on the (gh, gw) grid."""
    return st.builds(CheckerboardConfig, cell=st.integers(1, 4), num_targets=st.integers(1, 6))
