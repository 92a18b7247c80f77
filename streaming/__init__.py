"""twincast realtime server (aiohttp + aiortc); talks to models only through ``avatar``."""
