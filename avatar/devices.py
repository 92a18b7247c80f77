"""Turning a configured device name (``cpu``, ``cuda:0``, ...) into a torch device."""

from __future__ import annotations

import torch

from avatar.errors import TwincastError


def device(name: str) -> torch.device:
    """The device, or a clear error where it is not usable on this machine."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TwincastError(f"device {name!r}: not a device name (cpu, cuda:0, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TwincastError(f"device {name!r}: CUDA is not available on this machine; "
                            "use --device cpu")
    return dev
