"""EMA target updates (momentum schedule, the update formula, both implementations, DTensors)
and the two losses (against torch's functions and hand-computed values)."""

from __future__ import annotations

import copy
import importlib
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jepa_objectives.configs import EMAConfig, L2Config, SmoothL1Config
from jepa_objectives.ema import EMATargetUpdater, build_ema
from jepa_objectives.losses import build_l2, build_smooth_l1


class Tiny(nn.Module):
    """Two trainable layers, a frozen table and a buffer."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(1, 4, 3), requires_grad=False)
        self.fc1 = nn.Linear(3, 5)
        self.fc2 = nn.Linear(5, 2)
        self.register_buffer("count", torch.zeros(()))


def pair(seed=0):
    torch.manual_seed(seed)
    online = Tiny()
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))  # make them differ
    return online, target


# --- momentum ------------------------------------------------------------------------------

def test_momentum_schedule():
    ema = build_ema(EMAConfig(), total_steps=1000)
    assert ema.momentum(0) == 0.996
    assert ema.momentum(500) == pytest.approx(0.998, abs=1e-12)
    assert ema.momentum(1000) == 1.0
    assert ema.momentum(5000) == 1.0 and ema.momentum(-3) == 0.996  # clamped
    assert ema.momentum(250) == pytest.approx(0.997, abs=1e-12)


def test_momentum_is_pure():
    ema = build_ema(EMAConfig(momentum=(0.99, 0.999)), total_steps=77)
    values = [ema.momentum(s) for s in (5, 70, 5, 0, 70)]
    assert values[0] == values[2] and values[1] == values[4]
    online, target = pair()
    ema.update(online, target, 5)
    assert ema.momentum(5) == values[0]


def test_zero_total_steps_is_at_the_end():
    assert build_ema(EMAConfig(), total_steps=0).momentum(0) == 1.0


# --- update --------------------------------------------------------------------------------

@pytest.mark.parametrize("implementation", ["foreach", "loop"])
def test_update_equals_formula(implementation):
    online, target = pair()
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    ema = build_ema(EMAConfig(implementation=implementation), total_steps=10)
    ema.update(online, target, 3)
    m = ema.momentum(3)
    for name, param in target.named_parameters():
        if name == "table":
            continue
        theirs = dict(online.named_parameters())[name].detach()
        # Bit for bit what lerp computes, and the formula up to float32 rounding.
        assert torch.equal(param, torch.lerp(before[name], theirs, 1 - m))
        formula = m * before[name].double() + (1 - m) * theirs.double()
        torch.testing.assert_close(param.double(), formula, rtol=0, atol=5e-7)


def test_foreach_and_loop_are_identical():
    online, target_a = pair()
    target_b = copy.deepcopy(target_a)
    fast = EMATargetUpdater((0.9, 1.0), 20, "foreach")
    slow = EMATargetUpdater((0.9, 1.0), 20, "loop")
    for step in range(5):
        fast.update(online, target_a, step)
        slow.update(online, target_b, step)
    for a, b in zip(target_a.parameters(), target_b.parameters(), strict=True):
        assert torch.equal(a, b)


def test_frozen_parameters_buffers_and_online_untouched():
    online, target = pair()
    target.table.data.fill_(7.0)
    target.count.fill_(3.0)
    online_before = [p.detach().clone() for p in online.parameters()]
    build_ema(EMAConfig(), total_steps=10).update(online, target, 0)
    assert torch.all(target.table == 7.0) and target.count.item() == 3.0
    for p, q in zip(online.parameters(), online_before, strict=True):
        assert torch.equal(p, q)


def test_momentum_one_keeps_target_and_zero_copies_online():
    online, target = pair()
    before = [p.detach().clone() for p in target.parameters()]
    EMATargetUpdater((1.0, 1.0), 10).update(online, target, 0)
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), before, strict=True))
    EMATargetUpdater((0.0, 0.0), 10).update(online, target, 0)
    assert torch.equal(target.fc1.weight, online.fc1.weight)


def test_update_records_no_graph():
    online, target = pair()
    build_ema(EMAConfig(), total_steps=10).update(online, target, 0)
    assert target.fc1.weight.grad_fn is None and online.fc1.weight.grad is None


def test_wrapped_online_module_pairs_by_plain_names():
    online, target = pair()
    wrapper = nn.Module()
    wrapper.module = online  # the names DDP gives: "module.fc1.weight", ...
    EMATargetUpdater((0.0, 0.0), 10).update(wrapper, target, 0)
    assert torch.equal(target.fc2.bias, online.fc2.bias)


def test_mismatched_target_is_an_error():
    online, target = pair()
    ema = build_ema(EMAConfig(), total_steps=10)
    with pytest.raises(ValueError, match="'fc1.weight'.*missing"):
        ema.update(online, nn.Sequential(), 0)
    target.fc2 = nn.Linear(5, 3)
    with pytest.raises(ValueError, match="'fc2.weight'.*shape"):
        ema.update(online, target, 0)


def test_cache_follows_replaced_parameters():
    online, target = pair()
    ema = build_ema(EMAConfig(momentum=(0.0, 0.0)), total_steps=10)
    ema.update(online, target, 0)
    target.fc1.weight = nn.Parameter(torch.zeros(5, 3))  # e.g. re-wrapped parameters
    target.table = nn.Parameter(target.table.detach().clone(), requires_grad=False)
    ema.update(online, target, 0)
    assert torch.equal(target.fc1.weight, online.fc1.weight)


def test_update_works_on_dtensors():
    """FSDP2 parameters are DTensors: the foreach update must work on them unchanged."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    online, target = pair()
    expected = copy.deepcopy(target)
    EMATargetUpdater((0.9, 1.0), 10).update(online, expected, 0)
    with tempfile.NamedTemporaryFile() as store:
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0,
                                world_size=1)
        try:
            mesh = init_device_mesh("cpu", (1,))
            for module in (online, target):
                for name in ("weight", "bias"):
                    for layer in (module.fc1, module.fc2):
                        plain = getattr(layer, name).detach()
                        setattr(layer, name,
                                nn.Parameter(distribute_tensor(plain, mesh, [Shard(0)])))
            EMATargetUpdater((0.9, 1.0), 10).update(online, target, 0)
            assert isinstance(target.fc1.weight, DTensor)
            for name, param in target.named_parameters():
                value = param.full_tensor() if isinstance(param, DTensor) else param
                assert torch.equal(value.detach(), dict(expected.named_parameters())[name])
        finally:
            dist.destroy_process_group()


