"""The LeJEPA and C-JEPA loss terms: reference values, hand-computed values, gradients, views,
determinism, properties (hypothesis) and rank independence in a real 2-process gloo group.

Reference samples (4 views × 256 samples × 32 dims, 256 directions), built by `reference`:
  gaussian:    z ~ N(0, I);
  anisotropic: z_d ~ N(0, s_d²), s = linspace(0.1, 3, 32);
  collapsed:   z_n = s_n · u, s_n ~ N(0, 1), u one fixed unit vector (rank 1).

This file is also the worker of the 2-process test: `python test_regularizers.py RANK RDV OUT`.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from jepa_objectives.regularizers import (
    LeJEPALoss,
    global_mean_var,
    invariance,
    lejepa_loss,
    random_directions,
    sigreg,
    vicreg_covariance,
    vicreg_variance,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference(kind: str, seed: int = 0, views: int = 4, n: int = 256, dim: int = 32):
    """One of the reference samples [views, n, dim] (see the module docstring)."""
    g = gen(seed)
    if kind == "gaussian":
        return torch.randn(views, n, dim, generator=g)
    if kind == "anisotropic":
        return torch.randn(views, n, dim, generator=g) * torch.linspace(0.1, 3.0, dim)
    u = torch.randn(dim, generator=g)
    return torch.randn(views, n, 1, generator=g) * (u / u.norm())


def null_expectation(knots: int = 17, t_max: float = 3.0) -> float:
    """E[sigreg] on standard Gaussian data, by the same quadrature: each t contributes
    N · E|φ̂(t) − φ(t)|² = 1 − exp(−t²), whatever N."""
    dt = t_max / (knots - 1)
    total = 0.0
    for k in range(knots):
        t = k * dt
        weight = dt if k in (0, knots - 1) else 2 * dt
        total += weight * math.exp(-t * t / 2) * (1 - math.exp(-t * t))
    return total


# --- SIGReg: values ----------------------------------------------------------------------

@pytest.mark.parametrize("kind, low, high", [
    ("gaussian", 0.95, 1.25),  # paper: ≈ 1.1
    ("anisotropic", 37.0, 48.0),  # paper: ≈ 43
    ("collapsed", 86.0, 98.0),  # paper: ≈ 92
])
def test_reference_values(kind, low, high):
    value = sigreg(reference(kind), generator=gen(1), num_directions=256).item()
    assert low < value < high, value


def test_gaussian_mean_is_the_null_expectation_whatever_n():
    expected = null_expectation()
    # the exact integral is sqrt(2π) − sqrt(2π/3) ≈ 1.059; the 17-knot rule gives 1.0525
    assert expected == pytest.approx(math.sqrt(2 * math.pi) - math.sqrt(2 * math.pi / 3), abs=0.01)
    for n in (32, 1024):
        values = [sigreg(reference("gaussian", seed, views=4, n=n, dim=16), generator=gen(seed),
                         num_directions=128).item() for seed in range(4)]
        assert sum(values) / len(values) == pytest.approx(expected, rel=0.12), (n, values)


def test_collapse_grows_with_the_batch():
    small = sigreg(reference("collapsed", n=64), generator=gen(0)).item()
    large = sigreg(reference("collapsed", n=512), generator=gen(0)).item()
    assert large / small == pytest.approx(8, rel=0.1)


def test_matches_a_direct_complex_integral():
    """A different computation: the complex ECF and torch.trapezoid on [-t_max, t_max]."""
    g = gen(3)
    z = torch.randn(2, 40, 5, generator=g, dtype=torch.float64) * 1.7 + 0.3
    a = torch.randn(5, 7, generator=g, dtype=torch.float64)
    a = a / a.norm(dim=0)
    t = torch.linspace(-3.0, 3.0, 2 * 17 - 1, dtype=torch.float64)
    x = z @ a  # [V, N, P]
    ecf = torch.exp(1j * x.unsqueeze(-1) * t).mean(1)  # [V, P, T]
    integrand = (ecf - torch.exp(-t**2 / 2)).abs().square() * torch.exp(-t**2 / 2)
    expected = (torch.trapezoid(integrand, t, dim=-1) * 40).mean()
    assert sigreg(z, directions=a).item() == pytest.approx(expected.item(), rel=1e-5)


# --- SIGReg: views, directions, determinism ----------------------------------------------

def test_views_are_tested_one_by_one_and_averaged():
    z = reference("anisotropic", views=3, n=64, dim=8)
    z[1] = z[1] * 0.1  # views that differ a lot
    a = random_directions(8, 32, gen(5))
    per_view = [sigreg(z[v], directions=a) for v in range(3)]
    assert sigreg(z, directions=a).item() == pytest.approx(sum(per_view).item() / 3, rel=1e-6)
    assert torch.equal(sigreg(z[0], directions=a), sigreg(z[:1], directions=a))


def test_same_generator_seed_same_value_and_global_rng_untouched():
    z = reference("anisotropic", n=64, dim=8)
    state = torch.get_rng_state()
    first = sigreg(z, generator=gen(7))
    torch.manual_seed(123)  # the global RNG has no say
    assert torch.equal(first, sigreg(z, generator=gen(7)))
    assert not torch.equal(first, sigreg(z, generator=gen(8)))
    torch.set_rng_state(state)
    sigreg(z, generator=gen(7))
    assert torch.equal(torch.get_rng_state(), state)


def test_directions_argument():
    z = reference("anisotropic", n=64, dim=8)
    a = random_directions(8, 64, gen(4))
    assert a.shape == (8, 64) and torch.allclose(a.norm(dim=0), torch.ones(64))
    by_generator = sigreg(z, generator=gen(4), num_directions=64)
    assert torch.equal(sigreg(z, directions=a), by_generator)
    # directions are normalised, so their length does not matter
    assert sigreg(z, directions=3 * a).item() == pytest.approx(by_generator.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"directions must be \[D=8, P\]"):
        sigreg(z, directions=torch.randn(7, 4))
    with pytest.raises(ValueError, match="never draws from the global RNG"):
        sigreg(z)
    with pytest.raises(ValueError, match=r"\[N, D\] or \[V, N, D\]"):
        sigreg(torch.randn(8), generator=gen(0))


def test_knots_and_t_max():
    z = reference("gaussian", n=64, dim=8)
    a = random_directions(8, 16, gen(0))
    # a finer rule converges: 65 and 129 knots agree closely, 17 roughly
    fine = sigreg(z, directions=a, knots=129).item()
    assert sigreg(z, directions=a, knots=65).item() == pytest.approx(fine, rel=1e-3)
    assert sigreg(z, directions=a, knots=17).item() == pytest.approx(fine, rel=0.05)
    with pytest.raises(ValueError, match="knots >= 2"):
        sigreg(z, directions=a, knots=1)


def test_float32_even_under_bf16_autocast():
    z = reference("anisotropic", n=64, dim=8).to(torch.bfloat16)
    plain = sigreg(z, generator=gen(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = sigreg(z, generator=gen(0))
        var, cov = vicreg_variance(z[0]), vicreg_covariance(z[0])
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)
    assert torch.equal(var, vicreg_variance(z[0])) and torch.equal(cov, vicreg_covariance(z[0]))


# --- SIGReg: gradients --------------------------------------------------------------------

def test_gradients_are_finite_and_non_zero():
    for kind in ("gaussian", "anisotropic", "collapsed"):
        z = reference(kind, n=64, dim=8).requires_grad_()
        sigreg(z, generator=gen(0)).backward()
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0, kind


def test_a_few_steps_of_sigreg_undo_a_collapse():
    g = gen(0)
    u = torch.randn(8, generator=g)
    z = torch.randn(64, 1, generator=g) * (u / u.norm()) + 0.01 * torch.randn(64, 8, generator=g)
    z.requires_grad_()

    def top_share():  # the largest eigenvalue's share of the covariance: 1/8 when isotropic
        eig = torch.linalg.eigvalsh(torch.cov(z.detach().T))
        return (eig.max() / eig.sum()).item()

    before_share, before = top_share(), sigreg(z, generator=gen(99)).item()
    # Plain gradient descent: torch.optim's first use imports torch._dynamo (seconds).
    for step in range(20):  # new directions every step, as in training
        grad, = torch.autograd.grad(sigreg(z, generator=gen(step), num_directions=32), z)
        with torch.no_grad():
            z -= 5.0 * grad
    assert before_share > 0.99 and top_share() < 0.6
    assert sigreg(z, generator=gen(99)).item() < before / 5


# --- invariance and the LeJEPA loss -------------------------------------------------------

def test_invariance_is_the_per_element_mean_squared_distance_to_the_view_mean():
    z = torch.randn(3, 5, 4, generator=gen(0))
    centre = z.mean(0)
    per_sample = torch.stack([((z[v, n] - centre[n]) ** 2).sum() for v in range(3)
                              for n in range(5)])
    assert invariance(z).item() == pytest.approx(per_sample.mean().item() / 4, rel=1e-6)
    # two views: each is half the difference away from the mean
    two = z[:2]
    assert invariance(two).item() == pytest.approx(((two[0] - two[1]) ** 2).mean().item() / 4,
                                                   rel=1e-6)


def test_invariance_needs_two_views():
    with pytest.raises(ValueError, match="at least 2 views"):
        invariance(torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="at least 2 views"):
        invariance(torch.randn(4, 3))


def test_lejepa_loss_combines_the_terms():
    z = reference("anisotropic", views=2, n=32, dim=8).requires_grad_()
    out = lejepa_loss(z, 0.05, generator=gen(2), num_directions=32)
    assert isinstance(out, LeJEPALoss)
    assert torch.equal(out.sigreg, sigreg(z, generator=gen(2), num_directions=32))
    assert torch.equal(out.invariance, invariance(z))
    assert out.total.item() == pytest.approx(0.05 * out.sigreg.item()
                                             + 0.95 * out.invariance.item(), rel=1e-6)
    out.total.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        lejepa_loss(z, 1.5, generator=gen(2))


# --- VICReg -------------------------------------------------------------------------------

def test_vicreg_variance_formula_and_extremes():
    x = torch.randn(50, 6, generator=gen(0)) * torch.tensor([0.1, 0.5, 0.9, 1.0, 2.0, 3.0])
    expected = torch.relu(1.0 - torch.sqrt(x.var(0) + 1e-4)).mean()  # unbiased, like VICReg
    assert vicreg_variance(x).item() == pytest.approx(expected.item(), rel=1e-5)
    assert vicreg_variance(x, target_std=0.05).item() == 0.0
    collapsed = torch.ones(50, 6)
    assert vicreg_variance(collapsed).item() == pytest.approx(1 - math.sqrt(1e-4), rel=1e-6)


def test_vicreg_covariance_formula_and_extremes():
    x = torch.randn(50, 6, generator=gen(0)) @ torch.randn(6, 6, generator=gen(1))
    cov = torch.cov(x.T)
    expected = (cov.square().sum() - cov.diagonal().square().sum()) / 6
    assert vicreg_covariance(x).item() == pytest.approx(expected.item(), rel=1e-4)
    # exactly uncorrelated columns (signs of a 2-level factorial design): 0
    design = torch.tensor([[1., 1.], [1., -1.], [-1., 1.], [-1., -1.]]) * torch.tensor([2., 5.])
    assert vicreg_covariance(design).item() == pytest.approx(0.0, abs=1e-6)
    # rank 1: every pair fully correlated
    s = torch.randn(50, 1, generator=gen(2))
    assert vicreg_covariance(s * torch.ones(1, 6)).item() > 5 * s.var().item() ** 2


def test_global_mean_var_is_the_biased_batch_moments():
    x = torch.randn(30, 4, generator=gen(5), dtype=torch.float64) * 2 + 3
    mean, var = global_mean_var(x)
    torch.testing.assert_close(mean, x.mean(0).float())
    torch.testing.assert_close(var, x.var(0, unbiased=False).float())


def test_vicreg_gradients_and_bad_shapes():
    x = (torch.randn(40, 5, generator=gen(0)) * 0.3).requires_grad_()
    (vicreg_variance(x) + vicreg_covariance(x)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"pooled features \[N, D\]"):
        vicreg_variance(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        vicreg_covariance(torch.randn(1, 3))


# --- properties ---------------------------------------------------------------------------

def features(min_n=2, max_n=12, max_d=5, views=None):
    shape = st.tuples(st.integers(min_n, max_n), st.integers(1, max_d))
    if views:
        shape = st.tuples(st.integers(*views), st.integers(min_n, max_n), st.integers(1, max_d))
    return arrays("float32", shape, elements=st.floats(-8, 8, width=32)).map(torch.from_numpy)


@settings(max_examples=40, deadline=None)
@given(z=features(views=(1, 3)), seed=st.integers(0, 2**31 - 1))
def test_sigreg_is_non_negative_and_blind_to_order_and_sign(z, seed):
    a = random_directions(z.shape[-1], 8, gen(seed))
    value = sigreg(z, directions=a)
    assert torch.isfinite(value) and value.item() >= 0
    order = torch.randperm(z.shape[1], generator=gen(seed))
    # the ECF is a mean over samples; and φ̂(−t) is φ̂(t)'s conjugate while φ is real
    assert sigreg(z[:, order], directions=a).item() == pytest.approx(value.item(), rel=1e-4,
                                                                     abs=1e-4)
    assert sigreg(-z, directions=a).item() == pytest.approx(value.item(), rel=1e-4, abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(z=features(views=(2, 4)), v=st.integers(0, 3), n=st.integers(0, 11),
       d=st.integers(0, 4))
def test_invariance_is_zero_iff_the_views_are_equal(z, v, n, d):
    same = z[:1].expand_as(z)
    # zero up to the rounding of the view mean (3 × 0.9 / 3 is not 0.9 in float32)
    assert invariance(same).item() <= 1e-12 * (1 + z.abs().max().item() ** 2)
    v, n, d = v % z.shape[0], n % z.shape[1], d % z.shape[2]
    bumped = same.clone()
    bumped[v, n, d] += 0.5
    assert invariance(bumped).item() > 0
    assert invariance(z.flip(0)).item() == pytest.approx(invariance(z).item(), rel=1e-5,
                                                         abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(x=features(min_n=3), target=st.floats(0.1, 3.0), extra=st.floats(0.0, 2.0))
def test_vicreg_variance_is_zero_when_every_std_reaches_the_target(x, target, extra):
    x = x.double()
    x = x + torch.arange(x.shape[0], dtype=x.dtype).unsqueeze(1)  # no constant column
    # every column rescaled so that sqrt(var + eps) is at least the target
    scaled = (x - x.mean(0)) / x.std(0) * (target + extra + 1e-3)
    assert vicreg_variance(scaled.float(), target_std=target).item() == 0.0
    value = vicreg_variance(x.float(), target_std=target).item()
    assert 0.0 <= value <= target


@settings(max_examples=40, deadline=None)
@given(x=features(), seed=st.integers(0, 2**31 - 1), shift=st.floats(-5, 5))
def test_vicreg_covariance_is_blind_to_sample_order_and_shifts(x, seed, shift):
    value = vicreg_covariance(x).item()
    assert value >= 0
    order = torch.randperm(x.shape[0], generator=gen(seed))
    assert vicreg_covariance(x[order]).item() == pytest.approx(value, rel=1e-4, abs=1e-4)
    assert vicreg_covariance(x + shift).item() == pytest.approx(value, rel=1e-3, abs=1e-3)


# --- rank independence: 2 processes × B/2 == 1 process × B ---------------------------------

SPLITS = {"equal": [8, 8], "unequal": [5, 11]}


def ddp_problem():
    """x [V=3, B=16, 6] inputs (a leaf, for per-sample gradients) and W [6, 5], the "model"
    whose gradient DDP would average. Column scales of W put some stds below 1 and some
    above, so the variance hinge is partly active."""
    g = gen(11)
    x = torch.randn(3, 16, 6, generator=g)
    w = torch.randn(6, 5, generator=g) * torch.linspace(0.1, 0.8, 5)
    return x, w


def ddp_terms(x, w, group=None):
    """Each loss term on z = x @ W: name -> a function of (x, w) returning []."""
    a = random_directions(5, 32, gen(12))
    return {
        "sigreg": lambda: sigreg(x @ w, directions=a, group=group),
        "variance": lambda: vicreg_variance((x @ w)[0], group=group),
        "covariance": lambda: vicreg_covariance((x @ w)[0], group=group),
        "moments": lambda: _moments_scalar(global_mean_var((x @ w)[0], group=group)),
    }


def _moments_scalar(mean_var):
    """A scalar of LeJEPA's projector batch norm statistics (mean [D], variance [D])."""
    mean, var = mean_var
    return (mean.square() * torch.arange(1.0, 6.0)).sum() + var.sqrt().sum()


