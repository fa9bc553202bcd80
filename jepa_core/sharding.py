"""How models are spread over processes: DDP (default) or FSDP2 (`dist.strategy: fsdp`).

FSDP2 (`torch.distributed.fsdp.fully_shard`) shards every transformer block (each element of
an `nn.ModuleList`) and then the whole model, for the context encoder, the predictor and the
target encoder alike, so that the EMA updates shard against shard (same placements). State
dicts cross this module as full, unsharded CPU tensors, gathered collectively: every rank
must call `full_states` / `load_full_states`, rank 0 writes the file.
"""

from __future__ import annotations

from typing import Any

import torch

from jepa_core.errors import ConfigError


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def _shard(model: torch.nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)


def wrap_models(parts: Any, recipe: Any, dist: Any,
                device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(encoder, predictor) as the loop calls them; FSDP2 changes `parts`' modules in place."""
    encoder, predictor = parts.encoder, parts.predictor
    if recipe.dist.strategy == "fsdp":
        if not dist.distributed:
            raise ConfigError("dist.strategy=fsdp needs several processes (--nproc, torchrun "
                              "or SLURM); a single process has nothing to shard over.")
        for model in (encoder, predictor, parts.target_encoder):
            _shard(model)
    elif dist.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        encoder, predictor = DDP(encoder, device_ids=ids), DDP(predictor, device_ids=ids)
    if recipe.train.compile:
        encoder, predictor = torch.compile(encoder), torch.compile(predictor)
        parts.target_encoder = torch.compile(parts.target_encoder)
    return encoder, predictor


class no_gradient_sync:
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch."""

    def __init__(self, models: list[torch.nn.Module]):
        self.models = models
        self.ctxs = [m.no_sync() for m in models if hasattr(m, "no_sync")]  # DDP

    def __enter__(self) -> None:
        for c in self.ctxs:
            c.__enter__()
        for m in self.models:
            if hasattr(unwrap(m), "set_requires_gradient_sync"):  # FSDP2
                unwrap(m).set_requires_gradient_sync(False)

    def __exit__(self, *exc: Any) -> None:
        for m in self.models:
            if hasattr(unwrap(m), "set_requires_gradient_sync"):
                unwrap(m).set_requires_gradient_sync(True)
        for c in reversed(self.ctxs):
            c.__exit__(*exc)


def _pair(encoder: torch.nn.Module, predictor: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.ModuleDict({"encoder": unwrap(encoder), "predictor": unwrap(predictor)})


def full_states(encoder: torch.nn.Module, predictor: torch.nn.Module, target: torch.nn.Module,
                optimizer: torch.optim.Optimizer, sharded: bool) -> dict[str, Any]:
    """{"encoder", "predictor", "target_encoder", "optimizer"} as full state dicts."""
    if not sharded:
        return {"encoder": unwrap(encoder).state_dict(),
                "predictor": unwrap(predictor).state_dict(),
                "target_encoder": unwrap(target).state_dict(),
                "optimizer": optimizer.state_dict()}
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"encoder": get_model_state_dict(unwrap(encoder), options=opts),
            "predictor": get_model_state_dict(unwrap(predictor), options=opts),
            "target_encoder": get_model_state_dict(unwrap(target), options=opts),
            "optimizer": get_optimizer_state_dict(_pair(encoder, predictor), optimizer,
                                                  options=opts)}


def load_full_states(state: dict, encoder: torch.nn.Module, predictor: torch.nn.Module,
                     target: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     sharded: bool) -> None:
    """The inverse of `full_states`; an optimizer state of None keeps fresh moments."""
    if not sharded:
        unwrap(encoder).load_state_dict(state["encoder"])
        unwrap(predictor).load_state_dict(state["predictor"])
        unwrap(target).load_state_dict(state["target_encoder"])
        if state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(unwrap(encoder), state["encoder"], options=opts)
    set_model_state_dict(unwrap(predictor), state["predictor"], options=opts)
    set_model_state_dict(unwrap(target), state["target_encoder"], options=opts)
    if state.get("optimizer") is not None:
        set_optimizer_state_dict(_pair(encoder, predictor), optimizer, state["optimizer"],
                                 options=opts)
