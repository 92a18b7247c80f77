"""An ingest that accepts the connection and then never answers: FFmpeg's RTMP client
blocks in it for good (holding the interpreter lock while it connects), so the push runs in
a child process; the watchdog kills a stuck one and a new connection is tried; nothing in
the server waits, not even for a moment."""

import socket
import threading
import time

import numpy as np

from streaming.rtmp import RtmpConfig, RtmpOutput


def test_stuck_ingest_is_left_behind() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:  # takes connections, never reads or writes
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    port = server.getsockname()[1]
    out = RtmpOutput(RtmpConfig(url=f"rtmp://127.0.0.1:{port}/live/key", width=64,
                                height=64, stall_s=0.3, queue_frames=5))  # connecting: 1.5 s
    out.start()
    try:
        frame = np.zeros((64, 64, 3), np.uint8)
        pcm = [np.zeros(960, np.int16)] * 2
        t0 = time.monotonic()
        offered = 0
        while time.monotonic() - t0 < 4.0:
            t = time.monotonic()
            out.offer(frame, pcm, t - t0)
            assert time.monotonic() - t < 0.05  # never blocks the caller
            offered += 1
            out.check()
            time.sleep(0.04)
        assert offered >= 60  # the caller's loop kept its pace throughout
        assert out.stats["connects"] == 0 and out.stats["failures"] >= 1
        assert out.stats["frames_dropped"] > 0  # the queue filled and was not waited on
        assert len(held) >= 2  # a second connection was tried
    finally:
        out.stop()
        server.close()
        for c in held:
            c.close()


def test_the_stream_key_stays_out_of_logs_and_the_process_table() -> None:
    from streaming.rtmp import redact_url

    for url in ("rtmp://a.example/live/sk-123", "rtmp://a.example/live/sk-123/",
                "rtmps://user:pw@a.example:443/live/sk-123?x=sk-123",
                "rtmp://a.example/live/sk-123\r\nINFO forged line"):
        safe = redact_url(url)
        assert "sk-123" not in safe and "pw" not in safe and "\n" not in safe, safe
        assert safe.startswith(("rtmp://a.example", "rtmps://a.example:443"))
    out = RtmpOutput(RtmpConfig(url="rtmp://127.0.0.1:9/live/sk-secret", width=64,
                                height=64))
    proc = out._launch()
    try:
        assert not any("sk-secret" in str(a) for a in proc.args)  # what `ps` shows
    finally:
        proc.kill()
        proc.wait()
