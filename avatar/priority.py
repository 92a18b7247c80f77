"""Lowering one thread's CPU priority: the server's background work (speech synthesis,
the motion bank's decoding) yields the cores to the renderer's lane, which has a frame due
every 40 ms."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def lower_thread_priority(nice: int) -> bool:
    """Run the calling thread at niceness ``nice`` at least (Linux, where a thread has its
    own; any user may lower a thread's priority, not raise it); whether it changed."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) >= nice:
            return False
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as e:  # a sandbox that forbids it: the thread runs as it was
        log.debug("thread %s priority unchanged (%s)", threading.current_thread().name, e)
        return False
    return True
