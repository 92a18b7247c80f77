"""Turning a configured device name (``cpu``, ``cuda:0``, ...) into a torch device."""

from __future__ import annotations

from contextlib import AbstractContextManager

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


PRECISIONS = ("auto", "fp32", "bf16")


def bf16_native(dev: torch.device) -> bool:
    """Whether ``dev`` computes in bfloat16 in hardware (a recent GPU; a CPU with
    AVX512-BF16 or AMX), where it roughly halves a small convolutional network's time;
    elsewhere bfloat16 is emulated and slower than float32."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def compute_dtype(dev: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype a model renders or trains in on ``dev``: ``auto`` picks bfloat16 where it
    is native, ``fp32``/``bf16`` force one."""
    if precision not in PRECISIONS:
        raise TwincastError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and bf16_native(dev)):
        return torch.bfloat16
    return torch.float32


def autocast(dev: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """A training step's forward passes in ``dtype`` (``compute_dtype``'s answer):
    bfloat16 autocast where it is bfloat16, nothing otherwise. Backward passes belong
    outside it (they run in the dtypes their forwards chose)."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
