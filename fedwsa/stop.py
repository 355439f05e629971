"""Stopping a run at a safe point when the user asks (Ctrl-C, ``kill``), instead of mid-write.

The first SIGINT or SIGTERM only records the request; the round loop sees it between rounds
(``requested``), checkpoints and returns, Flower and Ray shut down as after a normal run, and
the command exits with 128 + the signal's number (130, 143). A second signal stops the process
at once, as it would have without fedwsa's handler.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_request: dict[str, int] = {}  # "signal" -> its number once asked; "round" -> where it stopped
_guard = threading.Lock()


def requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _request.get("signal")


def exit_status() -> int:
    """The shell's status for a process ended by the requested signal (130 for SIGINT)."""
    return 128 + int(_request.get("signal", signal.SIGINT))


def note_stopped_after(server_round: int) -> None:
    """The round loop stopped after ``server_round`` (the last round it finished)."""
    _request["round"] = server_round


def stopped_after() -> int | None:
    return _request.get("round")


def clear() -> None:
    _request.clear()


def _handler(signum: int, frame: FrameType | None) -> None:
    with _guard:
        first = "signal" not in _request
        _request.setdefault("signal", signum)
    if first:
        name = signal.Signals(signum).name
        print(f"fedwsa: {name}: stopping after the current round (send it again to stop now)",
              file=sys.stderr, flush=True)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM request a stop (``requested``) instead of killing.

    Must be entered in the main thread after anything that installs its own handlers (Ray's
    ``ray.init`` sets one for SIGTERM that ends the process mid-round); the previous handlers
    come back on exit. Outside the main thread it does nothing (signals go to the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
