"""Knowing, from the first instant, that the process is shutting down: `/readyz` turns 503 at once.

The lifespan's shutdown begins only once uvicorn has drained the requests, too late for readiness;
uvicorn's own `Server.should_exit` is out of the app's reach. So while the app runs, SIGTERM and
SIGINT go first to `ShutdownSignal`, which notes the signal and hands it on to the handler that was
there (uvicorn's, which starts the drain). Plain `signal.signal` on the main thread, as uvicorn does;
elsewhere (an app served from a thread) nothing is installed and the flag stays down.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class ShutdownSignal:
    """`started` turns true when the process receives SIGTERM (or SIGINT), and stays true."""

    def __init__(self) -> None:
        self.started = False

    @contextmanager
    def watching(self) -> Iterator[ShutdownSignal]:
        """Chain this flag before the current handlers of SIGTERM and SIGINT; put them back on exit."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous: dict[int, _Handler] = {}
        for sig in SIGNALS:
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._chained(previous[sig]))
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _chained(self, previous: _Handler) -> Callable[[int, FrameType | None], None]:
        def handle(sig: int, frame: FrameType | None) -> None:
            self.started = True
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_DFL:  # nobody else listens: the default (exit) as before
                signal.signal(sig, signal.SIG_DFL)
                signal.raise_signal(sig)

        return handle


@contextmanager
def exiting_zero() -> Iterator[None]:
    """Around `uvicorn.run`: SIGTERM and SIGINT, outside uvicorn's own handlers, end the process with status 0.

    Once drained, uvicorn raises again the signal that stopped it, under the handler that was there
    before it started (by default: death by SIGTERM, status 143). For the gateway a drained shutdown is
    the orderly end, so that handler exits 0; a signal before uvicorn listens stops it the same way."""
    previous = {sig: signal.signal(sig, _exit_zero) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_zero(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
