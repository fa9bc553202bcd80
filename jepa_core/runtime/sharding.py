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
    """The module inside torch.compile's and DDP's wrappers (the module itself if unwrapped)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def _shard(model: torch.nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)


def wrap_models(method: Any, recipe: Any, dist: Any,
                device: torch.device) -> dict[str, torch.nn.Module]:
    """{name: what the loop calls} for every module of the method. DDP wraps the trainable
    ones; FSDP2 shards every module in place (so an EMA pairs shard with shard); compile
    wraps them all. The method's own references stay the plain (possibly sharded) modules."""
    called = dict(method.modules)
    if recipe.dist.strategy == "fsdp":
        if not dist.distributed:
            raise ConfigError("dist.strategy=fsdp needs several processes (--nproc, torchrun "
                              "or SLURM); a single process has nothing to shard over.")
        for model in called.values():
            _shard(model)
    elif dist.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        for name in method.trainable:
            called[name] = DDP(called[name], device_ids=ids)
    if recipe.train.compile:
        called = {name: torch.compile(model) for name, model in called.items()}
    return called


class no_gradient_sync:
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch."""

    def __init__(self, models: list[torch.nn.Module]):
        self.models = models
        self.ctxs = [getattr(m, "no_sync")() for m in models if hasattr(m, "no_sync")]  # noqa: B009 (DDP)

    def __enter__(self) -> None:
        for c in self.ctxs:
            c.__enter__()
        for m in self.models:
            if hasattr(unwrap(m), "set_requires_gradient_sync"):  # FSDP2
                getattr(unwrap(m), "set_requires_gradient_sync")(False)  # noqa: B009

    def __exit__(self, *exc: Any) -> None:
        for m in self.models:
            if hasattr(unwrap(m), "set_requires_gradient_sync"):
                getattr(unwrap(m), "set_requires_gradient_sync")(True)  # noqa: B009
        for c in reversed(self.ctxs):
            c.__exit__(*exc)


def _trainables(method: Any) -> torch.nn.Module:
    return torch.nn.ModuleDict({name: unwrap(method.modules[name]) for name in method.trainable})


def full_states(method: Any, optimizer: torch.optim.Optimizer, sharded: bool) -> dict[str, Any]:
    """{"modules": {name: full state dict}, "optimizer": full optimizer state dict}."""
    if not sharded:
        return {"modules": {name: unwrap(m).state_dict() for name, m in method.modules.items()},
                "optimizer": optimizer.state_dict()}
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"modules": {name: get_model_state_dict(unwrap(m), options=opts)
                        for name, m in method.modules.items()},
            "optimizer": get_optimizer_state_dict(_trainables(method), optimizer, options=opts)}


def load_full_states(state: dict, method: Any, optimizer: torch.optim.Optimizer,
                     sharded: bool) -> None:
    """The inverse of `full_states`; an optimizer state of None keeps fresh moments."""
    modules = state["modules"]
    if not sharded:
        for name, m in method.modules.items():
            unwrap(m).load_state_dict(modules[name])
        if state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    for name, m in method.modules.items():
        set_model_state_dict(unwrap(m), modules[name], options=opts)
    if state.get("optimizer") is not None:
        set_optimizer_state_dict(_trainables(method), optimizer, state["optimizer"], options=opts)
