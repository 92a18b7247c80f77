"""One-Euro filter over arrays of landmarks.

Casiez et al.'s filter: a low-pass whose cutoff rises with speed, so a still face stops
shimmering while a fast mouth or head turn keeps up. Vectorised: one call filters every
coordinate of a frame at once.
"""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Causal filter; call once per frame in order. ``scale`` (per frame) converts the
    signal's speed into the units ``beta`` is given in (here: inter-ocular distances)."""

    def __init__(self, rate: float, min_cutoff: float, beta: float, d_cutoff: float = 1.0):
        self.dt = 1.0 / rate
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def reset(self) -> None:
        self._x = None
        self._dx = None

    def __call__(self, x: np.ndarray, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None:
            self._x = x.copy()
            self._dx = np.zeros_like(x)
            return x.copy()
        dx = (x - self._x) / self.dt
        a_d = _alpha(self.d_cutoff, self.dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        speed = np.abs(self._dx) / max(scale, 1e-6)
        a = _alpha(self.min_cutoff + self.beta * speed, self.dt)
        self._x = a * x + (1 - a) * self._x
        return self._x.copy()
