"""twincast, the self-hosted digital double, as an avatar service for pipecat pipelines."""

from twincast_pipecat.connection import TwincastConnectionError

__all__ = ["TwincastConnectionError", "TwincastVideoService"]


def __getattr__(name: str) -> object:
    # The service imports pipecat; the connection alone does not need it.
    if name == "TwincastVideoService":
        from twincast_pipecat.service import TwincastVideoService

        return TwincastVideoService
    raise AttributeError(name)
