"""Packed variable-length sequences through timm blocks (`MaskBatch.packed`).

A padded batch [S, L] with a validity mask becomes one stream of its T valid tokens, [T, D],
in row-major order. Every layer that works token by token (the norms, qkv, the attention
projection, the MLP, layer scale, the heads) then runs on the T valid tokens only: no compute
on padding. Attention is the one layer that mixes tokens; it runs on the sequences
re-padded to the longest valid length W <= L, with padded keys masked out (CPU SDPA has no
variable-length kernel, and torch's jagged nested tensors fall back to a per-sequence loop,
~50x slower here). Its products are a small part of a ViT step (4 W D against 24 D^2 FLOPs
per token and block: ~1% for ViT-H/14, ~6% for its 384-wide predictor).

The results equal the padded computation's at the valid positions, loss and gradients
included, up to float rounding (tests/test_packing.py). Stochastic depth drops whole samples,
as timm does on padded rows; timm's DropPath on a [T, D] stream would drop tokens, so it is
applied per sequence here.

    packing = Packing(valid)               # valid [S, L] bool
    x = packing.gather(padded)             # [S, L, D] -> [T, D]
    x = run_packed_blocks(blocks, x, packing, grad_checkpointing=False)
    out = packing.scatter(x, L)            # [T, D] -> [S, L, D], zeros at padding
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import Attention, Block
from torch import nn
from torch.utils.checkpoint import checkpoint


class Packing:
    """Where the valid tokens of a padded [S, L] batch lie in the packed [T] stream.

    rows, cols [T] int64: each packed token's sequence and column in the padded layout;
    lengths [S] int64: valid tokens per sequence; width W: the longest; slot [T] int64: each
    token's place among the valid tokens of its sequence (= cols when validity is a prefix);
    key_mask [S, 1, 1, W] bool: the attention mask of the re-padded sequences.
    """

    def __init__(self, valid: torch.Tensor):
        if valid.dtype != torch.bool or valid.dim() != 2:
            raise TypeError(f"a validity mask must be [S, L] bool, got {valid.dtype} "
                            f"{tuple(valid.shape)}")
        self.shape = tuple(valid.shape)
        self.rows, self.cols = valid.nonzero(as_tuple=True)
        self.lengths = valid.sum(1)
        self.slot = (valid.cumsum(1) - 1)[self.rows, self.cols]
        self.width = int(self.lengths.max()) if valid.numel() else 0
        slots = torch.arange(self.width, device=valid.device)
        self.key_mask = (slots < self.lengths[:, None])[:, None, None, :]

    @property
    def num_tokens(self) -> int:
        return int(self.rows.shape[0])

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        """[S, L, ...] -> [T, ...]: the valid entries, row-major."""
        return padded[self.rows, self.cols]

    def scatter(self, packed: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """[T, ...] -> [S, length (L), ...], zeros at padding."""
        out = packed.new_zeros(self.shape[0], length or self.shape[1], *packed.shape[1:])
        return out.index_put((self.rows, self.cols), packed)

    def repad(self, packed: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [S, W, ...]: each sequence's valid tokens first, zeros after."""
        out = packed.new_zeros(self.shape[0], self.width, *packed.shape[1:])
        return out.index_put((self.rows, self.slot), packed)

    def unpad(self, repadded: torch.Tensor) -> torch.Tensor:
        """[S, W, ...] -> [T, ...], the inverse of `repad`."""
        return repadded[self.rows, self.slot]


def supports_packing(blocks: nn.ModuleList) -> bool:
    """Whether `packed_block` mirrors every block exactly: timm's plain Block and Attention."""
    return all(type(b) is Block and type(b.attn) is Attention for b in blocks)


def packed_attention(attn: Attention, x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """timm's Attention.forward on a packed stream x [T, C] -> [T, C]."""
    tokens = x.shape[0]
    gate = getattr(attn, "gate", None)
    gate = gate(x).sigmoid() if gate is not None else None
    qkv = attn.qkv(x).reshape(tokens, 3, attn.num_heads, attn.head_dim)
    q, k, v = packing.repad(qkv).permute(2, 0, 3, 1, 4).unbind(0)  # [S, H, W, hd] each
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=packing.key_mask,
            dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        scores = scores.masked_fill(~packing.key_mask, float("-inf"))
        out = attn.attn_drop(scores.softmax(dim=-1)) @ v
    out = packing.unpad(out.transpose(1, 2)).reshape(tokens, -1)  # [T, H * hd]
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def drop_path_rows(module: nn.Module, x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """`module` (DropPath or Identity) applied per sequence, not per token, to x [T, C]."""
    if not isinstance(module, DropPath) or module.drop_prob == 0.0 or not module.training:
        return module(x)
    keep_prob = 1.0 - module.drop_prob
    keep = x.new_empty(packing.shape[0]).bernoulli_(keep_prob)  # timm: the global RNG too
    if module.scale_by_keep and keep_prob > 0.0:
        keep.div_(keep_prob)
    return x * keep[packing.rows, None]


def packed_block(block: Block, x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """timm's Block.forward on a packed stream x [T, C] -> [T, C]."""
    attended = block.ls1(packed_attention(block.attn, block.norm1(x), packing))
    x = x + drop_path_rows(block.drop_path1, attended, packing)
    return x + drop_path_rows(block.drop_path2, block.ls2(block.mlp(block.norm2(x))), packing)


def run_packed_blocks(blocks: nn.ModuleList, x: torch.Tensor, packing: Packing,
                      grad_checkpointing: bool) -> torch.Tensor:
    """`apply_blocks` for a packed stream; with grad_checkpointing, recompute in backward."""
    for block in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(packed_block, block, x, packing, use_reentrant=False)
        else:
            x = packed_block(block, x, packing)
    return x
