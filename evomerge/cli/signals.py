"""TERM and HUP end a command the way Ctrl-C does.

Python's default for SIGTERM and SIGHUP is to die at once, skipping every ``finally``: a
merge killed so left its 30-50 MB temporary directory beside the output. Here both raise
:class:`Terminated`, a ``KeyboardInterrupt``, in the main thread, so the cleanup Ctrl-C gets
runs (temporary files removed, a search's in-flight trials marked interrupted). A search
still takes SIGTERM for its own clean stop while it runs (Slurm's preemption signal).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

__all__ = ["Terminated", "terminate_like_interrupt"]


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM or SIGHUP; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: Any) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """The handlers, while the block runs (main thread only; elsewhere nothing changes);
    the previous ones are restored after it."""
    old = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, _raise)
    except ValueError:  # not the main thread (e.g. the CLI called from a worker thread)
        pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
