"""Keeping native libraries' chatter off the user's terminal.

MediaPipe and TensorFlow Lite write a dozen lines to file descriptor 2 whenever a graph is
built; Python's ``sys.stderr`` cannot catch them, so the descriptor itself is redirected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
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


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """For a short native call in the main process (Python exceptions still propagate)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
