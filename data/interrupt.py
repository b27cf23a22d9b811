"""SIGINT / SIGTERM as an exception with the shell's exit code, and sections a signal does not cut in two.

A batch tool (``inference_hf.py``, ``prepare_data.py``) runs inside :func:`signals_raise`: Ctrl-C (SIGINT) and
a scheduler's SIGTERM (SLURM preemption, ``kill``) raise :class:`Interrupted` in the main thread, which the
tool turns into one line and exit code ``128 + signal`` (130, 143), after recording what it finished. Writing
an output and recording it in the manifest is one :func:`protected` section: a signal that arrives inside it is
held until the section ends, so no file is ever on disk without its record (which a rerun would otherwise take
for an input). SIGKILL cannot be caught; the manifests bound what it can lose to the file being written.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Interrupted", "protected", "signals_raise"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"depth": 0, "pending": None}  # protected-section nesting, and a signal held until it ends


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signum``; ``exit_code`` is the shell's ``128 + signum`` (SIGINT 130, SIGTERM 143)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
        super().__init__(f"interrupted by {self.name}")


def _handler(signum, frame) -> None:
    if _state["depth"]:
        _state["pending"] = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` while inside (main thread only: elsewhere, e.g. in the app's
    worker threads, nothing is installed). The previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def protected() -> Iterator[None]:
    """A section SIGINT / SIGTERM do not interrupt: a signal arriving inside is raised as :class:`Interrupted`
    when the outermost section ends (unless the section itself failed)."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    if not _state["depth"] and _state["pending"] is not None:
        signum, _state["pending"] = _state["pending"], None
        raise Interrupted(signum)