# --- losses --------------------------------------------------------------------------------

def test_losses_match_torch():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, 8, generator=gen), torch.randn(2, 3, 4, 8, generator=gen)
    for beta in (1.0, 0.5):
        loss = build_smooth_l1(SmoothL1Config(beta=beta))(pred, target)
        assert loss.shape == () and loss.dtype == torch.float32
        torch.testing.assert_close(loss, F.smooth_l1_loss(pred, target, beta=beta))
    torch.testing.assert_close(build_l2(L2Config())(pred, target), F.mse_loss(pred, target))


def test_losses_hand_computed():
    pred = torch.tensor([0.0, 0.5, 2.0, -3.0]).reshape(1, 1, 1, 4)
    target = torch.zeros(1, 1, 1, 4)
    # beta 1: 0, 0.5 * 0.25, 2 - 0.5, 3 - 0.5 -> 4.125 / 4
    assert build_smooth_l1(SmoothL1Config())(pred, target).item() == 1.03125
    # beta 2: 0, 0.5 * 0.25 / 2, 2 - 1, 3 - 1 -> 3.0625 / 4
    assert build_smooth_l1(SmoothL1Config(beta=2.0))(pred, target).item() == 0.765625
    # squares 0, 0.25, 4, 9 -> 13.25 / 4
    assert build_l2(L2Config())(pred, target).item() == 3.3125


def test_losses_compute_in_float32_and_check_shapes():
    pred = torch.randn(1, 2, 3, 4).bfloat16()
    target = torch.randn(1, 2, 3, 4).bfloat16()
    for loss_fn in (build_smooth_l1(SmoothL1Config()), build_l2(L2Config())):
        loss = loss_fn(pred, target)
        assert loss.dtype == torch.float32
        with pytest.raises(ValueError, match="same shape"):
            loss_fn(pred, target[:, :1])


def test_loss_gradients_reach_predictions_only():
    pred = torch.randn(1, 2, 3, 4, requires_grad=True)
    target = torch.randn(1, 2, 3, 4)
    build_smooth_l1(SmoothL1Config())(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None


@pytest.mark.parametrize("path, factory", [
    ("jepa_objectives.ema:build_ema", build_ema),
    ("jepa_objectives.losses:build_smooth_l1", build_smooth_l1),
    ("jepa_objectives.losses:build_l2", build_l2),
])
def test_registered_factories_resolve(path, factory):
    module, _, attr = path.partition(":")
    assert getattr(importlib.import_module(module), attr) is factory
