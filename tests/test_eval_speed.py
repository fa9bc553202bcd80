"""What makes the probes fast must not move their numbers: the grid's AdamW against torch's,
a small set kept in memory against the same set streamed."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jepa_core.evaluation import cache
from jepa_core.interfaces import EvalContext
from jepa_eval.attentive import AttentivePooler
from jepa_eval.configs import LinearConfig
from jepa_eval.heads import GridAdamW, summed_cross_entropy
from jepa_eval.linear import LinearProbe


def heads_of(kind: str, n: int, seed: int) -> torch.nn.ModuleList:
    g = torch.Generator().manual_seed(seed)
    if kind == "linear":
        heads = torch.nn.ModuleList(torch.nn.Linear(12, 5) for _ in range(n))
        with torch.no_grad():
            for p in heads.parameters():
                p.normal_(0.0, 0.3, generator=g)
        return heads
    return torch.nn.ModuleList(AttentivePooler(12, 5, 4, 2.0, g) for _ in range(n))


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(["linear", "attentive"]), seed=st.integers(0, 10**6),
       pairs=st.lists(st.tuples(st.sampled_from([1e-3, 1e-2, 0.1, 0.3]),
                                st.sampled_from([0.0, 5e-4, 0.01, 0.05])), min_size=1, max_size=5))
def test_the_grid_adamw_gives_the_weights_of_torch_adamw_bit_for_bit(kind, seed, pairs):
    """Every weight after a few steps of a decaying schedule, compared exactly with
    torch.optim.AdamW, one parameter group per head."""
    ours, theirs = heads_of(kind, len(pairs), seed), heads_of(kind, len(pairs), seed)
    opt = GridAdamW(ours, pairs)
    ref = torch.optim.AdamW([{"params": list(h.parameters()), "lr": lr, "weight_decay": wd}
                             for h, (lr, wd) in zip(theirs, pairs, strict=True)])
    g = torch.Generator().manual_seed(seed + 1)
    shape = (6, 12) if kind == "linear" else (6, 7, 12)
    for step in range(4):
        x, y = torch.randn(*shape, generator=g), torch.randint(0, 5, (6,), generator=g)
        factor = 1.0 - step / 4
        for heads in (ours, theirs):
            sum(torch.nn.functional.cross_entropy(h(x), y) for h in heads).backward()
        opt.step(factor)
        for group, (lr, _) in zip(ref.param_groups, pairs, strict=True):
            group["lr"] = lr * factor
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


def one_shard(folder, x, y, keep_bytes=cache.KEEP_BYTES, kind="pooled"):
    folder.mkdir(parents=True, exist_ok=True)
    cache.write_shard(folder, kind, 0, x, y, 0)
    return cache.CachedFeatures(folder, kind, 1, keep_bytes=keep_bytes)


def test_a_small_one_shard_set_is_read_from_disk_once(tmp_path):
    x, y = torch.randn(40, 6).half(), torch.arange(40) % 3
    fs = one_shard(tmp_path, x, y)
    assert len(fs) == 40  # (the labels and sizes are read once too)
    first = fs.shard(0)
    cache.shard_path(tmp_path, "pooled", 0).unlink()  # a second read from disk would fail
    again = fs.shard(0)
    assert again[0] is first[0] and torch.equal(again[0], x.float())
    assert torch.equal(fs.take(torch.tensor([3, 7])), x[[3, 7]].float())


def test_sets_over_the_memory_bound_or_of_several_shards_stream(tmp_path):
    x, y = torch.randn(40, 6), torch.arange(40) % 3
    big = one_shard(tmp_path / "big", x, y, keep_bytes=40 * 6 * 4 - 1)
    big.shard(0)
    assert big._kept is None
    several = cache.CachedFeatures(tmp_path / "two", "pooled", 2)
    (tmp_path / "two").mkdir()
    cache.write_shard(tmp_path / "two", "pooled", 0, x[:20], y[:20], 0)
    cache.write_shard(tmp_path / "two", "pooled", 1, x[20:], y[20:], 0)
    assert torch.equal(several.load(), x) and several._kept is None
    fits = one_shard(tmp_path / "fits", x, y, keep_bytes=40 * 6 * 4)
    fits.shard(0)
    assert fits._kept is not None


def test_a_kept_float32_shard_is_a_copy_not_the_mapped_file(tmp_path):
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    fs = one_shard(tmp_path, x, y)
    kept = fs.shard(0)[0]
    cache.write_shard(tmp_path, "pooled", 0, torch.zeros(10, 4), y, 0)  # replaced on disk
    assert torch.equal(kept, x)


def test_the_linear_probe_gives_the_same_results_kept_or_streamed(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(150) % 3
    x = torch.randn(3, 8, generator=g)[y] * 2 + torch.randn(150, 8, generator=g)
    sets = {}
    for name, keep in (("kept", cache.KEEP_BYTES), ("streamed", 0)):
        sets[name] = {"pooled": (one_shard(tmp_path / name / "tr", x[:100], y[:100], keep),
                                 one_shard(tmp_path / name / "te", x[100:], y[100:], keep))}
    ctx = EvalContext(num_classes=3, seed=0, device=torch.device("cpu"))
    probe = LinearProbe(LinearConfig(features=("pooled",), epochs=3, batch_size=16))
    kept, streamed = probe.run(sets["kept"], ctx), probe.run(sets["streamed"], ctx)
    assert kept == streamed
    assert sets["kept"]["pooled"][0]._kept is not None
    assert sets["streamed"]["pooled"][0]._kept is None


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10**6), batch=st.integers(1, 9), tokens=st.integers(1, 20),
       dim_heads=st.sampled_from([(12, 4), (12, 3), (8, 1), (48, 4)]))
def test_the_pooler_attends_as_multihead_attention_bit_for_bit(seed, batch, tokens, dim_heads):
    """AttentivePooler.attend against nn.MultiheadAttention on the same weights: the output
    and every gradient (the weights' and the tokens') exactly equal."""
    dim, heads = dim_heads
    g = torch.Generator().manual_seed(seed)
    pooler = AttentivePooler(dim, 5, heads, 2.0, g)
    kv = torch.randn(batch, tokens, dim, generator=g, requires_grad=True)
    q = pooler.query.expand(batch, -1, -1)
    out = {}
    for name, fn in (("ours", lambda: pooler.attend(q, kv)),
                     ("torch", lambda: pooler.attn(q, kv, kv, need_weights=False)[0])):
        kv.grad = None
        pooler.zero_grad()
        y = fn()
        (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))).sum().backward()
        out[name] = [y.detach(), kv.grad.clone()] + [p.grad.clone() for p in pooler.parameters()
                                                     if p.grad is not None]
    assert len(out["ours"]) == len(out["torch"])
    for a, b in zip(out["ours"], out["torch"], strict=True):
        assert torch.equal(a, b)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), heads=st.integers(1, 6), batch=st.integers(1, 70),
       classes=st.integers(2, 12))
def test_one_cross_entropy_over_the_heads_gives_the_gradients_of_one_per_head(seed, heads,
                                                                               batch, classes):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(heads, batch, classes, generator=g) * 3).requires_grad_()
    y = torch.randint(0, classes, (batch,), generator=g)
    summed_cross_entropy(logits, y).backward()
    ours, logits.grad = logits.grad, None
    sum(torch.nn.functional.cross_entropy(h, y) for h in logits).backward()
    assert torch.equal(ours, logits.grad)
