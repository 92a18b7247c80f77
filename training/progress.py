"""Progress bars that work across worker processes.

Workers put frame counts on a queue; one thread in the parent moves the bar. Bars go to
stderr and disappear when stderr is not a terminal and TWINCAST_PROGRESS is unset, so logs
and tests stay readable.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from types import TracebackType
from typing import Any

from tqdm import tqdm


def bars_enabled() -> bool:
    flag = os.environ.get("TWINCAST_PROGRESS")
    if flag is not None:
        return flag not in ("0", "")
    return sys.stderr.isatty()


def bar(total: float | None, desc: str, unit: str = "it", **kw: Any) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not bars_enabled(), leave=True,
                dynamic_ncols=True, **kw)


class QueueBar:
    """A bar fed from a multiprocessing queue of integer increments."""

    def __init__(self, q: Any, total: int, desc: str, unit: str = "frame"):
        self._q = q
        self._bar = bar(total, desc, unit)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            self._bar.update(n)

    def update(self, n: int) -> None:
        self._bar.update(n)

    def __enter__(self) -> QueueBar:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._bar.close()
