"""numpy's BLAS kept to the calling thread while serving.

numpy's OpenBLAS starts a worker per core the first time a matrix product is large enough,
and each worker spins (``sched_yield`` in a loop) for a while after every product before it
sleeps. A server's matrix products are small and come from many threads (the motion walk,
marking, compositing), so a worker was spinning nearly all the time: one live 720p session
on a 2-core host spent 13 of its 40 CPU seconds in one such worker (``/proc`` per-thread
times, the thread's stack in ``blas_thread_server``), and 12-26 % of its speech frames came
late for want of the core it took. With one thread the products run where they are called.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def single_threaded_blas() -> bool:
    """Limit numpy's BLAS (OpenBLAS, MKL, ...) to one thread in this process, for good.
    False where ``threadpoolctl`` is not installed (the GPU machine's bare Python): BLAS
    then keeps its own threads."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.info("threadpoolctl is not installed: numpy's BLAS keeps its own threads")
        return False
    threadpool_limits(limits=1, user_api="blas")
    return True
