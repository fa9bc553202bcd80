"""The I-JEPA encoder: a timm VisionTransformer without cls token, with fixed 2D sin-cos positions.

`build_encoder(ViTConfig)` creates the timm model by name and keeps its submodules under their
own names (`pos_embed`, `patch_embed.*`, `norm_pre`, `blocks.N.*`, `norm.*`), so our state dict
is exactly the state dict of

    timm.create_model(**timm_kwargs(config))

and loads into it strictly (and the other way round). What changes is the forward: tokens are
dropped after the positional embeddings are added, and padded tokens can be masked out as keys.

    encoder = build_encoder(ViTConfig(model="vit_huge_patch14_gap_224"))
    tokens = encoder(images, keep=context_idx)  # [B, K, D]
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from jepa_core.errors import ConfigError
from jepa_vit.configs import ViTConfig
from jepa_vit.packing import Packing, run_packed_blocks, supports_packing, take
from jepa_vit.pos_embed import sincos_table


def apply_blocks(blocks: nn.ModuleList, x: torch.Tensor, attn_mask: torch.Tensor | None,
                 grad_checkpointing: bool) -> torch.Tensor:
    """Run transformer blocks in order; with grad_checkpointing, recompute them in backward."""
    for block in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=attn_mask)
    return x

INIT_STD = 0.02


def trunc_normal(tensor: torch.Tensor) -> None:
    """Fill with N(0, 0.02^2) truncated to [-2, 2] (absolute bounds, i.e. 100 std: in effect
    an untruncated normal), the convention of the I-JEPA and timm code, in place."""
    nn.init.trunc_normal_(tensor, std=INIT_STD, a=-2.0, b=2.0)


# Fixed create_model arguments: no classifier, no cls or register tokens, the final norm
# before pooling (fc_norm=False, as in timm's *_gap_* I-JEPA models), a fixed image size.
_FIXED_TIMM_KWARGS: dict[str, Any] = dict(
    pretrained=False, num_classes=0, class_token=False, reg_tokens=0, global_pool="avg",
    fc_norm=False, dynamic_img_size=False,
)


def timm_kwargs(config: ViTConfig) -> dict[str, Any]:
    """The `timm.create_model` arguments (model_name included) of a timm model whose state dict
    has the same keys and shapes as `build_encoder(config)`'s. Used to export to plain timm."""
    kwargs: dict[str, Any] = dict(model_name=config.model, **_FIXED_TIMM_KWARGS)
    for field in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
        value = getattr(config, field)
        if value is not None:
            kwargs[field] = value
    kwargs["drop_path_rate"] = config.drop_path_rate
    return kwargs


def init_vit_weights(module: nn.Module) -> None:
    """The I-JEPA init, in place: Linear (and the patch-embedding Conv2d or the tubelet
    Conv3d, linear maps of patches) weights trunc-normal std 0.02, their biases 0; LayerNorm
    weight 1, bias 0. Skipped on the meta device (nothing to fill)."""
    if any(p.is_meta for p in module.parameters()):
        return
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                trunc_normal(sub.weight)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)
            elif isinstance(sub, nn.LayerNorm) and sub.elementwise_affine:
                nn.init.ones_(sub.weight)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)


def scale_residual_projections(blocks: Any) -> None:
    """The official I-JEPA and V-JEPA models' `fix_init_weight`, in place, after the init:
    the weights of block l's attention output projection and second MLP layer (the two maps
    into the residual stream, l = 1 .. depth) divided by sqrt(2 l). Skipped on the meta device."""
    with torch.no_grad():
        for layer, block in enumerate(blocks, start=1):
            for weight in (block.attn.proj.weight, block.mlp.fc2.weight):
                if not weight.is_meta:
                    weight.div_(math.sqrt(2.0 * layer))


def set_attention(module: nn.Module, attention: str) -> None:
    """attention="math" switches every timm attention below `module` to the explicit
    softmax(QK^T)V path (the slow baseline); "auto" keeps timm's choice (fused SDPA)."""
    if attention == "math":
        for sub in module.modules():
            if hasattr(sub, "fused_attn"):
                sub.fused_attn = False


