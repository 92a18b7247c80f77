"""Token buckets: how often a caller may ask.

Each credential (the operator token, each viewer token) and each session's data channel
gets a bucket of ``burst`` requests refilled at ``rate`` a second; a request that finds it
empty is refused (429 with the wait in Retry-After) rather than served late for everyone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Bucket:
    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    level: float = field(default=-1.0)
    at: float = 0.0

    def take(self) -> float:
        """0 if a request may go now (and counts it), else the seconds until one may."""
        now = self.clock()
        if self.level < 0:
            self.level, self.at = self.burst, now
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate


def retry_after(wait_s: float) -> str:
    """A Retry-After value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(wait_s)))
