"""The cost model of an I-JEPA step: FLOPs and memory, as pure functions of shapes.

Conventions, and how they meet the project reference ("Cost model"):

- FLOPs count a multiply-add as 2, the convention of the GPUs' peak TFLOP/s figures.
- Counted: the matmuls (qkv, attention projection, MLP, the predictor's in/out projections), the
  two attention products QK^T and AV, and the patch embedding (a linear map of C*p*p pixels).
  Not counted: norms, softmax, GELU, adds, the optimizer and the EMA (together well under 1%).
- Per block and token: 2 * (4 D^2 + 2 r D^2) for the linears plus 2 * 2 * S * D for attention
  over a sequence of S tokens. ViT-H/14 at 224 px (L=32, D=1280, r=4, S=256) comes to
  322.1 (linears) + 10.7 (attention) + 0.4 (patch embedding) = 333.2 GFLOP per image, the
  reference's "333"; torch.utils.flop_counter agrees to the MFLOP (tests/test_plan.py).
- A backward pass costs twice its forward (gradients of inputs and of weights), so a trained
  module costs 3x its forward. The patch embedding needs no input gradient: 2x.
- One I-JEPA step, per image: the target encoder forward on all N patches (no grad), the context
  encoder forward + backward on Nc tokens (the patch embedding still runs on all N patches:
  positions are added before tokens are dropped), and the predictor forward + backward on M
  sequences of Nc + Nt tokens, plus its D -> Dp projection of the Nc context tokens (once per
  image) and its Dp -> D projection of the M * Nt predictions. With Nc = 69 and Nt = 43 (the
  official sampler on a 16x16 grid at batch 128) this gives 333 + 263 + 61 = 657 GFLOP against
  the reference's 333 + 257 + 62 = 652.

Memory is in bytes; see `state_bytes` and `activation_bytes` for what is counted.
"""

from __future__ import annotations

import attrs

FLOPS_PER_MAC = 2
FP32 = 4  # bytes
BACKWARD_FACTOR = 2.0  # backward FLOPs / forward FLOPs for a module whose inputs need gradients

# Activation bytes kept for backward per token per transformer block, as multiples of the width
# D: (fixed + per_mlp_ratio * r) * D. Under bf16 autocast a timm Block (fused SDPA, fp32
# residual stream) keeps its fp32 input and the fp32 residual after attention for the two
# LayerNorms (8 D), the bf16 norm outputs that feed qkv and fc1 (4 D), q, k and v (6 D), the
# attention output that feeds proj (2 D), and the MLP hidden before and after GELU (2 x 2 r D).
# In fp32 every bf16 term doubles. Left out: norm statistics and the attention's log-sum-exp
# (16 + 4 * heads bytes per token). tests/test_plan.py measures a Block with saved-tensor hooks.
ACTIVATION_BYTES = {"bf16": (20.0, 4.0), "fp32": (32.0, 8.0)}


@attrs.frozen
class TransformerShape:
    """A stack of `depth` pre-norm blocks of width D with MLP hidden size mlp_ratio * D."""

    depth: int
    width: int
    mlp_ratio: float = 4.0


def linear_flops(tokens: float, d_in: int, d_out: int) -> float:
    """FLOPs of a dense layer d_in -> d_out applied to `tokens` tokens."""
    return FLOPS_PER_MAC * tokens * d_in * d_out


def block_flops(width: int, mlp_ratio: float, seq_len: float) -> float:
    """Forward FLOPs of one transformer block on one sequence of `seq_len` tokens:
    seq_len * 2 * (4 D^2 + 2 r D^2) for qkv, proj, fc1, fc2, plus 2 * 2 * seq_len^2 * D for
    QK^T and AV (summed over heads)."""
    linears = FLOPS_PER_MAC * (4 + 2 * mlp_ratio) * width * width
    attention = 2 * FLOPS_PER_MAC * seq_len * width
    return seq_len * (linears + attention)


def transformer_flops(shape: TransformerShape, seq_len: float) -> float:
    """Forward FLOPs of all blocks of `shape` on one sequence of `seq_len` tokens."""
    return shape.depth * block_flops(shape.width, shape.mlp_ratio, seq_len)


def patch_embed_flops(num_patches: int, patch_dim: int, width: int) -> float:
    """Forward FLOPs of the patch embedding: `num_patches` patches of `patch_dim` = C * p * p
    pixel values each, mapped to `width`."""
    return linear_flops(num_patches, patch_dim, width)


def vit_forward_flops(shape: TransformerShape, num_patches: int, patch_dim: int) -> float:
    """Forward FLOPs of a ViT on one image of `num_patches` patches (patch embedding + blocks)."""
    return patch_embed_flops(num_patches, patch_dim, shape.width) + transformer_flops(
        shape, num_patches)


@attrs.frozen
class StepFlops:
    """FLOPs of one I-JEPA training step, per image."""

    target: float  # target encoder forward on all patches (no grad)
    context: float  # context encoder forward + backward on the context tokens
    predictor: float  # predictor forward + backward, all target blocks

    @property
    def total(self) -> float:
        """FLOPs of the whole step per image: target + context + predictor."""
        return self.target + self.context + self.predictor


