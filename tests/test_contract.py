"""The masker contract kit catches the bugs plugin authors actually write: a masker that
re-seeds its own generator, one that keeps state between calls, one that hangs (under
hypothesis too, without shrinking and without leaving a thread behind)."""

from __future__ import annotations

import ast
import inspect
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

from jepa_core.interfaces import MaskBatch
from jepa_core.testing import check_masker
from jepa_core.testing import strategies as js
from jepa_core.testing.contract import MaskerTimeout


class Shuffled:
    """A correct masker: a random half of a 4x4 grid as context, 4 others as one target."""

    grid = (4, 4)

    def __init__(self):
        self.calls = 0

    def draw(self, batch_size, generator):
        order = torch.rand(batch_size, 16, generator=generator).argsort(1)
        return MaskBatch(order[:, :8].contiguous(), order[:, 8:12].reshape(batch_size, 1, 4))

    def __call__(self, batch_size, generator):
        self.calls += 1
        return self.draw(batch_size, generator)

    def __repr__(self):
        return type(self).__name__ + "()"


class ReseedsItsOwn(Shuffled):
    def __call__(self, batch_size, generator):
        return self.draw(batch_size, torch.Generator().manual_seed(1234))


class ReseedsTheGivenOne(Shuffled):
    def __call__(self, batch_size, generator):
        generator.manual_seed(1234)
        return self.draw(batch_size, generator)


class Drifts(Shuffled):
    def __init__(self, from_call):
        super().__init__()
        self.from_call = from_call

    def __call__(self, batch_size, generator):
        masks = super().__call__(batch_size, generator)
        if self.calls >= self.from_call:  # e.g. a cache that fills up, a count of calls
            return MaskBatch(masks.context.flip(1), masks.targets)
        return masks


class OwnGeneratorFromInit(Shuffled):
    def __init__(self):
        super().__init__()
        self.own = torch.Generator().manual_seed(0)

    def __call__(self, batch_size, generator):
        return self.draw(batch_size, self.own)


class Fixed(Shuffled):
    """Deterministic by design: the same masks whatever the generator."""

    def __call__(self, batch_size, generator):
        patches = torch.arange(16).expand(batch_size, -1)
        return MaskBatch(patches[:, :8].contiguous(), patches[:, 8:12].reshape(batch_size, 1, 4))


class OneOutcome(Shuffled):
    """Draws from its generator, but on this config only one outcome exists."""

    def __call__(self, batch_size, generator):
        start = int(torch.randint(1, (1,), generator=generator))  # always 0
        patches = torch.arange(start, start + 16).expand(batch_size, -1)
        return MaskBatch(patches[:, :8].contiguous(), patches[:, 8:12].reshape(batch_size, 1, 4))


class Hangs(Shuffled):
    """Redraws until something impossible happens, and swallows every Exception."""

    def __init__(self, from_call=1):
        super().__init__()
        self.from_call = from_call

    def __call__(self, batch_size, generator):
        masks = super().__call__(batch_size, generator)
        while self.calls >= self.from_call:
            try:
                torch.rand(1, generator=generator)
            except Exception:
                pass
        return masks


def test_a_correct_masker_passes():
    masker = Shuffled()
    check_masker(masker, 4, 0, allow_overlap=False)
    assert masker.calls >= 10  # the first call, then the interleaved repeats


@pytest.mark.parametrize("masker, how", [
    (ReseedsItsOwn(), "never draws from the generator it is given"),
    (ReseedsTheGivenOne(), "re-seeds the generator it is given"),
])
def test_a_masker_that_reseeds_is_caught(masker, how):
    with pytest.raises(AssertionError) as caught:
        check_masker(masker, 4, 0)
    message = str(caught.value)
    assert message.startswith(f"{masker!r} fails 'masks depend on the generator': the same "
                              f"masks for 32 different generator seeds")
    assert how in message and "deterministic=True" in message


@pytest.mark.parametrize("from_call, caught_at", [
    (3, "call 3 (call number 2 with generator seed 5)"),
    (6, "call 6 (call number 4 with generator seed 5)"),
    (10, "call 10 (call number 2 with generator seed "),  # the last call: another seed
])
def test_a_masker_with_state_kept_between_calls_is_caught(from_call, caught_at):
    with pytest.raises(AssertionError) as caught:
        check_masker(Drifts(from_call), 4, 5)
    message = str(caught.value)
    assert message.startswith("Drifts() fails 'same masks for the same generator seed': ")
    assert caught_at in message and "gave a different `context`" in message
    assert "state kept from one call to the next" in message


def test_a_masker_with_a_generator_of_its_own_is_caught():
    with pytest.raises(AssertionError, match="'same masks for the same generator seed'"):
        check_masker(OwnGeneratorFromInit(), 4, 0)


