"""The third-party example plugin (examples/jepa_checkerboard) works once pip-installed.

It is installed with `pip install --target` into a temporary folder put on PYTHONPATH (for
subprocesses) or sys.path (in process), never into the test venv itself, so other tests see
the registry they expect.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from conftest import install_example

from jepa_core.plugins import make_plugin_manager
from jepa_core.testing import check_masker


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding the installed distribution jepa-checkerboard (package + dist-info)."""
    return install_example(tmp_path_factory, "jepa_checkerboard")


def _env(site):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("JEPA_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


@pytest.mark.slow  # pip-installs the example
def test_jepa_plugins_lists_the_checkerboard_masker(site):
    done = subprocess.run([sys.executable, "-m", "jepa_core", "plugins", "--json"],
                          capture_output=True, text=True, env=_env(site), timeout=120)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    components = listing["components"] if isinstance(listing, dict) else listing
    (entry,) = [c for c in components if c["kind"] == "masker" and c["name"] == "checkerboard"]
    assert entry["distribution"] == "jepa-checkerboard" and entry["version"] == "0.1.0"
    assert entry["plugin"] == "checkerboard"


@pytest.mark.slow  # pip-installs the example
def test_the_entry_module_does_not_import_torch(site):
    code = "import sys, jepa_checkerboard.plugin; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(site), timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def registry_with_example(site):
    sys.path.insert(0, str(site))
    try:
        yield make_plugin_manager()
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m.split(".")[0] == "jepa_checkerboard"]:
            del sys.modules[name]
        importlib.invalidate_caches()


@pytest.mark.slow  # pip-installs the example
def test_the_checkerboard_masker_offers_varied_configs(registry_with_example):
    from hypothesis import find

    from jepa_core.testing import strategies as js

    spec = registry_with_example.get("masker", "checkerboard")
    config = find(js.masker_configs(spec, (8, 8)), lambda c: c.cell == 3 and c.num_targets > 1)
    check_masker(spec.build(config, grid=(8, 8)), 8, 0, allow_overlap=False,
                 rectangular_targets=True)


@pytest.mark.slow  # pip-installs the example
def test_the_checkerboard_masker_honours_the_contract(registry_with_example):
    from jepa_core.errors import ConfigError

    spec = registry_with_example.get("masker", "checkerboard")
    assert spec.distribution == "jepa-checkerboard"
    for grid in [(14, 14), (7, 12), (4, 4)]:
        masker = spec.build(spec.config_class(), grid=grid)
        check_masker(masker, 8, 0, allow_overlap=False, rectangular_targets=True)
    with pytest.raises(ConfigError, match="num_targets"):
        spec.build(spec.config_class(num_targets=9), grid=(4, 4))


AUTHOR_TESTS = '''
from hypothesis import given, settings, strategies as st
from jepa_core.testing import strategies as js


@settings(max_examples=10, deadline=None)
@given(data=st.data(), grid=js.grids(4, 16), batch_size=js.batch_sizes(8), seed=js.seeds())
def test_checkerboard(data, grid, batch_size, seed, jepa_registry, masker_contract):
    spec = jepa_registry.get("masker", "checkerboard")
    config = data.draw(js.masker_configs(spec, grid))  # from the plugin's hypothesis_configs
    masker = spec.build(config, grid=grid)
    masker_contract(masker, batch_size, seed, allow_overlap=False, rectangular_targets=True)


def test_generator(jepa_mask_generator):
    assert jepa_mask_generator(0, 1).initial_seed() != jepa_mask_generator(0, 2).initial_seed()
'''


@pytest.mark.slow  # pip-installs the example
def test_an_authors_suite_runs_with_the_pytest_plugin(site, tmp_path):
    (tmp_path / "test_author.py").write_text(AUTHOR_TESTS)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-p", "jepa_core.testing.pytest_plugin", str(tmp_path / "test_author.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(site), cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
