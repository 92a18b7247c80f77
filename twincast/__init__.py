"""twincast: a live digital double of one person, learned from their own footage."""

__version__ = "0.1.0"
