"""Telling the viewer's WebRTC stack how long it may hold each video frame.

A browser puts every received video frame in a jitter buffer and shows it once its target
delay (its estimate of the network's jitter, the decoder's time and a render margin) has
passed: on the 2-core host, headless chromium held a frame 44-69 ms between its last packet
and the screen (``bench ask --viewer browser``), a fifth of twincast's whole text-to-mouth
budget. WebRTC's ``playout-delay`` RTP header extension lets the sender bound that delay
(a minimum and a maximum, in 10 ms steps); with a minimum of zero and a small maximum,
libwebrtc renders frames as soon as it can and keeps only as much smoothing as the maximum
allows. Off by default: where the viewer shares the server's cores, what the browser
saves was lost again on the server's side (``ZERO``); `twincast serve --playout-delay MS`
turns it on.

aiortc (1.x) neither negotiates nor writes the extension. ``install`` teaches it both, once
per process: the video m-line offers and answers the extension's URI, and a sender whose
negotiated parameters carry it writes the bounds on every packet it sends (three bytes).
Receivers ignore it (aiortc's own viewers included), and a peer that does not offer it
gets nothing new.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from struct import pack

log = logging.getLogger(__name__)

URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
LOCAL_ID = 7
"""The id aiortc offers the extension under when it makes the offer (it answers with the
offerer's). Unique across audio and video, whose ids share one space under BUNDLE."""
STEP_MS = 10
MAX_UNITS = 0xFFF


@dataclass(frozen=True)
class PlayoutDelay:
    """The bounds sent, in milliseconds (multiples of 10 up to 40,950)."""

    min_ms: int = 0
    max_ms: int = 0

    def __post_init__(self) -> None:
        for name, v in (("min_ms", self.min_ms), ("max_ms", self.max_ms)):
            if not 0 <= v <= MAX_UNITS * STEP_MS or v % STEP_MS:
                raise ValueError(f"a playout delay of {v} ms ({name}): use a multiple of "
                                 f"{STEP_MS} from 0 to {MAX_UNITS * STEP_MS} ms")
        if self.min_ms > self.max_ms:
            raise ValueError(f"playout delay: the minimum {self.min_ms} ms is over the "
                             f"maximum {self.max_ms} ms")

    def payload(self) -> bytes:
        """The extension's three bytes: 12 bits of minimum, 12 of maximum, 10 ms units."""
        lo, hi = self.min_ms // STEP_MS, self.max_ms // STEP_MS
        return pack("!I", (lo << 12) | hi)[1:]


ZERO = PlayoutDelay(0, 0)
"""Show each frame as soon as it is decoded. Not the server's default: measured in headless
chromium on the 2-core host that also ran the server (``bench ask --viewer browser``,
2026-12-05), it cut a frame's hold from its last packet to the screen from 48 to 27 ms
(p50, median of five runs; its jitter buffer from 23-35 ms to under 1 ms) and the first
sound came 20 ms sooner, but the frames' packets came in about 30 ms later on the GRID
``ci`` bundle and 65 ms later on the ``make demo`` bundle (medians of the runs; the
browser's own work, sharing the two cores, is the likely cause; not traced), so on screen
it was no sooner (ci: 283 ms against 283) or later (demo: 491, 505 against 399, 457, 455
ms)."""

_lock = threading.Lock()
_installed: PlayoutDelay | None = None


def installed() -> PlayoutDelay | None:
    """The bounds this process's WebRTC senders write, or None when not installed."""
    return _installed


def install(delay: PlayoutDelay) -> bool:
    """Teach this process's aiortc to negotiate and send ``delay``. Idempotent; the first
    bounds installed stay (one process serves one configuration). False, with a warning,
    where this aiortc's internals are not the ones this was written against."""
    global _installed  # noqa: PLW0603 - one patch per process, made at server start
    with _lock:
        if _installed is not None:
            if _installed != delay:
                log.warning("playout delay already sent as %s; %s ignored", _installed, delay)
            return True
        try:
            from aiortc import codecs, rtp
            from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters
            video = codecs.HEADER_EXTENSIONS["video"]
            configure, setter = rtp.HeaderExtensionsMap.configure, rtp.HeaderExtensionsMap.set
            unpack_ext, pack_ext = rtp.unpack_header_extensions, rtp.pack_header_extensions
        except (ImportError, AttributeError, KeyError) as e:
            log.warning("playout delay not sent: this aiortc differs from the one twincast "
                        "knows (%s)", e)
            return False
        payload = delay.payload()

        def configure_with_delay(self, parameters) -> None:  # noqa: ANN001 - aiortc's
            configure(self, parameters)
            self._twincast_playout_id = next(
                (ext.id for ext in parameters.headerExtensions if ext.uri == URI), None)

        def set_with_delay(self, values) -> tuple[int, bytes]:  # noqa: ANN001 - aiortc's
            profile, value = setter(self, values)
            ext_id = getattr(self, "_twincast_playout_id", None)
            if ext_id is None:
                return profile, value
            extensions = list(unpack_ext(profile, value)) if value else []
            extensions.append((ext_id, payload))
            return pack_ext(extensions)

        if not any(ext.uri == URI for ext in video):
            video.append(RTCRtpHeaderExtensionParameters(id=LOCAL_ID, uri=URI))
        rtp.HeaderExtensionsMap.configure = configure_with_delay
        rtp.HeaderExtensionsMap.set = set_with_delay
        _installed = delay
        log.info("video frames carry a playout delay of %d-%d ms", delay.min_ms, delay.max_ms)
        return True
