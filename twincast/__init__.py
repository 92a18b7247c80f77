"""twincast: a live digital double of one person, learned from their own footage."""

from avatar.version import __version__

__all__ = ["__version__"]
