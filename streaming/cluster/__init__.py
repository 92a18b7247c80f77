"""Cluster mode: twincast on a Ray cluster. Workers (Ray actors, one per device lane per
node) each run the single server's realtime path unchanged and own their sessions end to
end (the WebRTC peer, the clock, the lane, the voice); a Ray Serve ingress places new
sessions by measured capacity and forwards control to the owner. Media never passes
through the ingress.

Ray is the ``[cluster]`` extra: nothing here imports it until cluster mode runs.
"""
