"""twincast's measuring tools: benchmarks, a loopback WebRTC client, local RTMP helpers.

Only the command line and the tests import this package; it may import every other one.
"""
