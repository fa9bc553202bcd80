"""Token bookkeeping shared by the masked-prediction methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D], idx [B, M, Nt] int64 → [B, M, Nt, D]: the tokens of each block."""
    b, m, nt = idx.shape
    flat = idx.reshape(b, m * nt, 1).expand(-1, -1, tokens.shape[-1])
    return torch.gather(tokens, 1, flat).reshape(b, m, nt, tokens.shape[-1])


def normalised_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Parameter-free layer norm over the feature dimension, in fp32: [B, N, D] → [B, N, D]."""
    return F.layer_norm(tokens.float(), (tokens.shape[-1],))


def pooled(tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Average over tokens, [B, K, D] → [B, D]; with `valid` [B, K] bool, over valid ones."""
    if valid is None:
        return tokens.mean(dim=1)
    w = valid.to(tokens.dtype).unsqueeze(-1)
    return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
