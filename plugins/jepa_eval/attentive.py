"""The attentive probe of V-JEPA on cached token features: one learnable query (truncated
normal, std 0.02) cross-attends to the frozen tokens, an MLP block follows (pre-norm, with
residuals), then a linear head. A grid of (learning rate, weight decay) probes trains in one
pass over the cache; the best is picked on held-out training rows.

Raw pixels' tokens carry no position, so on them the pooler sees a bag of patches: a weak
baseline by construction, stated with the results."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jepa_core.interfaces import EvalContext
from jepa_core.seeding import generator
from jepa_eval.common import need_images
from jepa_eval.configs import AttentiveConfig
from jepa_eval.heads import grid, pick_best, train_heads, validation_rows


def heads_dividing(dim: int, wanted: int) -> int:
    """The largest head count <= wanted that divides dim."""
    return max(h for h in range(1, max(1, min(wanted, dim)) + 1) if dim % h == 0)


class AttentivePooler(nn.Module):
    """tokens [B, N, D] -> logits [B, C] through one query's cross-attention block."""

    def __init__(self, dim: int, num_classes: int, num_heads: int, mlp_ratio: float,
                 generator: torch.Generator):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads_dividing(dim, num_heads), batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = max(1, int(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.head = nn.Linear(dim, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() >= 2:
                    nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04, generator=generator)
                elif p is not self.query:
                    p.zero_()
            nn.init.trunc_normal_(self.query, std=0.02, a=-0.04, b=0.04, generator=generator)
            self.norm_kv.weight.fill_(1.0)
            self.norm_mlp.weight.fill_(1.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(tokens)
        q = self.query.expand(len(tokens), -1, -1)
        q = q + self.attend(q, kv)
        q = q + self.mlp(self.norm_mlp(q))
        return self.head(q[:, 0])


    def attend(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """self.attn(q, kv, kv)[0] for q [B, 1, D], kv [B, N, D], bit for bit, forward and
        backward: the same operations in the same layouts (tokens first, the key and value
        projections one matrix product), less nn.MultiheadAttention's copy of the key and
        value projections into a packed tensor and back, forward and backward."""
        attn, (b, _, d) = self.attn, kv.shape
        heads = attn.num_heads
        w_q, w_kv = attn.in_proj_weight.split([d, 2 * d])
        b_q, b_kv = attn.in_proj_bias.split([d, 2 * d])
        query = F.linear(q.transpose(0, 1), w_q, b_q)  # [1, B, D]
        keys_values = F.linear(kv.transpose(0, 1), w_kv, b_kv)  # [N, B, 2D]

        # [L, B, D] -> [B, heads, L, D/heads]; keys and values by unbind, whose backward
        # stacks their gradients (slicing would fill a zero tensor for each, every step)
        query = query.view(1, b, heads, d // heads).permute(1, 2, 0, 3)
        keys, values = (x.permute(1, 2, 0, 3) for x in
                        keys_values.view(-1, b, 2, heads, d // heads).unbind(2))
        out = F.scaled_dot_product_attention(query, keys, values)
        out = out.permute(2, 0, 1, 3).reshape(b, d)  # one query: [1, B, heads, D/heads]
        return F.linear(out, attn.out_proj.weight, attn.out_proj.bias).unsqueeze(1)


class AttentiveProbe:
    """The `attentive` protocol."""

    feature_kinds = ("tokens",)

    def __init__(self, config: AttentiveConfig):
        self.config = config

    def run(self, features: dict, context: EvalContext) -> list[dict]:
        """One result: the probe best on the held-out rows."""
        if "tokens" not in features:
            return []
        c, device = self.config, context.device
        train, test = features["tokens"]
        need_images(train, 2, "the attentive probe (probes trained on one part, the best "
                    "picked on the held-out rest)", "leave the attentive protocol out")
        dim = train.item_shape[-1]
        pairs = grid(c.lrs, c.weight_decays)
        g = generator(context.seed, "attentive-init")
        probes = nn.ModuleList(AttentivePooler(dim, context.num_classes, c.num_heads,
                                               c.mlp_ratio, g) for _ in pairs).to(device)

        def forward(x: torch.Tensor, training: bool) -> list[torch.Tensor]:
            probes.train(training)
            return [probe(x) for probe in probes]

        val = validation_rows(train, c.val_fraction, context.seed, "attentive")
        with context.progress("attentive probe", c.epochs, "epochs") as ticker:
            train_heads(probes, pairs, forward, train, val, c.epochs, c.batch_size,
                        context.seed, "attentive", device, ticker)
        best, val_acc, test_acc = pick_best(forward, train, test, val, len(pairs), device)
        lr, wd = pairs[best]
        return [{"protocol": "attentive", "feature_kind": "tokens",
                 "params": {"lr": lr, "weight_decay": wd, "epochs": c.epochs,
                            "num_heads": heads_dividing(dim, c.num_heads),
                            "probes_in_grid": len(pairs), "held_out": int(val.sum())},
                 "accuracy": {"val": val_acc, "test": test_acc}}]


def build_attentive(config: AttentiveConfig) -> AttentiveProbe:
    """Factory of the `attentive` protocol."""
    return AttentiveProbe(config)
