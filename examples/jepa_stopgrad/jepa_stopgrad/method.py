"""The method: an ablation of I-JEPA that drops the EMA teacher.

    encoder(all patches) → layer norm → gather target blocks → detach: the targets
    encoder(context patches) → predictor → loss(predictions, targets)

It owns two modules, both trained; `jepa eval` probes the encoder. Everything else (the
optimizer, accumulation, DDP, checkpoints, resume, logging) is the core's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jepa_core.interfaces import MethodOutput


def gather_blocks(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D], idx [B, M, Nt] → [B, M, Nt, D]."""
    b, m, nt = idx.shape
    flat = idx.reshape(b, m * nt, 1).expand(-1, -1, tokens.shape[-1])
    return torch.gather(tokens, 1, flat).reshape(b, m, nt, tokens.shape[-1])


class StopGradJEPA:
    trainable = ("encoder", "predictor")  # what the optimizer trains, in this order
    eval_module = "encoder"  # what `jepa eval` probes and `jepa export` writes
    views = ("image",)  # one view per sample

    def __init__(self, config, parts):
        self.config = config
        with parts.seeded_init():  # reproducible init; the encoder first
            encoder = parts.build("encoder")
            predictor = parts.build("predictor", encoder=encoder)
        self.modules = {"encoder": encoder, "predictor": predictor}
        self.prediction_loss = parts.build("loss")

    def loss(self, modules, batch) -> MethodOutput:
        masks = batch.mask  # the recipe's masker: one mask set
        with torch.no_grad():  # the stop-gradient: no teacher, no second copy
            h = modules["encoder"](batch.images).float()  # [B, N, D]
            if self.config.normalise_targets:
                h = F.layer_norm(h, (h.shape[-1],))
            targets = gather_blocks(h, masks.targets)
        z = modules["encoder"](batch.images, masks.context, masks.context_valid)
        # padded target blocks (masks.targets_valid) go to the predictor and the loss
        padded = {} if masks.targets_valid is None else {"targets_valid": masks.targets_valid}
        pred = modules["predictor"](z, masks.context, masks.targets, masks.context_valid,
                                    **padded)
        valid = {} if masks.targets_valid is None else {"valid": masks.targets_valid}
        loss = self.prediction_loss(pred.float(), targets, **valid)
        # each named metric is logged on its own in metrics.jsonl; features feed the
        # representation-health figures (std across the batch, effective rank)
        return MethodOutput(loss, {"prediction": loss.detach()}, features=h.mean(dim=1))

    def after_step(self, step: int) -> None:
        """Nothing to update: there is no teacher."""

    def schedule_metrics(self, step: int) -> dict:
        return {}


def build(config, parts) -> StopGradJEPA:
    """The factory named in plugin.py: factory(config, parts=MethodParts)."""
    return StopGradJEPA(config, parts)
