"""The training presets (``presets.toml`` beside this file): one table per preset and
model, each overriding its config dataclass's defaults. Reading the names needs nothing but
the standard library, so the command line offers them without importing any model."""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from avatar.errors import TwincastError

T = TypeVar("T")

PRESETS_FILE = Path(__file__).with_name("presets.toml")


@functools.cache
def _table() -> dict[str, dict]:
    with open(PRESETS_FILE, "rb") as f:
        return tomllib.load(f)


def names() -> tuple[str, ...]:
    """The presets, in the file's order (``ci``, ``cpu``, ``gpu``)."""
    return tuple(_table())


def overrides(preset: str, part: str) -> dict:
    """The ``[PRESET.PART]`` table (empty when the preset keeps every default)."""
    table = _table()
    if preset not in table:
        raise TwincastError(f"unknown preset {preset!r}; choose one of {', '.join(table)}")
    return table[preset].get(part, {})


def apply(base: T, changes: dict[str, Any], where: str = "") -> T:
    """``base`` (a dataclass) with ``changes``: nested tables go into nested dataclasses,
    lists become tuples where the field holds one, and ``false`` for a field that holds an
    optional dataclass makes it None. An unknown key is an error naming it."""
    fields = {f.name for f in dataclasses.fields(base)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in fields:
            raise TwincastError(f"{PRESETS_FILE.name}: {where}{key} is not a setting of "
                                f"{type(base).__name__}")
        current = getattr(base, key)
        if isinstance(value, dict):
            if not dataclasses.is_dataclass(current):
                raise TwincastError(f"{PRESETS_FILE.name}: {where}{key} is not a table")
            value = apply(current, value, f"{where}{key}.")
        elif value is False and dataclasses.is_dataclass(current):
            value = None
        elif isinstance(value, list) and isinstance(current, tuple):
            value = tuple(value)
        kwargs[key] = value
    return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]
