"""One BLAS thread in a serving process.

numpy's OpenBLAS keeps a pool of worker threads, and after each product it hands them they
spin (``sched_yield``) for a while waiting for the next. A server does many small products
on many threads (mel windows, colour casts, audio marks), so on a 2-core host one idle
worker spun on 0.57 of a core through a live 720p session (counted per thread over 20 s),
and that session lost 14-23 % of its speech frames against 6-8 % with one BLAS thread.
None of those products is large enough to gain from a second thread.

``twincast serve`` and the benches that run a server set ``OPENBLAS_NUM_THREADS`` before
numpy loads; a program that builds a ``streaming.app.Server`` itself has usually loaded
numpy already, so the server also sets the limit at load time, through threadpoolctl. Only
BLAS libraries are limited: torch's own threads are set per render lane.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def one_blas_thread() -> int:
    """Limit every loaded BLAS library to one thread for the rest of the process, and
    those loaded later; returns how many loaded libraries were changed. Nothing changes
    where ``OPENBLAS_NUM_THREADS`` is set already."""
    import os

    from threadpoolctl import threadpool_info, threadpool_limits

    if "OPENBLAS_NUM_THREADS" in os.environ:
        return 0  # the operator's choice (or `twincast serve`'s, made before numpy loaded)
    # For the BLAS libraries loaded later (scipy's own OpenBLAS loads with its first use):
    # OpenBLAS reads this when it loads.
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    changed = sum(1 for p in threadpool_info()
                  if p.get("user_api") == "blas" and p.get("num_threads", 1) > 1)
    if changed:
        # Called as a function, not a context: the limit stays for the process.
        threadpool_limits(limits=1, user_api="blas")
        log.debug("BLAS limited to one thread (%d libraries)", changed)
    return changed
