"""The C allocator's settings for a long-running server process.

glibc gives each thread that allocates its own arena, up to eight per core, and an arena
only shrinks from its top: memory freed in the middle stays with the process. A server's
threads (event loop, render lanes, the motion bank, synthesis, the encoders' executor) each
churn through frame-sized buffers, so the freed holes spread over many arenas and RSS
creeps. In 15-minute soaks on a 2-core Xeon (``twincast bench soak --minutes 15``, two
talking sessions and a third joining every minute) RSS grew 3.2 MB a minute after warm-up
with glibc's default and 0.15 MB a minute with two arenas, for the same CPU (1.30 and 1.25
cores).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

SERVER_ARENAS = 2
"""Arenas a server process allocates from (glibc's default on a 2-core host: 16)."""
M_ARENA_MAX = -8
"""``mallopt``'s parameter number for the arena limit (glibc's malloc.h)."""


def limit_malloc_arenas(n: int = SERVER_ARENAS) -> bool:
    """Limit the C allocator to ``n`` arenas; True where it took. Call it first thing in
    the process, before threads allocate: glibc settles its limit when the arenas it has
    first outnumber its threshold, and arenas made before that stay. An operator's own
    ``MALLOC_ARENA_MAX`` is left as it is; an allocator other than glibc's (musl, macOS)
    is left alone."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_ARENA_MAX, n) == 1
    if ok:
        log.debug("C allocator limited to %d arenas", n)
    return ok
