"""twincast runtime: loads avatar bundles and turns text or audio into frames.

Nothing here imports ``training``: the bundle on disk is the only contract between them.
"""