def key_padding_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """[B, K] bool (False = padding) -> [B, 1, 1, K] bool attention mask (True = may attend),
    broadcast over heads and queries; None stays None (the fastest path)."""
    if valid is None:
        return None
    if valid.dtype != torch.bool:
        raise TypeError(f"a validity mask must be bool, got {valid.dtype}")
    return valid[:, None, None, :]


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D], index [B, K] int64 in [0, N) -> [B, K, D], in the order of `index`."""
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


class ViTEncoder(nn.Module):
    """A timm VisionTransformer's parts with the I-JEPA forward (see the module docstring).

    Attributes: embed_dim D, num_heads, image_size (H, W) px, patch_grid (gh, gw),
    num_patches N = gh * gw, grad_checkpointing (recompute each block in backward).
    Parameters: `pos_embed` [1, N, D] (frozen sin-cos, requires_grad=False, or learned),
    `patch_embed.*`, `blocks.N.*`, `norm.*` -- timm's names.

    The grid is the patch embedding's `grid_size`, of any rank the sin-cos tables know: a
    tubelet embedding's (t, h, w) makes the video encoder (`jepa_video.encoder`), whose 3D
    table follows `uniform_power`.
    """

    def __init__(self, vit: VisionTransformer, *, pos_embed: str = "sincos",
                 attention: str = "auto", uniform_power: bool = False):
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.embed_dim = int(vit.embed_dim)
        self.num_heads = int(vit.blocks[0].attn.num_heads)
        self.image_size = tuple(int(s) for s in vit.patch_embed.img_size)
        self.patch_grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        self.num_patches = math.prod(self.patch_grid)
        self.uniform_power = uniform_power
        self.grad_checkpointing = False
        self.pos_embed = self._make_pos_embed(vit, pos_embed)
        set_attention(self, attention)

    def _make_pos_embed(self, vit: VisionTransformer, kind: str) -> nn.Parameter:
        """[1, N, D]: the fixed sin-cos table (frozen parameter, so the key and the frozen
        status match timm and the official checkpoints) or timm's learned table."""
        ref = vit.patch_embed.proj.weight
        if kind == "sincos":
            table = sincos_table(self.embed_dim, self.patch_grid,
                                 uniform_power=self.uniform_power, device=ref.device)
            return nn.Parameter(table[None].to(ref.dtype), requires_grad=False)
        if vit.pos_embed is None:
            raise ConfigError("this timm model has no positional embedding; use pos_embed: sincos")
        trunc_normal(vit.pos_embed)
        return vit.pos_embed

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] -> [B, N, D] patch embeddings plus positional embeddings.

        No cast: under autocast the sum is promoted to the table's float32, so the residual
        stream stays float32 (as in timm and the reference code) while matmuls run in bf16."""
        return self.patch_embed(images) + self.pos_embed

    def run_blocks(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, K, D], attn_mask [B, 1, 1, K] bool | None -> [B, K, D] after all blocks."""
        return apply_blocks(self.blocks, x, attn_mask, self.grad_checkpointing)

    @property
    def supports_packing(self) -> bool:
        """Whether forward takes pack=True: all blocks are timm's plain Block."""
        return supports_packing(self.blocks)

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None,
                keep_valid: torch.Tensor | None = None, *, pack: bool = False) -> torch.Tensor:
        """images [B, C, H, W]; keep [B, K] int64 patch indices (None: all N, in grid order);
        keep_valid [B, K] bool, False marks padding, ignored as attention keys (None: all valid).
        pack: run only the valid tokens, packed without padding (`jepa_vit.packing`; needs
        keep and keep_valid): the same values, less compute.
        Returns [B, K, D] final-normed tokens; outputs at padded positions are meaningless."""
        if pack and keep is not None and keep_valid is not None:
            return self.forward_packed(images, keep, keep_valid)
        x = self.embed(images)
        if keep is not None:
            x = gather_tokens(x, keep)
        x = self.norm_pre(x)
        x = self.run_blocks(x, key_padding_mask(keep_valid))
        return self.norm(x)

    def layer_tokens(self, images: torch.Tensor, n: int) -> list[torch.Tensor]:
        """The outputs [B, N, D] of the last n blocks on all patches, oldest first, each
        through the final norm (the last one equals `forward(images)`): the "last4" features
        of `jepa eval`."""
        x = self.norm_pre(self.embed(images))
        outs = []
        first = len(self.blocks) - n
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= first:
                outs.append(self.norm(x))
        return outs

    def forward_packed(self, images: torch.Tensor, keep: torch.Tensor,
                       keep_valid: torch.Tensor) -> torch.Tensor:
        """`forward` with pack=True: [B, K, D], zeros at padded positions."""
        packing = Packing(keep_valid)
        patches = packing.rows * self.num_patches + packing.gather(keep)  # [T] in B * N
        x = take(self.embed(images).flatten(0, 1), patches)  # [T, D]
        x = self.norm_pre(x)
        x = run_packed_blocks(self.blocks, x, packing, self.grad_checkpointing)
        return packing.scatter(self.norm(x))

    def to_timm_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under timm's key names (identical to ours): loads strictly into
        `timm.create_model(**timm_kwargs(config))`."""
        return self.state_dict()


def _check_model_name(name: str) -> None:
    """ConfigError unless `name` (optionally with a `.tag`) is a timm VisionTransformer."""
    arch = name.split(".", 1)[0]
    if arch in timm.list_models(module="vision_transformer"):
        return
    if arch in timm.list_models():
        raise ConfigError(
            f"timm model {name!r} is not a plain VisionTransformer; the vit encoder needs one "
            f"from timm's vision_transformer module (e.g. vit_huge_patch14_gap_224)")
    close = difflib.get_close_matches(arch, timm.list_models(module="vision_transformer"), n=5)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ConfigError(f"timm has no model named {name!r}.{hint} See timm.list_models('vit_*').")


def _check_shapes(config: ViTConfig) -> None:
    """Catch the shape mistakes timm would report as bare assertions."""
    if config.img_size is not None and config.patch_size is not None:
        if config.img_size % config.patch_size:
            raise ConfigError(
                f"img_size {config.img_size} is not a multiple of patch_size "
                f"{config.patch_size}; the border would be dropped. Pick a multiple.")


def _create_timm(config: ViTConfig) -> VisionTransformer:
    """The timm model of `config` (our init follows, so timm's own init is skipped)."""
    _check_model_name(config.model)
    _check_shapes(config)
    kwargs = timm_kwargs(config)
    try:
        vit = timm.create_model(**kwargs, weight_init="skip")
    except (AssertionError, TypeError, ValueError) as err:
        raise ConfigError(
            f"timm could not build {config.model!r} with {kwargs}: {err}. When overriding "
            f"embed_dim, also set num_heads to a divisor of it.") from err
    if not isinstance(vit, VisionTransformer):
        raise ConfigError(f"timm model {config.model!r} is not a VisionTransformer")
    return vit


def wrap_timm_vit(vit: VisionTransformer, *, pos_embed: str = "sincos",
                  attention: str = "auto", name: str = "model") -> ViTEncoder:
    """Our encoder around an already created timm ViT (class_token=False, no register tokens).

    Raises ConfigError if the wrapper would drop any of the model's state (a cls token, ...),
    or if the width does not suit 2D sin-cos embeddings."""
    if pos_embed == "sincos" and vit.embed_dim % 4:
        raise ConfigError(
            f"{name}: 2D sin-cos positions need embed_dim divisible by 4 (got {vit.embed_dim})")
    encoder = ViTEncoder(vit, pos_embed=pos_embed, attention=attention)
    ours, theirs = set(encoder.state_dict()), set(vit.state_dict())
    if ours != theirs:
        raise ConfigError(
            f"timm model {name!r} has state the I-JEPA encoder does not use "
            f"({sorted(theirs - ours)[:5]}); cls/register tokens and heads are not supported")
    init_vit_weights(encoder)
    return encoder


def build_encoder(config: ViTConfig) -> ViTEncoder:
    """The registered factory: ViTConfig -> ViTEncoder (an `Encoder`). Honours the ambient
    device (e.g. `with torch.device("meta"):` to count parameters without allocating)."""
    vit = _create_timm(config)
    encoder = wrap_timm_vit(vit, pos_embed=config.pos_embed, attention=config.attention,
                            name=config.model)
    if config.depth_scaled_init:
        scale_residual_projections(encoder.blocks)
    encoder.timm_model = _export_spec(config)
    return encoder


def _export_spec(config: ViTConfig) -> tuple[str, dict[str, Any]]:
    """(timm model name, create_model kwargs) for `jepa export`: the architecture only."""
    kwargs = timm_kwargs(config)
    name = kwargs.pop("model_name")
    for training_only in ("pretrained", "drop_path_rate"):  # not architecture
        kwargs.pop(training_only)
    return name, kwargs
