"""I-JEPA (Assran et al., 2023): predict, from one context block, the target encoder's
layer-normed tokens of several target blocks; the target encoder is an EMA of the encoder.

    target_encoder(all patches) → layer norm → gather target blocks          (no grad)
    encoder(context patches) → predictor(context, indices) → loss(pred, targets)
    after the optimizer step: target_encoder ← EMA(encoder)
"""

from __future__ import annotations

from typing import Any

import torch

from jepa_core.errors import ConfigError
from jepa_core.interfaces import MaskBatch, MethodOutput
from jepa_core.runtime.build import MethodParts, frozen_copy
from jepa_objectives.tokens import gather_tokens, normalised_targets


class MaskedPrediction:
    """The part of I-JEPA that its variants share: an encoder and a predictor built from the
    recipe, and the prediction of target-block tokens from a context block."""

    views = ("image",)

    def __init__(self, parts: MethodParts):
        with parts.seeded_init():  # the encoder first: eval's random-init baseline is this draw
            encoder = parts.build("encoder")
            predictor = parts.build("predictor", encoder=encoder)
        self.modules: dict[str, torch.nn.Module] = {"encoder": encoder, "predictor": predictor}
        self.prediction_loss = parts.build("loss")

    def predict(self, modules: dict, images: torch.Tensor, masks: MaskBatch,
                **predictor_options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions [B, M, Nt, D] fp32, context tokens [B, Nc, D]).

        predictor_options: keywords passed on to the predictor (V-JEPA's `mask_index`).

        With `masks.packed` (and padding to skip) the encoder and the predictor get
        pack=True: the same values, computed on the valid tokens only."""
        packed = masks.packed and (masks.context_valid is not None
                                   or masks.targets_valid is not None)
        if packed:
            self.check_packing()
        encoder_pack = {"pack": True} if packed and masks.context_valid is not None else {}
        z = modules["encoder"](images, masks.context, masks.context_valid, **encoder_pack)
        padded: dict[str, Any] = dict(predictor_options)
        if masks.targets_valid is not None:
            padded["targets_valid"] = masks.targets_valid
        if packed:
            padded["pack"] = True
        pred = modules["predictor"](z, masks.context, masks.targets, masks.context_valid,
                                    **padded)
        return pred.float(), z

    def check_packing(self) -> None:
        """ConfigError unless the encoder and the predictor compute packed contexts."""
        for name in ("encoder", "predictor"):
            module = self.modules[name]
            if not getattr(module, "supports_packing", False):
                raise ConfigError(
                    f"the masks ask for packed contexts (MaskBatch.packed, e.g. masker "
                    f"context_equalize: pack), but the {name} ({type(module).__name__}) does "
                    f"not compute them: it has no `supports_packing = True` (the vit encoder "
                    f"and vit_predictor support packing when all their blocks are timm's "
                    f"plain Block). Use context_equalize: pad, which gives the same loss on "
                    f"padded rows, or a {name} that supports packing.")

    def prediction_term(self, pred: torch.Tensor, targets: torch.Tensor,
                        masks: MaskBatch) -> torch.Tensor:
        """The prediction loss, over the valid target tokens when target blocks are padded."""
        if masks.targets_valid is None:
            return self.prediction_loss(pred, targets)
        return self.prediction_loss(pred, targets, valid=masks.targets_valid)

    def after_step(self, step: int) -> None:
        """No teacher to update."""

    def schedule_metrics(self, step: int) -> dict[str, float]:
        return {}


@torch.no_grad()
def teacher_targets(teacher: torch.nn.Module, images: torch.Tensor,
                    masks: MaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets [B, M, Nt, D] fp32, all layer-normed teacher tokens [B, N, D])."""
    h = teacher(images)
    if hasattr(teacher, "reshard"):  # an FSDP2 root that runs no backward: back to shards now
        teacher.reshard()
    h = normalised_targets(h)
    return gather_tokens(h, masks.targets), h


class IJEPA(MaskedPrediction):
    trainable = ("encoder", "predictor")
    eval_module = "target_encoder"  # the paper evaluates the EMA encoder

    def __init__(self, config: Any, parts: MethodParts):
        super().__init__(parts)
        self.config = config
        self.modules["target_encoder"] = frozen_copy(self.modules["encoder"])
        self.target_updater = parts.build("target_updater")

    def loss(self, modules: dict, batch: Any) -> MethodOutput:
        masks = batch.mask
        targets, h = teacher_targets(modules["target_encoder"], batch.images, masks)
        pred, _ = self.predict(modules, batch.images, masks)
        return MethodOutput(self.prediction_term(pred, targets, masks), {},
                            features=h.mean(dim=1))

    def after_step(self, step: int) -> None:
        self.target_updater.update(self.modules["encoder"], self.modules["target_encoder"], step)

    def schedule_metrics(self, step: int) -> dict[str, float]:
        return {"momentum": self.target_updater.momentum(step)}


def build_ijepa(config: Any, parts: MethodParts) -> IJEPA:
    return IJEPA(config, parts)
