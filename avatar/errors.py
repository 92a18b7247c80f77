"""Errors that a user can act on.

The CLI prints a :class:`TwincastError` as one line (no traceback) and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class TwincastError(Exception):
    """Bad input or environment: the message says what is wrong and what to do."""


def path_error(path: object, problem: str) -> TwincastError:
    """An error that names the file first, as every input error should."""
    return TwincastError(f"{path}: {problem}")
