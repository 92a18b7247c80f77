"""The features stage on a Ray cluster (``twincast enrol --ray ADDRESS``): its work units
run as Ray tasks on the cluster's nodes instead of in local worker processes.

A unit's result depends on its inputs alone (trackers and aligner start afresh for each),
so the cache is byte for byte the one a local run writes. Units read the footage and write
the cache by path: the footage and the work folder must be on a file system every node
mounts at the same path (a unit that cannot see its footage says so). Ray retries a unit
whose node died; a unit writes atomically, so a retry finds nothing half-written.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections.abc import Callable
from typing import Any

from avatar.errors import TwincastError

log = logging.getLogger(__name__)

_ready = False
"""Whether this (Ray worker) process has been set up for units."""


def _run_unit(fn: Callable[..., Any], progress: Any, args: tuple) -> Any:
    """A unit in a Ray worker process: set up once per process, as a local pool's workers
    are, then run."""
    global _ready
    import training.features as features

    if not _ready:
        features._init_worker(progress, quiet_native=True)
        _ready = True
    features._progress_queue = progress  # this run's bar (a process may serve several)
    for a in args:
        path = getattr(getattr(a, "info", None), "path", None)
        if path is not None and not path.exists():
            import socket

            raise TwincastError(f"{path} is not visible on node {socket.gethostname()}: "
                                "enrolment on a cluster needs the footage and the work folder "
                                "on a file system every node mounts at the same path")
    return fn(*args)


def progress_queue() -> Any:
    """A queue the units' frame counts reach the driver's progress bar through."""
    from ray.util.queue import Queue

    return Queue(actor_options={"num_cpus": 0})


class RayExecutor(cf.Executor):
    """``concurrent.futures`` over Ray tasks (one CPU each): ``training.features`` submits
    its units here as it does to a process pool."""

    def __init__(self, progress: Any) -> None:
        import ray

        self._task = ray.remote(num_cpus=1, max_retries=2)(_run_unit)
        self._progress = progress
        self._refs: list[Any] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        if kwargs:
            raise TypeError("units take positional arguments only")
        ref = self._task.remote(fn, self._progress, args)
        self._refs.append(ref)
        out: cf.Future = cf.Future()

        def settle(done: cf.Future) -> None:
            try:
                out.set_result(done.result())
            except BaseException as e:  # noqa: BLE001 - handed on through the future
                # Ray wraps a unit's error in its own; the cause is what the user needs.
                out.set_exception(getattr(e, "cause", None) or e)

        ref.future().add_done_callback(settle)
        return out

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Units still pending (a failed run's) are cancelled: nothing runs on after."""
        import ray

        for ref in self._refs:
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                ray.cancel(ref, force=True)
        self._refs = []
