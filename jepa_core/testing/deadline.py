"""Run one call under a time limit and stop it where it is when the limit passes.

    with deadline(5.0):
        masks = masker(batch_size, generator)   # raises Expired after 5 s

In the main thread (where pytest runs tests) a SIGALRM timer interrupts the call; in any other
thread a trace function does. Either way the exception is raised inside the running call, so
nothing is left running afterwards (a thread could not be stopped). A call stuck inside one C
function that never returns to Python (rare for a sampler, which loops in Python) is stopped
only when that function returns.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any


class Expired(BaseException):
    """Raised inside the call when its time is up. A BaseException, so that the call's own
    `except Exception:` blocks cannot swallow it."""


@contextlib.contextmanager
def deadline(limit_s: float) -> Iterator[None]:
    """Raise `Expired` inside the block once it has run `limit_s` seconds (inf: never)."""
    if not limit_s > 0:
        raise ValueError(f"a time limit must be > 0 seconds (got {limit_s})")
    if limit_s == float("inf"):
        yield
    elif hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        with _alarm(limit_s):
            yield
    else:
        with _traced(limit_s):
            yield


def _expire(_signum: int, _frame: Any) -> None:
    raise Expired


@contextlib.contextmanager
def _alarm(limit_s: float) -> Iterator[None]:
    # An outer timer (pytest-timeout's signal method) is paused and re-armed afterwards with
    # what was left of it, so it fires at most `limit_s` late.
    old_handler = signal.signal(signal.SIGALRM, _expire)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, limit_s)
    start = time.monotonic()
    try:
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)  # one-shot: if it already fired, no-op
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(old_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


@contextlib.contextmanager
def _traced(limit_s: float) -> Iterator[None]:
    end = time.monotonic() + limit_s
    previous = sys.gettrace()

    def tracer(_frame: Any, _event: str, _arg: Any) -> Any:
        if time.monotonic() > end:
            raise Expired
        return tracer

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)
