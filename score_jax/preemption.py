"""Preemption: a SIGTERM context manager for entry points, and multi-host agreement.

Library code never installs a signal handler: ``train_and_evaluate`` and ``evaluate_workdir``
take a ``should_stop`` callable (e.g. ``Preemption.is_set`` or a ``threading.Event().is_set``)
and ask `agree` at synchronised points. The entry points (train.py, evaluate.py) wrap the call::

    with preemption.sigterm() as stop:
        train_lib.train_and_evaluate(config, workdir, should_stop=stop.is_set)
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np


@contextlib.contextmanager
def sigterm() -> Iterator[threading.Event]:
    """Install a SIGTERM handler that sets the yielded event; the previous handler is restored
    on exit. Outside the main thread (where Python refuses handlers) nothing is installed and
    the event is only set by the caller."""
    event = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: event.set())
    try:
        yield event
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def never() -> bool:
    """The default ``should_stop``: never stop."""
    return False


def agree(should_stop: Callable[[], bool], *, sync: bool = True) -> bool:
    """``should_stop()`` of this process or, with ``sync`` and several processes, of any process
    (an all-gather: every process must call it at the same point, or the others wait)."""
    flag = bool(should_stop())
    if sync and jax.process_count() > 1:
        from jax.experimental import multihost_utils
        flag = bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
    return flag


__all__ = ["sigterm", "never", "agree"]
