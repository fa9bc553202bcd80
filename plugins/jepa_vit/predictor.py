"""The I-JEPA predictor: a narrow ViT that predicts target-block tokens from context tokens.

For each (image, target block) it runs one sequence

    [ predictor_embed(context tokens) + pos(context indices)  |  mask_token + pos(target indices) ]
      Nc tokens                                                   Nt tokens

through pre-norm transformer blocks and returns predictor_proj(predictor_norm(.)) at the mask
positions. Context tokens are repeated once per target block (B * M sequences). Padded context
positions (context_valid) and padded target queries (targets_valid, for target blocks of
unequal size) are masked out as attention keys.

Positions come from the encoder's `patch_grid`: 2D sin-cos for an image grid (gh, gw), the
video encoder's 3D sin-cos for a (t, h, w) grid (`jepa_vit.pos_embed.sincos_table`, with the
encoder's `uniform_power`). With num_mask_tokens > 1 (V-JEPA: one token per mask set) the
queries of a call use token `mask_index`.

Parameter names are those of the official I-JEPA and V-JEPA checkpoints' `predictor` state
dicts (less their `module.` / `backbone.` prefixes), so importing one is a key-prefix strip:

    mask_token [1, 1, Dp]                  predictor_pos_embed [1, N, Dp] (frozen sin-cos)
    (num_mask_tokens > 1: mask_tokens.0 .. mask_tokens.{K-1}, each [1, 1, Dp], as V-JEPA's)
    predictor_embed.{weight,bias}          D -> Dp
    predictor_blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*
    predictor_norm.{weight,bias}           predictor_proj.{weight,bias}   Dp -> D
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from jepa_core.errors import ConfigError
from jepa_vit.configs import PredictorConfig
from jepa_vit.encoder import (
    apply_blocks,
    gather_tokens,
    init_vit_weights,
    key_padding_mask,
    scale_residual_projections,
    set_attention,
    trunc_normal,
)
from jepa_vit.packing import Packing, run_packed_blocks, supports_packing
from jepa_vit.pos_embed import axis_widths_3d, sincos_table


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_position_width(width: int, grid: tuple[int, ...], uniform_power: bool) -> None:
    """ConfigError unless a predictor of this width can carry sin-cos positions of `grid`:
    divisible by 4 for a 2D grid, as `axis_widths_3d` asks for a 3D one."""
    if len(grid) == 2:
        if width % 4:
            raise ConfigError(
                f"predictor embed_dim {width} must be divisible by 4 (2D sin-cos positions)")
    elif len(grid) == 3:
        try:
            axis_widths_3d(width, uniform_power)
        except ValueError as err:
            raise ConfigError(f"predictor embed_dim {width}: {err}") from err
    else:
        raise ConfigError(f"the predictor takes 2-D or 3-D patch grids; the encoder has "
                          f"patch_grid {tuple(grid)}")


def resolve_num_heads(config: PredictorConfig, encoder_heads: int,
                      grid: tuple[int, ...] = (1, 1), uniform_power: bool = False) -> int:
    """config.num_heads, or the encoder's; ConfigError (with the nearest fixes) unless it
    divides the predictor width, and unless the width suits sin-cos positions on `grid` (2D:
    divisible by 4; see `check_position_width`)."""
    width = config.embed_dim
    check_position_width(width, grid, uniform_power)
    heads = config.num_heads or encoder_heads
    if width % heads:
        options = [d for d in _divisors(width) if 1 < d <= 64]
        nearest = min(options, key=lambda d: abs(d - heads)) if options else 1
        source = "" if config.num_heads else " (taken from the encoder)"
        step = math.lcm(heads, 4)  # the width must also stay divisible by 4
        raise ConfigError(
            f"predictor embed_dim {width} is not divisible by num_heads {heads}{source}; set "
            f"predictor num_heads to a divisor of {width} (e.g. {nearest}) or embed_dim to a "
            f"multiple of {step} (e.g. {step * max(1, round(width / step))})")
    return heads


class VisionTransformerPredictor(nn.Module):
    """See the module docstring. Attributes: embed_dim Dp, encoder_dim D, num_heads,
    patch_grid (gh, gw) or (t, h, w), num_patches N, num_mask_tokens, uniform_power (of the 3D
    table), grad_checkpointing."""

    def __init__(self, *, encoder_dim: int, patch_grid: tuple[int, ...], embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, attention: str = "auto",
                 num_mask_tokens: int = 1, uniform_power: bool = False,
                 depth_scaled_init: bool = False):
        super().__init__()
        self.embed_dim, self.encoder_dim, self.num_heads = embed_dim, encoder_dim, num_heads
        self.patch_grid = tuple(int(g) for g in patch_grid)
        self.num_patches = math.prod(self.patch_grid)
        self.num_mask_tokens = int(num_mask_tokens)
        self.depth_scaled_init = bool(depth_scaled_init)
        self.uniform_power = bool(uniform_power)
        self.grad_checkpointing = False

        self.predictor_embed = nn.Linear(encoder_dim, embed_dim, bias=True)
        if self.num_mask_tokens == 1:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        else:
            self.mask_tokens = nn.ParameterList(
                [nn.Parameter(torch.zeros(1, 1, embed_dim)) for _ in range(num_mask_tokens)])
        device = self.predictor_embed.weight.device
        table = sincos_table(embed_dim, self.patch_grid, uniform_power=self.uniform_power,
                             device=device)
        self.predictor_pos_embed = nn.Parameter(table[None], requires_grad=False)
        # Stochastic depth rises linearly from 0 at the first block to drop_path_rate.
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.predictor_blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=rate,
                  norm_layer=norm)
            for rate in rates])
        self.predictor_norm = norm(embed_dim)
        self.predictor_proj = nn.Linear(embed_dim, encoder_dim, bias=True)

        set_attention(self, attention)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """I-JEPA init (see `init_vit_weights`; with depth_scaled_init, then
        `scale_residual_projections`) plus the single mask token, trunc-normal std 0.02;
        several mask tokens start at zero (V-JEPA's zero_init_mask_tokens)."""
        init_vit_weights(self)
        if self.depth_scaled_init:
            scale_residual_projections(self.predictor_blocks)
        if self.num_mask_tokens == 1 and not self.mask_token.is_meta:
            trunc_normal(self.mask_token)
        elif self.num_mask_tokens > 1:
            with torch.no_grad():
                for token in self.mask_tokens:
                    token.zero_()

    def mask_token_of(self, mask_index: int) -> torch.Tensor:
        """[1, 1, Dp]: the learnable mask token of mask set `mask_index` (in
        [0, num_mask_tokens)); ValueError otherwise."""
        if not 0 <= mask_index < self.num_mask_tokens:
            raise ValueError(
                f"mask_index {mask_index} is out of range: this predictor has "
                f"{self.num_mask_tokens} mask token(s); set predictor num_mask_tokens to the "
                f"number of mask sets")
        if self.num_mask_tokens == 1:
            return self.mask_token
        return self.mask_tokens[mask_index]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """index [S, K] int64 patch indices -> [S, K, Dp] their fixed positional embeddings."""
        table = self.predictor_pos_embed.expand(index.shape[0], -1, -1)
        return gather_tokens(table, index)

    def embed_context(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """tokens [B, Nc, D], index [B, Nc] -> [B, Nc, Dp] projected tokens plus positions
        (promoted to the parameters' dtype: a float32 residual stream under autocast)."""
        return self.predictor_embed(tokens) + self.positions(index)

    def mask_queries(self, target_idx: torch.Tensor, mask_index: int = 0) -> torch.Tensor:
        """target_idx [S, Nt] -> [S, Nt, Dp]: mask token `mask_index` plus each target
        position."""
        return self.mask_token_of(mask_index) + self.positions(target_idx)

    @staticmethod
    def attention_mask(context_valid: torch.Tensor | None, repeats: int, num_queries: int,
                       targets_valid: torch.Tensor | None = None,
                       num_context: int | None = None) -> torch.Tensor | None:
        """context_valid [B, Nc] bool, targets_valid [B, repeats, num_queries] bool ->
        [B * repeats, 1, 1, Nc + num_queries] key mask: padded context positions and padded
        target queries are ignored as keys (a None side is all valid; num_context is Nc when
        context_valid is None). Both None stays None (the fast path)."""
        if context_valid is None and targets_valid is None:
            return None
        if context_valid is None:
            batch = targets_valid.shape[0]
            ctx = targets_valid.new_ones(batch * repeats, num_context)
        else:
            ctx = context_valid.repeat_interleave(repeats, dim=0)
        if targets_valid is None:
            queries = ctx.new_ones(ctx.shape[0], num_queries)
        else:
            queries = targets_valid.reshape(-1, num_queries)
        return key_padding_mask(torch.cat([ctx, queries], dim=1))

    def run_blocks(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x [S, L, Dp] -> [S, L, Dp] after all predictor blocks."""
        return apply_blocks(self.predictor_blocks, x, attn_mask, self.grad_checkpointing)

    @property
    def supports_packing(self) -> bool:
        """Whether forward takes pack=True: all blocks are timm's plain Block."""
        return supports_packing(self.predictor_blocks)

    def forward(self, context_tokens: torch.Tensor, context_idx: torch.Tensor,
                target_idx: torch.Tensor, context_valid: torch.Tensor | None = None,
                targets_valid: torch.Tensor | None = None, *,
                pack: bool = False, mask_index: int = 0) -> torch.Tensor:
        """context_tokens [B, Nc, D] (the context encoder's output), context_idx [B, Nc] int64,
        target_idx [B, M, Nt] int64, context_valid [B, Nc] bool | None and targets_valid
        [B, M, Nt] bool | None (False = padding, ignored as attention keys).
        pack: run each (image, block) sequence's valid tokens only, packed without padding
        (`jepa_vit.packing`): the same values, less compute.
        mask_index: which mask token the queries use (V-JEPA: the mask set's index).
        Returns [B, M, Nt, D]: one prediction per target index, in the encoder's width; at
        padded target positions the values are meaningless (losses skip them)."""
        if pack and (context_valid is not None or targets_valid is not None):
            return self.forward_packed(context_tokens, context_idx, target_idx, context_valid,
                                       targets_valid, mask_index=mask_index)
        batch, num_blocks, num_targets = target_idx.shape
        context = self.embed_context(context_tokens, context_idx)
        context = context.repeat_interleave(num_blocks, dim=0)  # [B*M, Nc, Dp], (b, m) order
        queries = self.mask_queries(target_idx.reshape(batch * num_blocks, num_targets),
                                    mask_index)
        x = torch.cat([context, queries], dim=1)  # [B*M, Nc+Nt, Dp]
        mask = self.attention_mask(context_valid, num_blocks, num_targets, targets_valid,
                                   context_idx.shape[1])
        x = self.run_blocks(x, mask)[:, -num_targets:]
        x = self.predictor_proj(self.predictor_norm(x))  # [B*M, Nt, D]
        return x.reshape(batch, num_blocks, num_targets, self.encoder_dim)

    def forward_packed(self, context_tokens: torch.Tensor, context_idx: torch.Tensor,
                       target_idx: torch.Tensor, context_valid: torch.Tensor | None,
                       targets_valid: torch.Tensor | None, *,
                       mask_index: int = 0) -> torch.Tensor:
        """`forward` with pack=True: [B, M, Nt, D], zeros at padded target positions.

        The packed stream holds, for each (image b, block m) in (b, m) order, the valid
        context tokens of b and then the valid mask queries of (b, m): the sequences of the
        padded computation without their padding. The context projection runs once per
        valid context token, the output head once per valid query."""
        batch, num_blocks, num_targets = target_idx.shape
        width = context_idx.shape[1]
        ctx_valid = (context_valid if context_valid is not None
                     else context_idx.new_ones(context_idx.shape, dtype=torch.bool))
        qry_valid = (targets_valid.reshape(batch * num_blocks, num_targets)
                     if targets_valid is not None
                     else target_idx.new_ones(batch * num_blocks, num_targets, dtype=torch.bool))
        table = self.predictor_pos_embed[0]  # [N, Dp]
        ctx = Packing(ctx_valid)
        context = (self.predictor_embed(ctx.gather(context_tokens))
                   + table.index_select(0, ctx.gather(context_idx)))  # [Tc, Dp]
        flat_targets = target_idx.reshape(batch * num_blocks, num_targets)
        token = self.mask_token_of(mask_index)[0]  # [1, Dp]
        queries = token + table.index_select(0, flat_targets[qry_valid])  # [Tq, Dp]
        # Each padded sequence position -> its token in cat([context, queries]).
        ctx_id = torch.zeros_like(ctx_valid, dtype=torch.int64)
        ctx_id.view(-1)[ctx.flat] = torch.arange(len(context), device=ctx_id.device)
        qry_id = (qry_valid.flatten().cumsum(0) - 1).reshape(qry_valid.shape) + len(context)
        source = torch.cat([ctx_id.repeat_interleave(num_blocks, dim=0), qry_id], dim=1)
        seq = Packing(torch.cat([ctx_valid.repeat_interleave(num_blocks, dim=0), qry_valid],
                                dim=1))  # [B*M, Nc + Nt]
        x = torch.cat([context, queries]).index_select(0, seq.gather(source))  # [T, Dp]
        x = run_packed_blocks(self.predictor_blocks, x, seq, self.grad_checkpointing)
        is_query = seq.cols >= width
        x = self.predictor_proj(self.predictor_norm(x[is_query]))  # [Tq, D]
        where = seq.rows[is_query] * num_targets + seq.cols[is_query] - width
        out = x.new_zeros(batch * num_blocks * num_targets, self.encoder_dim)
        out = out.index_copy(0, where, x)
        return out.reshape(batch, num_blocks, num_targets, self.encoder_dim)


def build_predictor(config: PredictorConfig, encoder: Any) -> VisionTransformerPredictor:
    """The registered factory: the predictor for `encoder` (its width D, heads, patch grid
    of rank 2 or 3, and for 3D grids its `uniform_power`, default False as V-JEPA's)."""
    grid = tuple(int(g) for g in encoder.patch_grid)
    uniform_power = bool(getattr(encoder, "uniform_power", False))
    heads = resolve_num_heads(config, int(encoder.num_heads), grid, uniform_power)
    return VisionTransformerPredictor(
        encoder_dim=int(encoder.embed_dim), patch_grid=grid,
        embed_dim=config.embed_dim, depth=config.depth, num_heads=heads,
        mlp_ratio=config.mlp_ratio, drop_path_rate=config.drop_path_rate,
        attention=config.attention, num_mask_tokens=config.num_mask_tokens,
        uniform_power=uniform_power, depth_scaled_init=config.depth_scaled_init)
