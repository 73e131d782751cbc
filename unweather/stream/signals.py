"""SIGINT and SIGTERM as a request to finish: stop reading, drain, close the output; a second one stops at once."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[list[int]]:
    """Set `stop` on the first SIGINT/SIGTERM and raise KeyboardInterrupt on the next one.

    Yields the list of signals received (empty when none), so the caller can exit with 128 + signal.
    Outside the main thread (where Python cannot install handlers) it only yields.
    """
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        received.append(signum)
        logger.warning("%s: finishing the frames read so far (again to stop at once)", signal.Signals(signum).name)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