def ijepa_step_flops(encoder: TransformerShape, predictor: TransformerShape, *,
                     num_patches: int, patch_dim: int, context_tokens: float,
                     target_tokens: float, num_targets: int) -> StepFlops:
    """FLOPs per image of one training step (see the module docstring for what is counted).

    num_patches N: patches per image; patch_dim: C * p * p; context_tokens Nc: tokens the
    context encoder sees; target_tokens Nt: tokens per target block; num_targets M: blocks.
    """
    train = 1 + BACKWARD_FACTOR
    embed = patch_embed_flops(num_patches, patch_dim, encoder.width)
    target = embed + transformer_flops(encoder, num_patches)
    context = 2 * embed + train * transformer_flops(encoder, context_tokens)
    d, dp = encoder.width, predictor.width
    pred_forward = (linear_flops(context_tokens, d, dp)
                    + num_targets * transformer_flops(predictor, context_tokens + target_tokens)
                    + linear_flops(num_targets * target_tokens, dp, d))
    return StepFlops(target, context, train * pred_forward)


def sets_step_flops(per_set: list[StepFlops]) -> StepFlops:
    """One step over several mask sets (V-JEPA), from each set's `ijepa_step_flops`: the
    target encoder runs once for every set; each set adds its own context encoder pass and
    predictor pass."""
    return StepFlops(per_set[0].target, sum(f.context for f in per_set),
                     sum(f.predictor for f in per_set))


def achieved_fraction(images_per_s: float, flops_per_image: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: useful FLOP/s over the device's peak FLOP/s (both per device)."""
    return images_per_s * flops_per_image / peak_flops


def run_seconds(total_images: float, flops_per_image: float, devices: int, peak_flops: float,
                utilisation: float) -> float:
    """Wall-clock seconds to train on `total_images` images on `devices` devices running at
    `utilisation` of `peak_flops` FLOP/s each."""
    return total_images * flops_per_image / (devices * peak_flops * utilisation)


# -- memory ------------------------------------------------------------------------------
def state_bytes(trainable: int, frozen: int, target: int, *, ddp_buckets: bool = False,
                shards: int = 1, bf16: bool = False) -> dict[str, float]:
    """Bytes per device of the model and optimizer state, all fp32 (autocast keeps fp32
    weights): parameters (trainable + frozen, of encoder and predictor), their gradients,
    AdamW's two moments, the target encoder's copy, DDP's gradient buckets (DDP copies
    gradients into flat buckets for the all-reduce: one more gradient-sized buffer), and with
    `bf16` the bf16 copies autocast makes of the trainable weights, which autograd keeps for
    the backward pass. `shards`: devices that share the state (FSDP, roughly); 1 for DDP."""
    out = {
        "parameters": FP32 * (trainable + frozen) / shards,
        "gradients": FP32 * trainable / shards,
        "AdamW moments": 2 * FP32 * trainable / shards,
        "target encoder": FP32 * target / shards,
    }
    if ddp_buckets:
        out["DDP gradient buckets"] = FP32 * trainable
    if bf16:
        out["bf16 weight copies"] = 2 * trainable / shards
    return out


def block_activation_bytes(width: int, mlp_ratio: float, precision: str = "bf16") -> float:
    """Bytes kept for backward per token by one transformer block (see ACTIVATION_BYTES)."""
    fixed, per_ratio = ACTIVATION_BYTES[precision]
    return (fixed + per_ratio * mlp_ratio) * width


def activation_bytes(encoder: TransformerShape, predictor: TransformerShape, *, batch: int,
                     num_patches: int, context_tokens: float, target_tokens: float,
                     num_targets: int, precision: str = "bf16") -> dict[str, float]:
    """Peak bytes of activations per device for one micro-batch of `batch` images, at the start
    of the backward pass: what the context encoder and the predictor keep for backward, plus
    the fp32 target features ([b, N, D] layer-normed output and the gathered [b, M, Nt, D]
    targets) and the fp32 predictions. The target encoder runs under no_grad and keeps nothing.
    Not counted: temporaries inside one block, the CUDA context (~0.5 GiB), allocator slack."""
    enc = encoder.depth * block_activation_bytes(encoder.width, encoder.mlp_ratio, precision)
    pred = predictor.depth * block_activation_bytes(predictor.width, predictor.mlp_ratio,
                                                    precision)
    predicted = batch * num_targets * target_tokens * encoder.width
    return {
        "context encoder activations": batch * context_tokens * enc,
        "predictor activations": batch * num_targets * (context_tokens + target_tokens) * pred,
        "targets and predictions": FP32 * (batch * num_patches * encoder.width + 2 * predicted),
    }


def sets_activation_bytes(encoder: TransformerShape, predictor: TransformerShape, *, batch: int,
                          num_patches: int, sets: list[tuple[float, float, int]],
                          precision: str = "bf16") -> dict[str, float]:
    """`activation_bytes` of one step over several mask sets (V-JEPA), each set (Nc, Nt, M):
    the loss averages the sets before one backward pass, so every set's context encoder and
    predictor activations are kept at once; the [b, N, D] target features are held once."""
    per_set = [activation_bytes(encoder, predictor, batch=batch, num_patches=num_patches,
                                context_tokens=nc, target_tokens=nt, num_targets=m,
                                precision=precision) for nc, nt, m in sets]
    total = {key: sum(b[key] for b in per_set) for key in per_set[0]}
    total["targets and predictions"] -= ((len(sets) - 1) * FP32 * batch * num_patches
                                         * encoder.width)
    return total
