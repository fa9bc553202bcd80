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

Video grids (t, h, w) (`sincos_3d`, the V-JEPA convention) concatenate one 1-D table per axis
in the order [time | height | width], tokens in raster order (index = (t * gh + h) * gw + w).
With `uniform_power` every axis gets 2 * ceil(D / 6) channels and the concatenation is cut to
D (for D = 1024: 342 + 342 + 340); otherwise time gets D / 2 and height and width D / 4 each.
`sincos_table` picks the table for a grid of either rank.
"""

from __future__ import annotations

import math

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


def axis_widths_3d(embed_dim: int, uniform_power: bool) -> tuple[int, int, int]:
    """The channels (time, height, width) of a 3-D table before the cut to embed_dim; each is
    even. ValueError when embed_dim cannot be split (not a multiple of 8 without
    uniform_power, odd with it)."""
    if uniform_power:
        if embed_dim % 2:
            raise ValueError(
                f"3D sin-cos positions (uniform_power) need an even width, got {embed_dim}")
        share = 2 * math.ceil(embed_dim / 6)
        return share, share, share
    if embed_dim % 8:
        raise ValueError(
            f"3D sin-cos positions need a width divisible by 8 (time D/2, height and width "
            f"D/4, each even), got {embed_dim}; or set uniform_power")
    return embed_dim // 2, embed_dim // 4, embed_dim // 4


def sincos_3d(embed_dim: int, grid_t: int, grid_h: int, grid_w: int, *,
              uniform_power: bool = True,
              device: torch.device | str | None = None) -> torch.Tensor:
    """The fixed embedding table of a (grid_t, grid_h, grid_w) grid:
    [grid_t * grid_h * grid_w, embed_dim] float32, channels [time | height | width] (see the
    module docstring and `axis_widths_3d`), tokens in raster order over (t, h, w)."""
    widths = axis_widths_3d(embed_dim, uniform_power)
    axes = [torch.arange(n, dtype=torch.float64, device=device) for n in (grid_t, grid_h, grid_w)]
    coords = torch.meshgrid(*axes, indexing="ij")  # [gt, gh, gw] each
    parts = [sincos_1d(width, c.reshape(-1)) for width, c in zip(widths, coords, strict=True)]
    return torch.cat(parts, dim=1)[:, :embed_dim].to(torch.float32)


def sincos_table(embed_dim: int, grid: tuple[int, ...], *, uniform_power: bool = True,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """[prod(grid), embed_dim] float32: `sincos_2d` for a (gh, gw) grid (uniform_power does not
    apply), `sincos_3d` for a (gt, gh, gw) one. ValueError for any other rank."""
    if len(grid) == 2:
        return sincos_2d(embed_dim, *grid, device=device)
    if len(grid) == 3:
        return sincos_3d(embed_dim, *grid, uniform_power=uniform_power, device=device)
    raise ValueError(f"sin-cos positions exist for 2-D and 3-D patch grids, got {tuple(grid)}")
