"""Fixed 2D sin-cos positional embeddings (the I-JEPA / MAE convention).

For a token at row r and column c of a (gh, gw) patch grid, with D channels (D % 4 == 0) and
F = D / 4 frequencies omega_k = 1 / 10000 ** (k / F), k = 0 .. F-1:

    channels [0,    F)   sin(c * omega)     \\  first half: the column (x, width) coordinate
    channels [F,   2F)   cos(c * omega)     /
    channels [2F,  3F)   sin(r * omega)     \\  second half: the row (y, height) coordinate
    channels [3F,  4F)   cos(r * omega)     /

Tokens are in row-major order (index = r * gw + c), the order of a flattened patch grid.
Column-first matches the released I-JEPA and MAE weights, so a freshly built model carries
exactly the table stored in their checkpoints. Computed in float64, returned as float32.
"""

from __future__ import annotations

import torch


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[P] positions -> [P, embed_dim] = [sin(p * omega) | cos(p * omega)], embed_dim even."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {embed_dim}")
    num_freqs = embed_dim // 2
    exponents = torch.arange(num_freqs, dtype=torch.float64, device=positions.device) / num_freqs
    omega = 1.0 / (10000.0 ** exponents)  # [F]
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # [P, F]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int,
              device: torch.device | str | None = None) -> torch.Tensor:
    """The fixed embedding table of a (grid_h, grid_w) grid: [grid_h * grid_w, embed_dim] float32.

    embed_dim must be divisible by 4 (two axes, sin and cos each). See the module docstring for
    the channel layout. Works for non-square grids.
    """
    if embed_dim % 4:
        raise ValueError(
            f"2D sin-cos positional embeddings need a width divisible by 4, got {embed_dim}")
    rows = torch.arange(grid_h, dtype=torch.float64, device=device)
    cols = torch.arange(grid_w, dtype=torch.float64, device=device)
    row_of, col_of = torch.meshgrid(rows, cols, indexing="ij")  # [gh, gw] each
    half = embed_dim // 2
    emb_cols = sincos_1d(half, col_of.reshape(-1))
    emb_rows = sincos_1d(half, row_of.reshape(-1))
    return torch.cat([emb_cols, emb_rows], dim=1).to(torch.float32)
