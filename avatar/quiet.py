"""Keeping native libraries' chatter off the user's terminal.

MediaPipe and TensorFlow Lite write a dozen lines to file descriptor 2 whenever a graph is
built; Python's ``sys.stderr`` cannot catch them, so the descriptor itself is redirected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator


def silence_native_stderr_for_good() -> None:
    """Worker processes: fd 2 goes to /dev/null, Python's logging keeps the real stderr."""
    real = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(real, "w", buffering=1)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                        format="%(levelname)s %(name)s: %(message)s")


class _Silencer:
    """fd 2 is process-wide: threads silencing at once share one redirection, made by the
    first in and undone by the last out (each saving and restoring its own view of fd 2
    left it on /dev/null for good after overlapping calls: every later log line lost)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved = -1

    def enter(self) -> None:
        with self.lock:
            if self.users == 0:
                sys.stderr.flush()
                self.saved = os.dup(2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
            self.users += 1

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                os.dup2(self.saved, 2)
                os.close(self.saved)
                self.saved = -1


_SILENCER = _Silencer()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """For a short native call in the main process (Python exceptions still propagate);
    safe from several threads at once."""
    _SILENCER.enter()
    try:
        yield
    finally:
        _SILENCER.leave()
