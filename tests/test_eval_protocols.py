"""The evaluation protocols (first-party plugin jepa_eval) on features written to a real
cache, and protocols as a component kind a third party can add."""

from __future__ import annotations

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jepa_core.commands.evaluate import knn_accuracy as knn_in_memory
from jepa_core.errors import RecipeError
from jepa_core.evaluation import cache
from jepa_core.hookspecs import hookimpl
from jepa_core.interfaces import EvalContext, EvalProtocol, FeatureSet
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict
from jepa_eval import configs
from jepa_eval.attentive import AttentiveProbe
from jepa_eval.knn import knn_accuracy
from jepa_eval.linear import LinearProbe
from jepa_eval.lowshot import LowShot, labelled_rows
from jepa_eval.rankme import RankMe, rankme

CTX = EvalContext(num_classes=3, seed=0, device=torch.device("cpu"))


def cached(folder, x, y, shard_size, kind="pooled"):
    """x, y written as cache shards of `shard_size`; the FeatureSet reading them back."""
    shards = cache.num_shards(len(y), shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        part = slice(s * shard_size, (s + 1) * shard_size)
        cache.write_shard(folder, kind, s, x[part], y[part], 0)
    return cache.CachedFeatures(folder, kind, shards)


def blobs(n=300, dim=16, spread=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, dim, generator=g) * spread
    y = torch.arange(n) % 3
    return centres[y] + torch.randn(n, dim, generator=g), y


def split_sets(tmp_path, x, y, shard_size=64, kind="pooled"):
    cut = 2 * len(y) // 3
    return (cached(tmp_path / "train", x[:cut], y[:cut], shard_size, kind),
            cached(tmp_path / "test", x[cut:], y[cut:], shard_size, kind))


def test_the_cache_reads_back_what_was_written(tmp_path):
    x, y = blobs(130)
    fs = cached(tmp_path, x, y, 50)
    assert isinstance(fs, FeatureSet)
    assert len(fs) == 130 and fs.shard_sizes == [50, 50, 30] and fs.item_shape == (16,)
    assert torch.equal(fs.load(), x) and torch.equal(fs.labels, y)
    rows = torch.tensor([0, 49, 50, 99, 129])
    assert torch.equal(fs.take(rows), x[rows])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 60), shard=st.integers(1, 70), k=st.integers(1, 12),
       seed=st.integers(0, 1000), rows=st.integers(1, 40))
