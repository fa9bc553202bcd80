"""Packed variable-length sequences through timm blocks (`MaskBatch.packed`).

A padded batch [S, L] with a validity mask becomes one stream of its T valid tokens, [T, D]:
the sequences one after the other, shortest first (ties by row), each sequence's tokens in
column order. Every layer that works token by token (the norms, qkv, the attention
projection, the MLP, layer scale, the heads) runs on the T valid tokens only: no compute on
padding. Attention, the one layer that mixes tokens, runs per bucket of sequences of similar
length: at most BUCKETS consecutive runs of the sorted sequences, each re-padded to its own
longest (no mask where a bucket's lengths are equal), so attention spends little on padding
and needs a few SDPA calls per block. (On the CPU, SDPA has no variable-length kernel; torch's
jagged nested tensors loop over the sequences there, ~50x slower; one SDPA call per
distinct length costs more in call overhead than it saves; a block-diagonal mask over the
batch is O(T^2).)

The results equal the padded computation's at the valid positions, loss and gradients
included, up to float rounding (tests/test_packing.py). Stochastic depth drops whole samples,
as timm does on padded rows; timm's DropPath on a [T, D] stream would drop tokens, so it is
applied per sequence here.

    packing = Packing(valid)               # valid [S, L] bool
    x = packing.gather(padded)             # [S, L, D] -> [T, D]
    x = run_packed_blocks(blocks, x, packing, grad_checkpointing=False)
    out = packing.scatter(x)               # [T, D] -> [S, L, D], zeros at padding
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import Attention, Block
from torch import nn
from torch.utils.checkpoint import checkpoint

BUCKETS = 4  # attention buckets per packed batch (SDPA calls per block)


class _Take(torch.autograd.Function):
    """x.index_select(0, index) for indices without repeats, whose backward is an
    index_copy into zeros (index_select's own backward, an index_add, is several times
    slower on the CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.rows, *grad.shape[1:])
        return out.index_copy_(0, index, grad), None


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [R, ...] -> [len(index), ...]: rows `index` of x, no index repeated."""
    return _Take.apply(x, index)


@attrs.frozen(eq=False)
class Bucket:
    """n consecutive sequences of the stream (`tokens` tokens in all), attended as a padded
    [n, width] batch: `index` [tokens] int64 places each token in the flattened [n * width]
    layout; `key_mask` [n, 1, 1, width] bool, None when all n have `width` tokens."""

    tokens: int
    n: int
    width: int
    index: torch.Tensor
    key_mask: torch.Tensor | None


class Packing:
    """Where the valid tokens of a padded [S, L] batch lie in the packed [T] stream.

    rows, cols [T] int64: each packed token's sequence and column in the padded layout;
    flat [T] int64: rows * L + cols; lengths [S] int64: valid tokens per sequence;
    buckets: the attention buckets (`Bucket`), covering the stream in order.
    """

    def __init__(self, valid: torch.Tensor, buckets: int = BUCKETS):
        if valid.dtype != torch.bool or valid.dim() != 2:
            raise TypeError(f"a validity mask must be [S, L] bool, got {valid.dtype} "
                            f"{tuple(valid.shape)}")
        self.shape = tuple(valid.shape)
        self.lengths = valid.sum(1)
        order = torch.sort(self.lengths, stable=True).indices
        ranked, self.cols = valid[order].nonzero(as_tuple=True)  # ranked: place in `order`
        self.rows = order[ranked]
        self.flat = self.rows * self.shape[1] + self.cols
        slot = (valid.cumsum(1) - 1).flatten().index_select(0, self.flat)  # rank in its row
        self.buckets = self._buckets(self.lengths[order].tolist(), ranked, slot, buckets)

    @staticmethod
    def _buckets(lengths: list[int], ranked: torch.Tensor, slot: torch.Tensor,
                 count: int) -> list[Bucket]:
        """Up to `count` runs of the sorted sequences with about equal numbers of sequences
        (empty sequences left out: they have no tokens)."""
        first = next((i for i, n in enumerate(lengths) if n), len(lengths))
        rows = len(lengths) - first
        cuts = sorted({first + (rows * k) // count for k in range(count)} | {len(lengths)})
        out, start = [], 0
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            n, width = hi - lo, lengths[hi - 1]
            tokens = sum(lengths[lo:hi])
            part = slice(start, start + tokens)
            index = (ranked[part] - lo) * width + slot[part]
            mask = None
            if lengths[lo] != width:
                have = torch.tensor(lengths[lo:hi], device=ranked.device)
                mask = (torch.arange(width, device=ranked.device) < have[:, None])[:, None, None]
            out.append(Bucket(tokens, n, width, index, mask))
            start += tokens
        return out

    @property
    def num_tokens(self) -> int:
        return int(self.rows.shape[0])

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        """[S, L, ...] -> [T, ...]: the valid entries, in stream order."""
        return take(padded.flatten(0, 1), self.flat)

    def scatter(self, packed: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [S, L, ...], zeros at padding."""
        out = packed.new_zeros(self.shape[0] * self.shape[1], *packed.shape[1:])
        return out.index_copy(0, self.flat, packed).unflatten(0, self.shape)


def supports_packing(blocks: nn.ModuleList) -> bool:
    """Whether `packed_block` mirrors every block exactly: timm's plain Block and Attention."""
    return all(type(b) is Block and type(b.attn) is Attention for b in blocks)


def packed_attention(attn: Attention, x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """timm's Attention.forward on a packed stream x [T, C] -> [T, C], bucket by bucket."""
    gate = getattr(attn, "gate", None)
    gate = gate(x).sigmoid() if gate is not None else None
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(x.shape[0], 3, heads, head_dim)
    dropout = attn.attn_drop.p if attn.training else 0.0
    outs = []
    # split, not slices: its backward is one cat, a slice's backward a zero-filled [T, 3C] each
    for part, b in zip(qkv.split([b.tokens for b in packing.buckets]), packing.buckets,
                       strict=True):
        if b.key_mask is not None:  # index_copy / index_select: cheap backward passes
            part = part.new_zeros(b.n * b.width, 3, heads, head_dim).index_copy(0, b.index, part)
        q, k, v = part.view(b.n, b.width, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if attn.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=b.key_mask,
                                                 dropout_p=dropout)
        else:
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            if b.key_mask is not None:
                scores = scores.masked_fill(~b.key_mask, float("-inf"))
            out = attn.attn_drop(scores.softmax(dim=-1)) @ v
        out = out.transpose(1, 2).reshape(b.n * b.width, heads * head_dim)
        outs.append(out if b.key_mask is None else take(out, b.index))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]  # [T, H * hd]
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
