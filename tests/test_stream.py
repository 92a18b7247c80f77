"""Livestreaming to a real RTMP server: Debian's nginx with its RTMP module (.ci/run
installs both), started here on loopback. A show is pushed and read back with PyAV; the
ingest is killed mid-stream and the push comes back on its own."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench.localrtmp import free_port

aiohttp = pytest.importorskip("aiohttp")

AUTH = {"Authorization": "Bearer t0ken"}
SHOW = '''[[segment]]
pause = 1.0

[[segment]]
say = "Hello and welcome to the stream. Thank you for watching today."

[[segment]]
idle = 6
'''
"""About ten seconds: a pause, a sentence (about three seconds), idle motion."""


@pytest.fixture()
def nginx(tmp_path):  # noqa: ANN201
    from bench.localrtmp import LocalRtmp, available

    if not available():
        pytest.skip("nginx with libnginx-mod-rtmp is not installed (.ci/run installs it)")
    n = LocalRtmp(tmp_path)
    n.start()
    yield n
    n.kill()


@pytest.fixture(scope="module")
def server(bundle: Path):  # noqa: ANN201
    from streaming.app import Server, ServerConfig
    from streaming.routes import RunningServer

    srv = Server({"presenter": bundle}, ServerConfig(token="t0ken", max_sessions=4, host_share=None,
                                                     lost_share=None,
                                                     rtmp_allow=("127.0.0.1",),
                                                     allow_unconsented=True))
    srv.load()
    running = RunningServer(srv)
    yield running.url, srv
    running.stop()


class Reader(threading.Thread):
    """Plays the stream back as a viewer would: (pts seconds, payload) per decoded frame."""

    def __init__(self, url: str, seconds: float):
        super().__init__(daemon=True)
        self.url, self.seconds = url, seconds
        self.video: list[tuple[float, np.ndarray]] = []
        self.audio: list[tuple[float, float]] = []
        self.codecs: dict[str, str] = {}
        self.rate = None
        self.error: Exception | None = None

    def run(self) -> None:
        import av

        try:
            with av.open(self.url, timeout=30) as c:
                for s in c.streams:
                    self.codecs[s.type] = s.codec_context.name
                self.rate = c.streams.video[0].average_rate
                t0 = time.monotonic()
                for packet in c.demux():
                    for f in packet.decode():
                        if isinstance(f, av.VideoFrame):
                            self.video.append((float(f.pts * f.time_base),
                                               f.to_ndarray(format="gray")))
                        elif isinstance(f, av.AudioFrame):
                            pcm = f.to_ndarray().astype(np.float32)
                            self.audio.append((float(f.pts * f.time_base),
                                               float(np.sqrt(np.mean(pcm ** 2)))))
                    if time.monotonic() - t0 > self.seconds:
                        break
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


async def _post(http, url: str, path: str, **kw):  # noqa: ANN001, ANN202
    async with http.post(f"{url}{path}", headers=AUTH, **kw) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else None)


def test_show_pushed_and_read_back(server, nginx) -> None:  # noqa: ANN001
    url, srv = server
    reader = Reader(nginx.url("show"), 11.0)
    reader.start()  # plays before the publisher starts: nothing is missed
    time.sleep(0.5)

    async def run() -> str:
        async with aiohttp.ClientSession() as http:
            status, body = await _post(http, url, "/v1/streams", json={
                "rtmp": nginx.url("show"), "show": SHOW, "width": 640, "height": 360})
            assert status == 201, body
            # A bad request to the running stream is refused; the stream goes on.
            async with http.post(f"{url}{body['location']}/say", data="not json",
                                 headers=AUTH) as r:
                assert r.status == 400
            return body["id"]

    sid = asyncio.run(run())
    reader.join(40)
    session = srv.sessions[sid]
    state = session.describe()
    assert reader.error is None, reader.error
    assert reader.codecs == {"video": "h264", "audio": "aac"}
    assert reader.rate == 25
    vt = np.array([t for t, _ in reader.video])
    at = np.array([t for t, _ in reader.audio])
    rms = np.array([r for _, r in reader.audio])
    assert vt[-1] - vt[0] >= 8.0, (vt[0], vt[-1])  # seconds of stream
    assert abs(np.median(np.diff(vt)) - 0.04) < 0.002  # 25 frames/s
    assert reader.video[0][1].shape == (360, 640)
    # The disclosure is drawn at the ingest's size: a dark box with white text.
    x0, y0, x1, y1 = srv.label.box(640, 360)
    box = reader.video[len(reader.video) // 2][1][y0:y1, x0:x1]
    assert np.percentile(box, 20) < 90 and box.max() > 180, (box.min(), box.max())
    # Audio is there, in step with the video: same start, same length.
    assert rms.max() > 0.01  # the voice, not silence
    assert abs(at[0] - vt[0]) < 0.1 and abs((at[-1] - at[0]) - (vt[-1] - vt[0])) < 0.2
    # The speech sits where the session placed it on its timeline.
    started = [e.stream_time for e in session.events if e.type == "speech_started"]
    assert started, list(session.events)
    onset = at[np.argmax(rms > 0.01)]
    assert abs(onset - (started[0] - state["rtmp_connected_at"])) < 0.15
    assert state["rtmp_connects"] == 1 and state["rtmp_frames_dropped"] == 0, state
    asyncio.run(_delete(url, sid))


async def _delete(url: str, sid: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.delete(f"{url}/v1/sessions/{sid}", headers=AUTH) as r:
            assert r.status == 204


def test_ingest_killed_mid_stream_reconnects(server, nginx) -> None:  # noqa: ANN001
    url, srv = server

    async def start() -> str:
        async with aiohttp.ClientSession() as http:
            status, body = await _post(http, url, "/v1/streams", json={
                "rtmp": nginx.url("live"), "width": 320, "height": 180})
            assert status == 201, body
            # An ingest that refuses: the stream keeps trying, nothing crashes.
            status, bad = await _post(http, url, "/v1/streams", json={
                "rtmp": f"rtmp://127.0.0.1:{free_port()}/live/x", "width": 320,
                "height": 180})
            assert status == 201
            status, err = await _post(http, url, "/v1/streams", json={"rtmp": "http://x"})
            assert status == 400 and "rtmp://" in err["error"]
            return body["id"], bad["id"]

    sid, bad = asyncio.run(start())
    session = srv.sessions[sid]

    def wait_for(cond, seconds: float) -> bool:  # noqa: ANN001
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if cond():
                return True
            time.sleep(0.1)
        return False

    assert wait_for(lambda: session.describe()["rtmp_state"] == "live", 15)
    nginx.kill()
    assert wait_for(lambda: session.describe()["rtmp_failures"] >= 1, 10)
    shown = session.stats["frames_shown"]
    time.sleep(2.0)
    # The session's clock and the renderer went on while the ingest was gone.
    assert session.stats["frames_shown"] - shown >= 40
    nginx.start()
    assert wait_for(lambda: session.describe()["rtmp_connects"] >= 2, 30), \
        session.describe()
    reader = Reader(nginx.url("live"), 2.0)
    reader.start()
    reader.join(30)
    assert reader.error is None and len(reader.video) >= 25
    refused = srv.sessions[bad].describe()
    assert refused["rtmp_state"] == "reconnecting" and refused["rtmp_connects"] == 0

    async def metrics() -> str:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/metrics") as r:
                return await r.text()

    text = asyncio.run(metrics())
    import re

    # Summed over the open streams (one reconnected live, one refused): no session ids.
    connects = re.search(r"^twincast_stream_connects_total (\S+)$", text, re.M)
    assert connects and float(connects.group(1)) >= 2
    live = re.search(r"^twincast_streams_live (\S+)$", text, re.M)
    assert live and float(live.group(1)) <= 1.0  # the refused one is not live
    assert sid not in text and bad not in text
    asyncio.run(_delete(url, sid))
    asyncio.run(_delete(url, bad))


def test_rtmps_through_a_tls_ingest(nginx, tmp_path) -> None:  # noqa: ANN001
    """rtmps://: TLS to the ingest (a TLS-terminating proxy in front of nginx, as platforms
    run it, with a certificate made here). A certificate that does not verify is refused
    before the stream key is sent; one that chains to the configured CAs streams."""
    import shutil
    import ssl
    import subprocess

    from streaming.rtmp import RtmpConfig, RtmpOutput

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    port = free_port()
    ready = threading.Event()
    took: list[int] = []  # bytes the proxy received from each client

    async def pipe(r, w, count: bool = False) -> None:  # noqa: ANN001
        try:
            while data := await r.read(65536):
                if count:
                    took.append(len(data))
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def handle(cr, cw) -> None:  # noqa: ANN001
        ur, uw = await asyncio.open_connection("127.0.0.1", nginx.port)
        await asyncio.gather(pipe(cr, uw, True), pipe(ur, cw))

    def proxy() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))

        async def main() -> None:
            srv = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx)
            ready.set()
            async with srv:
                await srv.serve_forever()

        asyncio.run(main())

    threading.Thread(target=proxy, daemon=True).start()
    assert ready.wait(10)

    def push(cafile: str | None, seconds: float) -> RtmpOutput:
        out = RtmpOutput(RtmpConfig(url=f"rtmps://127.0.0.1:{port}/live/tls", width=320,
                                    height=180, cafile=cafile))
        out.start()
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds:
            out.offer(np.full((180, 320, 3), k % 255, np.uint8),
                      [np.zeros(960, np.int16)] * 2, k / 25)
            out.check()
            k += 1
            time.sleep(0.04)
        return out

    # Not trusted (a self-signed certificate, not in the store): nothing is sent.
    with _no_env("SSL_CERT_FILE", "SSL_CERT_DIR"):
        out = push(None, 3.0)
    try:
        assert out.stats["connects"] == 0 and out.state != "live"
        assert "certificate" in (out.last_failure or ""), out.last_failure
        assert not took  # the handshake failed: no RTMP byte, no stream key
    finally:
        out.stop()

    reader = Reader(nginx.url("tls"), 1.5)
    reader.start()
    out = push(str(cert), 5.0)
    try:
        reader.join(20)
        assert out.stats["connects"] == 1 and out.state == "live", (out.stats, out.last_error)
        assert reader.error is None and len(reader.video) >= 20
    finally:
        out.stop()


class _no_env:
    """Without these environment variables (restored after)."""

    def __init__(self, *names: str):
        self.names, self.saved = names, {}

    def __enter__(self) -> None:
        import os

        self.saved = {n: os.environ.pop(n) for n in self.names if n in os.environ}

    def __exit__(self, *exc: object) -> None:
        import os

        os.environ.update(self.saved)