def run_terms(x_full, w_full, rows, world):
    """value, W's gradient averaged over ranks (what DDP applies) and the shard's input
    gradient / world, for each term, on the samples `rows` of the batch."""
    import torch.distributed as dist

    out = {}
    for name in ("sigreg", "variance", "covariance", "moments"):
        x = x_full[:, rows].clone().requires_grad_()
        w = w_full.clone().requires_grad_()
        value = ddp_terms(x, w)[name]()
        value.backward()
        w_grad = w.grad.clone()
        if world > 1:
            dist.all_reduce(w_grad)
        out[name] = (value.detach(), w_grad / world, x.grad / world)
    return out


def ddp_worker(rank: int, rdv: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=2)
    x, w = ddp_problem()
    results = {}
    for split, sizes in SPLITS.items():
        start = sum(sizes[:rank])
        results[split] = run_terms(x, w, slice(start, start + sizes[rank]), 2)
    group = dist.new_group([0, 1])
    results["group"] = ddp_terms(x[:, rank * 8:(rank + 1) * 8], w, group)["sigreg"]()
    torch.save(results, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_single_process_values_and_gradients(tmp_path):
    rdv = tmp_path / "rendezvous"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(rdv),
                               str(tmp_path / f"rank{rank}.pt")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for rank in (0, 1)]
    for p in procs:
        output = p.communicate(timeout=120)[0].decode()
        assert p.returncode == 0, output
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    x, w = ddp_problem()
    single = run_terms(x, w, slice(0, 16), 1)
    for split in SPLITS:
        for name, (value, w_grad, x_grad) in single.items():
            for r in (0, 1):
                got_value, got_w_grad, _ = ranks[r][split][name]
                assert got_value.item() == pytest.approx(value.item(), rel=1e-5), (split, name)
                torch.testing.assert_close(got_w_grad, w_grad, rtol=1e-4, atol=1e-6)
            x_grads = torch.cat([ranks[r][split][name][2] for r in (0, 1)], dim=1)
            torch.testing.assert_close(x_grads, x_grad, rtol=1e-4, atol=1e-6)
    for r in (0, 1):  # an explicit process group works the same
        assert ranks[r]["group"].item() == pytest.approx(single["sigreg"][0].item(), rel=1e-5)


if __name__ == "__main__":
    ddp_worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