def test_a_deterministic_masker_declares_itself():
    with pytest.raises(AssertionError, match="never draws from the generator"):
        check_masker(Fixed(), 4, 0)
    check_masker(Fixed(), 4, 0, deterministic=True)
    with pytest.raises(AssertionError, match="'deterministic=True': generator seeds 0 and"):
        check_masker(Shuffled(), 4, 0, deterministic=True)


def test_a_masker_with_one_possible_outcome_passes():
    check_masker(OneOutcome(), 4, 0)  # it does draw from the generator


def _threads():
    return {t.ident for t in threading.enumerate()}


def test_a_hanging_masker_fails_once_under_hypothesis_and_leaves_nothing_running():
    maskers = []
    before = _threads()

    @settings(max_examples=50, database=None, deadline=None)
    @given(batch_size=js.batch_sizes(8), seed=js.seeds())
    def contract(batch_size, seed):
        maskers.append(Hangs())
        check_masker(maskers[-1], batch_size, seed, time_limit_s=0.3)

    with pytest.raises(MaskerTimeout) as caught:
        contract()
    assert len(maskers) == 1 and maskers[0].calls == 1  # no shrinking, no second example
    assert not isinstance(caught.value, AssertionError)
    message = str(caught.value)
    assert message.startswith("Hangs() fails 'terminates': a batch of ")
    assert "ran past time_limit_s=0.3 s and was stopped" in message
    assert _threads() == before
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_the_time_limit_covers_every_call_not_only_the_first():
    masker = Hangs(from_call=3)
    with pytest.raises(MaskerTimeout, match="Hangs\\(\\) fails 'terminates'"):
        check_masker(masker, 4, 0, time_limit_s=0.3)
    assert masker.calls == 3


def test_a_hanging_masker_is_stopped_outside_the_main_thread_too():
    outcome = {}

    def run():
        try:
            check_masker(Hangs(), 4, 0, time_limit_s=0.3)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)  # a safety net for a broken kit, not a timing target
    assert not worker.is_alive()
    assert isinstance(outcome["error"], MaskerTimeout)


def test_an_outer_alarm_is_kept():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 300)
        check_masker(Shuffled(), 4, 0)
        with pytest.raises(MaskerTimeout):
            check_masker(Hangs(), 4, 0, time_limit_s=0.2)
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < left <= 300 and not fired
        assert signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_help_shows_the_public_api_and_importing_stays_cheap():
    code = textwrap.dedent("""
        import pydoc, sys
        import jepa_core.testing as testing
        assert "torch" not in sys.modules and "hypothesis" not in sys.modules
        print(pydoc.render_doc(testing, renderer=pydoc.plaintext))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for name, line in [("check_masker(masker", "run every check a `Masker` must pass"),
                       ("MaskerTimeout", "runs past `time_limit_s`"),
                       ("strategies", "hypothesis strategies: grids"),
                       ("contract", "the contract's single checks")]:
        assert name in text and line in text, name
    assert "check_masker(masker: 'Any', batch_size: 'int' = 8" in text  # the function itself
    import jepa_core.testing as testing

    assert {"check_masker", "MaskerTimeout", "strategies", "contract"} <= set(dir(testing))
    assert testing.MaskerTimeout is MaskerTimeout


def _documented_signatures():
    """(name, [(param, default text or None)]) of each function in the tables of
    docs/hooks.md's sections on validators and on jepa_core.testing."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "hooks.md").read_text()
    start, end = text.index("## Validators for config fields"), text.index("## Registration hooks")
    rows = re.findall(r"^\| `(\w+)\((.*?)\)(?: -> [^`]*)?` \|", text[start:end], re.MULTILINE)
    for name, params in rows:
        parsed = []
        for part in params.replace("\\|", "|").split(", "):
            if part.strip() in ("", "*"):
                continue
            head, _, default = part.partition("=")
            parsed.append((head.split(":")[0].strip(), default.strip() or None))
        yield name, parsed


def test_docs_give_the_real_signature_of_every_validator_and_check():
    import jepa_core.validate as validate
    from jepa_core.testing import contract

    documented = dict(_documented_signatures())
    assert {"greater", "range_pair", "check_masker", "check_uses_generator", "masker_configs",
            "configs_from_fields"} <= set(documented)
    for name, params in documented.items():
        function = next(getattr(m, name) for m in (validate, contract, js) if hasattr(m, name))
        real = inspect.signature(function).parameters
        assert [p for p, _ in params] == list(real), name
        for param, default in params:
            if default is not None:
                assert ast.literal_eval(default) == real[param].default, (name, param)
