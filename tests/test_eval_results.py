"""What `jepa eval` and `jepa run` report as evaluation results: a split with no readable image
or too few for a protocol is refused (exit 2), a protocol plugin that raises or returns garbage
is named and its failure recorded beside the other protocols' results, and the closing summary
of `jepa run` speaks only of what that invocation evaluated."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, train_tiny
from PIL import Image

from jepa_core.commands.cli import main
from jepa_core.commands.compare import CompareError, compare
from jepa_core.errors import ConfigError, PluginError
from jepa_core.interfaces import PROTOCOLS, EvalContext, EvalProtocol
from jepa_core.plugins import make_plugin_manager
from jepa_core.recipe import recipe_from_dict

KNN_LINEAR = "eval.protocols=[{name: knn, k: 3}, {name: linear, epochs: 1, features: [pooled]}]"


def flat(text: str) -> str:
    return " ".join(" ".join(line.strip(" │╭╮╰╯─") for line in text.splitlines()).split())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory)


def folder(root: Path, per_class: int, readable: bool = True) -> Path:
    """root/c0, root/c1 of `per_class` real PNGs each (or files that are not images)."""
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            path = root / f"c{c}" / f"{i}.png"
            if readable:
                Image.new("RGB", (24, 24), colour).save(path)
            else:
                path.write_bytes(b"not a png at all")
    return root


def eval_args(run: Path, train_root: Path, val_root: Path, *extra: str) -> list[str]:
    return ["eval", str(run), "--no-baseline", "data.name=image_folder",
            f"data.root={train_root}", f"data.val_root={val_root}",
            f"eval.cache_dir={run.parent / 'features'}", *extra]


# -- item 3: empty splits, splits too small for a protocol ----------------------------------
@pytest.mark.parametrize("side", ["test", "train"])
def test_a_split_with_no_readable_image_is_refused_with_exit_2(run_dir, tmp_path, capsys,
                                                               side):
    """Before: every protocol wrote test 0.0 into eval.json and the command exited 0."""
    good = folder(tmp_path / "good", 3)
    bad = folder(tmp_path / "bad", 3, readable=False)
    train_root, val_root = (good, bad) if side == "test" else (bad, good)
    (run_dir / "eval.json").unlink(missing_ok=True)
    assert main(eval_args(run_dir, train_root, val_root, KNN_LINEAR)) == 2
    err = flat(capsys.readouterr().err)
    what, root = ("test", "val_root") if side == "test" else ("probe-training", "root")
    assert (f"the {what} split ({root} {bad}: 6 images) has no readable image: all 6 of its "
            f"images are unreadable") in err
    assert "Traceback" not in err
    assert not (run_dir / "eval.json").exists()


def test_a_split_too_small_for_a_protocol_is_refused_and_the_others_kept(run_dir, tmp_path,
                                                                         capsys):
    """Before: kNN with k=20 voted with the 12 images there were, low-shot "7 per class" drew
    6 of each, and both were reported as if they had done what they say."""
    train_root, val_root = folder(tmp_path / "train", 6), folder(tmp_path / "val", 2)
    protocols = ("eval.protocols=[{name: knn, k: 20}, {name: linear, epochs: 1, features: "
                 "[pooled]}, {name: lowshot, per_class: [7], fractions: [], splits: 1}]")
    assert main(eval_args(run_dir, train_root, val_root, protocols)) == 2
    err = flat(capsys.readouterr().err)
    assert ("knn with k=20 (the k nearest training images vote) needs at least 20 "
            "probe-training images, and the split has 12 readable: lower k") in err
    assert "lowshot per_class=7 draws 7 probe-training images of each class, and class 0 has 6"\
        in err
    saved = json.loads((run_dir / "eval.json").read_text())
    assert {r["protocol"] for r in saved["results"]} == {"linear"}
    assert [(f["protocol"], f["plugin"], f["exit_code"]) for f in saved["failed"]] == [
        ("knn", "eval", 2), ("lowshot", "eval", 2)]


def one_image_sets(tmp_path: Path, kind: str = "pooled"):
    from test_eval_protocols import cached

    x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    return {kind: (cached(tmp_path / "a", x[:1], y[:1], 8, kind),
                   cached(tmp_path / "b", x[1:], y[1:], 8, kind))}


@pytest.mark.parametrize("name", ["linear", "rankme", "lowshot", "knn"])
def test_protocols_refuse_one_training_image(tmp_path, name):
    """Before: the linear probe trained on nothing and picked its head on the one image,
    rankme gave the rank of one row, low-shot raised inside scikit-learn (one class)."""
    registry = make_plugin_manager()
    spec = registry.get("eval_protocol", name)
    config = spec.config_class(**({"k": 2} if name == "knn" else {}))
    protocol = spec.build(config)
    with pytest.raises(ConfigError):
        protocol.run(one_image_sets(tmp_path), EvalContext(2, 0, torch.device("cpu")))


def test_the_linear_probe_trains_when_a_minibatch_holds_one_row(tmp_path):
    """72 training rows, 7 held out, batch 64: the last minibatch has one row, which the
    BatchNorm heads refused in training mode (a ValueError, now a failed protocol)."""
    from test_eval_protocols import cached

    from jepa_eval import configs
    from jepa_eval.linear import LinearProbe

    x, y = torch.randn(80, 8), torch.arange(80) % 3
    sets = {"pooled": (cached(tmp_path / "a", x[:72], y[:72], 4096),
                       cached(tmp_path / "b", x[72:], y[72:], 4096))}
    probe = LinearProbe(configs.LinearConfig(features=("pooled",), epochs=1, batch_size=64))
    [result] = probe.run(sets, EvalContext(3, 0, torch.device("cpu")))
    assert result["params"]["held_out"] == 7 and 0 <= result["accuracy"]["test"] <= 1


# -- item 10: a protocol plugin that raises or returns garbage ------------------------------
BAD_PROTOCOLS = '''
import attrs
from jepa_core.hookspecs import hookimpl


@attrs.frozen
class Cfg:
    """Nothing to set."""


class Explodes:
    feature_kinds = ("pooled",)

    def run(self, features, context):
        raise ValueError("the probe fell over")


class Garbage:
    feature_kinds = ("pooled",)

    def run(self, features, context):
        return [{"feature_kind": "pooled", "accuracy": {"test": 95.0}}]


@hookimpl
def register_eval_protocols(register):
    register("explodes", Cfg, lambda config: Explodes())
    register("garbage", Cfg, lambda config: Garbage())
'''


def test_a_failing_protocol_plugin_is_named_and_the_others_results_kept(run_dir, tmp_path,
                                                                        capsys, monkeypatch):
    """Before: the raising protocol was a traceback and nothing was written; the garbage one
    was written into eval.json (9500%) and the command exited 0."""
    (tmp_path / "bad_protocols.py").write_text(BAD_PROTOCOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("COLUMNS", "400")  # the path in the message stays on one line
    train_root, val_root = folder(tmp_path / "train", 6), folder(tmp_path / "val", 2)
    protocols = "eval.protocols=[explodes, {name: knn, k: 3}, garbage]"
    argv = ["-p", "bad_protocols", *eval_args(run_dir, train_root, val_root, protocols)]
    assert main(argv) == 1
    err = flat(capsys.readouterr().err)
    line = 1 + BAD_PROTOCOLS.splitlines().index('        raise ValueError("the probe fell over")')
    assert ("eval protocol 'explodes' of plugin 'bad_protocols' (no distribution) failed on "
            "the trained target encoder features: ValueError: the probe fell over (raised at "
            f"{tmp_path / 'bad_protocols.py'}:{line})") in err
    assert ("eval protocol 'garbage' of plugin 'bad_protocols' (no distribution) failed on the "
            "trained target encoder features: it returned results that break the EvalProtocol "
            "contract: result 0: 'accuracy' must map splits ('test' among them) to fractions "
            "in [0, 1] (got {'test': 95.0})") in err
    assert "jepa eval: plugin failed" in err and "Traceback" not in err
    saved = json.loads((run_dir / "eval.json").read_text())
    assert [r["protocol"] for r in saved["results"]] == ["knn"]
    assert [(f["protocol"], f["plugin"], f["features"]) for f in saved["failed"]] == [
        ("explodes", "bad_protocols", "trained target encoder"),
        ("garbage", "bad_protocols", "trained target encoder")]
    # the kept results still compare, and the comparison says why a protocol's row is empty
    assert main(["eval", str(run_dir), str(run_dir)]) == 0
    out = flat(capsys.readouterr().out)
    assert "knn" in out
    assert (f"note: {run_dir}: protocol explodes (plugin bad_protocols) on the trained target "
            f"encoder features: ValueError: the probe fell over") in out


GOOD = {"protocol": "p", "feature_kind": "pooled", "accuracy": {"val": 1, "test": 0.5}}


@pytest.mark.parametrize("returned, problem", [
    ({"feature_kind": "pooled"}, "not a list"),
    ([["pooled", 0.5]], "is a list, not a dict"),
    ([{**GOOD, "feature_kind": "tokens"}], "'feature_kind' must be one of"),
    ([{**GOOD, "accuracy": {"val": 0.5}}], "'test' among them"),
    ([{**GOOD, "accuracy": {"test": math.nan}}], "fractions in [0, 1]"),
    ([{**GOOD, "accuracy": {"test": True}}], "fractions in [0, 1]"),
    ([{**GOOD, "value": 3.0}], "exactly one of 'accuracy'"),
    ([{"feature_kind": "pooled", "value": math.inf}], "'value' must be a finite number"),
    ([{**GOOD, "std": {"test": -0.1}}], "'std' must map"),
    ([{**GOOD, "setting": 5}], "'setting' must be a str"),
    ([{**GOOD, "params": {"w": torch.zeros(1)}}], "cannot be written to eval.json"),
    ([{**GOOD, "protocol": ""}], "'protocol' must be a name"),
])
def test_what_a_protocol_returns_is_checked(returned, problem):
    from jepa_core.evaluation.protocols import check_results

    problems = check_results(returned, ("pooled",))
    assert problems and problem in problems[0]


def test_first_party_results_keep_the_contract(tmp_path):
    from jepa_core.evaluation.protocols import check_results

    assert check_results([GOOD, {"feature_kind": "pooled", "value": 2.5, "params": {}},
                          {**GOOD, "setting": "1 per class", "std": {"test": 0.0}}],
                         ("pooled",)) == []


def test_eval_protocol_is_in_the_conformance_table():
    """A factory returning something without run()/feature_kinds is refused at build,
    naming the plugin, as for every other kind."""
    from jepa_core.evaluation.runner import build_protocols

    assert PROTOCOLS["eval_protocol"] is EvalProtocol

    class NotAProtocol:
        pass

    class Plugin:
        from jepa_core.hookspecs import hookimpl

        @hookimpl
        def register_eval_protocols(self, register):
            from test_eval_protocols import MajorityConfig

            register("hollow", MajorityConfig, lambda config: NotAProtocol())

    registry = make_plugin_manager(objects=[("hollow_plugin", Plugin())])
    d = copy.deepcopy(TINY)
    d["eval"] = {"protocols": ["hollow"]}
    with pytest.raises(PluginError, match="plugin 'hollow_plugin' built eval_protocol 'hollow'"
                                          ".*lacks `feature_kinds`, `run\\(\\)`"):
        build_protocols(recipe_from_dict(d, registry, "t"), registry)


def test_compare_refuses_an_eval_json_without_results(tmp_path):
    for name, failed in (("a", []), ("b", [{"protocol": "knn"}])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(
            {"format": 2, "results": [], "failed": failed}))
    with pytest.raises(CompareError, match="holds no results to compare: its 'results' list "
                                           "is empty"):
        compare([str(tmp_path / "a"), str(tmp_path / "a")])
    with pytest.raises(CompareError, match="every protocol failed \\(knn"):
        compare([str(tmp_path / "b"), str(tmp_path / "b")])


# -- item 15: the summary of `jepa run` ------------------------------------------------------
def test_the_run_summary_does_not_claim_an_earlier_eval_json(tmp_path, capsys):
    """Before: a run that evaluated nothing said "eval.json the probe accuracies above" of an
    eval.json an earlier command wrote."""
    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path / "runs")
    d["train"]["max_steps"] = 2
    d["data"] = {"name": "digits"}
    d["eval"] = {"after_train": True, "max_images": 40, "protocols": [{"name": "knn", "k": 3}]}
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(d))
    run = tmp_path / "runs" / "tiny"
    assert main(["run", str(recipe)]) == 0
    out = flat(capsys.readouterr().out)
    assert "eval.json the probe accuracies above, and which images they used" in out

    assert main(["run", str(recipe), "--resume", "auto", "eval.after_train=false"]) == 0
    out = flat(capsys.readouterr().out)
    assert "probe accuracies above" not in out
    assert (f"eval.json from an earlier evaluation of step 2 (end of training): this "
            f"invocation evaluated nothing (nothing printed above); `jepa eval {run}` "
            f"evaluates the newest checkpoint") in out


def test_jepa_run_lists_its_outputs_then_names_the_failed_protocol(tmp_path, capsys,
                                                                   monkeypatch):
    """Training succeeded: its outputs are listed, eval.json holds the kept results, and the
    command exits 1 naming the protocol's plugin (before: a traceback, nothing listed)."""
    (tmp_path / "bad_protocols.py").write_text(BAD_PROTOCOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("COLUMNS", "400")
    d = copy.deepcopy(TINY)
    d["out_dir"] = str(tmp_path / "runs")
    d["train"]["max_steps"] = 1
    d["eval"] = {"after_train": True, "max_images": 24,
                 "protocols": ["explodes", {"name": "knn", "k": 3}]}
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(d))
    assert main(["-p", "bad_protocols", "run", str(recipe)]) == 1
    captured = capsys.readouterr()
    out, err = flat(captured.out), flat(captured.err)
    assert ('eval.json the probe accuracies above, and which images they used; 1 protocol '
            'failure(s) under "failed"') in out
    assert "eval protocol 'explodes' of plugin 'bad_protocols'" in err
    saved = json.loads((tmp_path / "runs" / "tiny" / "eval.json").read_text())
    assert {r["protocol"] for r in saved["results"]} == {"knn"}
