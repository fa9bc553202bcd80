"""The third-party example method (examples/jepa_stopgrad) works once pip-installed: listed by
`jepa plugins`, trained by `jepa run` through the generic loop, evaluated by name.

Installed with `pip install --target` into a temporary folder put on PYTHONPATH for the
subprocesses, never into the test venv, so other tests see the registry they expect."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import TINY, install_example

from jepa_core.runtime import checkpoint as ckpt

pytestmark = pytest.mark.slow  # pip-installs the example, then trains (~17 s here)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return install_example(tmp_path_factory, "jepa_stopgrad")


def _jepa(site, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("JEPA_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([sys.executable, "-m", "jepa_core", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_the_example_method_is_listed_and_trains_through_the_core(site, tmp_path):
    listing = _jepa(site, "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    components = data["components"] if isinstance(data, dict) else data
    (entry,) = [c for c in components if c["kind"] == "method" and c["name"] == "stopgrad_jepa"]
    assert entry["distribution"] == "jepa-stopgrad"

    d = copy.deepcopy(TINY)
    d.pop("target_updater")
    d["method"] = {"name": "stopgrad_jepa"}
    d["out_dir"] = str(tmp_path / "runs")
    d["train"].update(max_steps=2, device="cpu")
    recipe = tmp_path / "stopgrad.yaml"
    recipe.write_text(yaml.safe_dump(d))
    done = _jepa(site, "run", str(recipe))
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = tmp_path / "runs" / "tiny"
    state = ckpt.load(ckpt.list_checkpoints(run_dir / "checkpoints")[-1])
    assert sorted(state["modules"]) == ["encoder", "predictor"]
    assert (state["method"], state["eval_module"], state["step"]) == ("stopgrad_jepa", "encoder", 2)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["prediction"] == pytest.approx(rows[-1]["loss"])

    refused = _jepa(site, "check", str(recipe), "target_updater={name: ema}")
    assert refused.returncode == 2
    assert "method 'stopgrad_jepa' does not use a target_updater" in refused.stderr
