"""Joining an existing Ray cluster (the cluster server, enrolment with ``--ray``), with a
one-line error for an address that does not answer. Ray is imported on call only."""

from __future__ import annotations

import logging
import socket

from avatar.errors import TwincastError

NAMESPACE = "twincast"


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one ``ray start`` made on this
    machine) or say in one line why not."""
    try:
        import ray
    except ImportError:
        raise TwincastError("Ray is not installed: install twincast with its cluster extra "
                            "(pip install 'twincast[cluster]')") from None

    if ray.is_initialized():
        return
    check_reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise TwincastError(f"cannot join the Ray cluster at {address!r}: "
                            f"{str(e).splitlines()[0][:200]}; start one with `ray start "
                            "--head` or pass its address with --ray") from None


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """A ``host:port`` that nothing answers on is refused at once: Ray itself would retry
    connecting for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or address == "auto" or "://" in address or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise TwincastError(f"cannot join the Ray cluster at {address!r}: nothing answers "
                            f"there ({e.strerror or e}); start one with `ray start --head` "
                            "or pass its address with --ray") from None