def test_streamed_knn_equals_the_in_memory_vote(tmp_path_factory, n, shard, k, seed, rows):
    """Shard by shard with a running top-k, test rows a chunk at a time, or all at once: the
    same predictions."""
    x, y = blobs(n + 20, 8, spread=1.0, seed=seed)
    root = tmp_path_factory.mktemp("knn")
    train = cached(root / "a", x[:n], y[:n], shard)
    test = cached(root / "b", x[n:], y[n:], max(1, shard // 2))
    streamed = knn_accuracy(train, test, 3, k, 0.07, center=True, rows=rows)
    assert streamed == pytest.approx(knn_in_memory(x[:n], y[:n], x[n:], y[n:], 3, k), abs=1e-6)


@pytest.mark.parametrize("protocol", [
    LinearProbe(configs.LinearConfig(features=("pooled",), epochs=10)),
    LowShot(configs.LowShotConfig(per_class=(5,), fractions=(), splits=2)),
])
def test_classifiers_separate_separable_classes_and_not_noise(tmp_path, protocol):
    x, y = blobs()
    good = protocol.run({"pooled": split_sets(tmp_path / "good", x, y)}, CTX)
    assert all(r["accuracy"]["test"] > 0.95 for r in good), good
    noise = torch.randn_like(x)
    bad = protocol.run({"pooled": split_sets(tmp_path / "bad", noise, y)}, CTX)
    assert all(r["accuracy"]["test"] < 0.6 for r in bad), bad


def test_the_linear_grid_trains_every_head_and_picks_on_held_out_rows(tmp_path):
    x, y = blobs(spread=1.0)
    cfg = configs.LinearConfig(features=("pooled",), lrs=(1e-5, 1e-2), weight_decays=(0.0,),
                               batchnorm=(False,), epochs=5)
    [r] = LinearProbe(cfg).run({"pooled": split_sets(tmp_path, x, y)}, CTX)
    assert r["params"]["heads_in_grid"] == 2 and r["params"]["held_out"] == 20
    assert r["params"]["lr"] == 1e-2  # 1e-5 barely moves in 5 epochs
    assert r["accuracy"]["val"] > 0.8
    again = LinearProbe(cfg).run({"pooled": split_sets(tmp_path / "again", x, y)}, CTX)
    assert again == [r]  # seeded: the same numbers on the same features


def test_the_linear_probe_reports_each_feature_kind_it_is_given(tmp_path):
    x, y = blobs()
    sets = {"pooled": split_sets(tmp_path / "p", x, y),
            "last4": split_sets(tmp_path / "l", torch.cat([x, x], 1), y, kind="last4")}
    cfg = configs.LinearConfig(epochs=2, lrs=(1e-2,), weight_decays=(0.0,))
    results = LinearProbe(cfg).run(sets, CTX)
    assert [r["feature_kind"] for r in results] == ["pooled", "last4"]
    assert {r["params"]["heads_in_grid"] for r in results} == {2}  # with and without BN
    assert LinearProbe(cfg).run({"pooled": sets["pooled"]}, CTX)[0]["feature_kind"] == "pooled"


def test_the_attentive_probe_reads_tokens_and_finds_the_informative_one(tmp_path):
    """The class is in one token of eight, at a varying position: a pooler that attends can
    find it; the mean of the tokens cannot separate the classes as well."""
    g = torch.Generator().manual_seed(0)
    n, tokens, dim = 360, 8, 16
    y = torch.arange(n) % 3
    x = torch.randn(n, tokens, dim, generator=g) * 0.5
    where = torch.randint(0, tokens, (n,), generator=g)
    x[torch.arange(n), where, :3] += torch.nn.functional.one_hot(y, 3).float() * 6
    x[torch.arange(n), where, 3] += 6  # marks the informative token
    cfg = configs.AttentiveConfig(epochs=30, lrs=(1e-2,), num_heads=2)
    [r] = AttentiveProbe(cfg).run({"tokens": split_sets(tmp_path, x, y, kind="tokens")}, CTX)
    assert r["accuracy"]["test"] > 0.9, r
    assert AttentiveProbe(cfg).run({"pooled": None}, CTX) == []  # no tokens: nothing to say


def test_lowshot_draws_fixed_per_class_subsets_and_reports_mean_and_std(tmp_path):
    labels = torch.arange(300) % 3
    rows = labelled_rows(labels, 3, 0, "5 per class", 0, per_class=5)
    assert len(rows) == 15 and torch.bincount(labels[rows]).tolist() == [5, 5, 5]
    assert torch.equal(rows, labelled_rows(labels, 3, 0, "5 per class", 0, per_class=5))
    assert not torch.equal(rows, labelled_rows(labels, 3, 0, "5 per class", 1, per_class=5))
    one_percent = labelled_rows(labels, 3, 0, "1%", 0, fraction=0.01)
    assert torch.bincount(labels[one_percent]).tolist() == [1, 1, 1]  # at least one a class
    x, y = blobs(spread=1.0)
    cfg = configs.LowShotConfig(per_class=(1, 10), fractions=(0.1,), splits=3)
    results = LowShot(cfg).run({"pooled": split_sets(tmp_path, x, y)}, CTX)
    assert [r["params"]["labels"] for r in results] == ["1 per class", "10 per class",
                                                         "10% of labels"]
    for r in results:
        assert len(r["per_split"]) == 3 and r["std"]["test"] >= 0
        assert r["accuracy"]["test"] == pytest.approx(sum(r["per_split"]) / 3)
    assert results[0]["accuracy"]["test"] < results[1]["accuracy"]["test"]


def test_rankme_is_the_effective_rank():
    g = torch.Generator().manual_seed(0)
    assert rankme(torch.randn(4000, 32, generator=g)) > 30  # isotropic: close to 32
    rank1 = torch.randn(500, 1, generator=g) @ torch.randn(1, 32, generator=g)
    assert rankme(rank1) < 1.1
    scaled = torch.randn(4000, 32, generator=g) * torch.tensor([1.0] * 4 + [1e-3] * 28)
    assert 4 <= rankme(scaled) < 6


def test_rankme_protocol_uses_a_seeded_subset_of_rows(tmp_path):
    x, y = blobs(300, 16)
    sets = {"pooled": split_sets(tmp_path, x, y)}
    [r] = RankMe(configs.RankMeConfig(max_rows=50)).run(sets, CTX)
    assert r["params"] == {"rows": 50, "dim": 16, "center": True}
    assert "value" in r and "accuracy" not in r
    assert RankMe(configs.RankMeConfig(max_rows=50)).run(sets, CTX) == [r]


# -- protocols as plugins -------------------------------------------------------------------
@attrs.frozen
class MajorityConfig:
    """Predict the most frequent training label."""


class Majority:
    feature_kinds = ("pooled",)

    def run(self, features, context):
        train, test = features["pooled"]
        top = int(torch.bincount(train.labels).argmax())
        return [{"protocol": "majority", "feature_kind": "pooled", "params": {},
                 "accuracy": {"test": float((test.labels == top).float().mean())}}]


class MajorityPlugin:
    @hookimpl
    def register_eval_protocols(self, register):
        register("majority", MajorityConfig, lambda config: Majority())


def test_a_third_party_protocol_runs_from_a_recipe_by_name(tiny_dict, tmp_path):
    from jepa_core.evaluation.runner import evaluate
    from jepa_core.runtime.build import build_encoder

    registry = make_plugin_manager(objects=[("majority_plugin", MajorityPlugin())])
    assert isinstance(Majority(), EvalProtocol)
    tiny_dict["eval"] = {"protocols": ["majority", {"name": "knn", "k": 3}], "max_images": 24}
    tiny_dict["data"] = {"name": "digits"}
    recipe = recipe_from_dict(tiny_dict, registry, "t")
    state = build_encoder(recipe, registry).state_dict()
    results = evaluate(recipe, registry, state, torch.device("cpu"), cache_root=tmp_path)
    seen = {(r["protocol"], r["features"]) for r in results["results"]}
    assert {("majority", "raw pixels"), ("knn", "trained target encoder")} <= seen
    assert results["format"] == 2


def test_protocol_sections_are_validated_by_path(tiny_dict):
    registry = make_plugin_manager()
    tiny_dict["eval"] = {"protocols": ["knnn", {"name": "linear", "lrs": [0.1, -1]},
                                       {"name": "knn", "kk": 3}]}
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(tiny_dict, registry, "t")
    problems = dict(info.value.problems)
    assert "Did you mean 'knn'?" in problems["$.eval.protocols[0].name"]
    assert problems["$.eval.protocols[1].lrs[1]"] == "must be > 0.0 (got -1.0)"
    assert "did you mean 'k'?" in problems["$.eval.protocols[2].kk"]


def test_old_probe_keys_are_accepted_with_a_note(tiny_dict):
    registry = make_plugin_manager()
    tiny_dict["eval"] = {"probe_epochs": 100, "knn_k": 5}
    notes: list[str] = []
    recipe = recipe_from_dict(tiny_dict, registry, "t", notes=notes)
    assert [c.name for c in recipe.eval.protocols] == ["knn", "linear", "rankme"]
    assert any("eval.probe_epochs=100 is no longer used" in n for n in notes)
    assert any("eval.knn_k=5 is no longer used: set k on the knn protocol" in n for n in notes)


def test_without_the_eval_plugin_a_recipe_loads_and_evaluating_says_why_not(tiny_dict):
    from jepa_core.evaluation.runner import NoProtocols, evaluate

    registry = make_plugin_manager(["jepa_image.plugin", "jepa_vit.plugin",
                                    "jepa_objectives.plugin"], autoload=False)
    recipe = recipe_from_dict(tiny_dict, registry, "t")
    assert recipe.eval.protocols == ()
    with pytest.raises(NoProtocols, match="jepa -p jepa_eval.plugin"):
        evaluate(recipe, registry, {}, torch.device("cpu"))


def test_tokens_computed_when_read_give_the_cached_results_and_store_nothing(tiny_dict,
                                                                             tmp_path):
    """eval.tokens=on_the_fly: the attentive probe reads tokens computed shard by shard
    (for token caches that would not fit on disk), with the numbers of the cached ones."""
    from jepa_core.evaluation.runner import evaluate
    from jepa_core.runtime.build import build_encoder

    registry = make_plugin_manager()
    tiny_dict["data"] = {"name": "digits"}
    tiny_dict["eval"] = {"protocols": [{"name": "attentive", "epochs": 2, "lrs": [0.01]}],
                         "max_images": 48, "shard_size": 16}
    results = {}
    for mode in ("cache", "on_the_fly"):
        recipe = recipe_from_dict(tiny_dict, registry, "t", [f"eval.tokens={mode}"])
        state = build_encoder(recipe, registry).state_dict()
        results[mode] = evaluate(recipe, registry, state, torch.device("cpu"),
                                 cache_root=tmp_path / mode)["results"]
        stored = list((tmp_path / mode).rglob("tokens-*.pt"))
        assert bool(stored) == (mode == "cache")
    assert results["cache"] == results["on_the_fly"]
    assert {r["features"] for r in results["cache"]} == {"trained target encoder",
                                                         "random init", "raw pixels"}


def test_auto_computes_tokens_when_read_if_the_cache_would_not_fit(tiny_dict, tmp_path,
                                                                   monkeypatch):
    import io
    import shutil
    from collections import namedtuple

    from rich.console import Console

    from jepa_core.evaluation.runner import evaluate
    from jepa_core.runtime.build import build_encoder

    registry = make_plugin_manager()
    tiny_dict["data"] = {"name": "digits"}
    tiny_dict["eval"] = {"protocols": [{"name": "attentive", "epochs": 1}], "max_images": 24}
    recipe = recipe_from_dict(tiny_dict, registry, "t")
    assert recipe.eval.tokens == "auto"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    out = io.StringIO()
    state = build_encoder(recipe, registry).state_dict()
    evaluate(recipe, registry, state, torch.device("cpu"), cache_root=tmp_path,
             console=Console(file=out, width=300), baseline=False)
    assert "more than half its free disk: computed when read instead" in out.getvalue()
    assert not list(tmp_path.rglob("tokens-*.pt"))
