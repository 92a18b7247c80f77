"""The playout-delay RTP extension: negotiated on video only, written on every packet the
video sender sends, in the extension's own format (``streaming.playout_delay``)."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from streaming.playout_delay import URI, ZERO, PlayoutDelay, install, installed


def test_bounds_are_packed_in_ten_millisecond_units_and_checked() -> None:
    assert PlayoutDelay(0, 100).payload() == bytes([0x00, 0x00, 0x0A])
    # 12 bits each: 30 ms -> 3 in the high twelve, 4,000 ms -> 400 (0x190) in the low.
    assert PlayoutDelay(30, 4000).payload() == bytes([0x00, 0x31, 0x90])
    with pytest.raises(ValueError, match="over the maximum"):
        PlayoutDelay(200, 100)
    with pytest.raises(ValueError, match="0 to 40950"):
        PlayoutDelay(0, 50000)
    # Not silently rounded down to the unit: 45 ms would have gone out as 40.
    with pytest.raises(ValueError, match="multiple of 10"):
        PlayoutDelay(0, 45)


def test_the_command_line_and_the_server_default_to_the_same_bounds() -> None:
    from streaming.app import ServerConfig
    from twincast.cli import PLAYOUT_DELAY_DEFAULT, _playout_delay, _playout_delay_config

    assert _playout_delay_config(PLAYOUT_DELAY_DEFAULT) is ServerConfig().playout_delay \
        is None
    assert _playout_delay_config("0") == ZERO == PlayoutDelay(0, 0)
    assert _playout_delay_config("40") == PlayoutDelay(0, 40)
    # The command line says the module's own rule.
    for bad in ("45", "50000", "-10"):
        with pytest.raises(argparse.ArgumentTypeError, match="multiple of 10"):
            _playout_delay(bad)
    assert _playout_delay("off") == "off" and _playout_delay("100") == "100"


def test_video_negotiates_it_and_every_video_packet_carries_it() -> None:
    from aiortc import RTCPeerConnection
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap, unpack_header_extensions

    # One patch per process: test_server's server may have installed it before this runs.
    assert install(ZERO) and install(ZERO) and installed() == ZERO
    delay = installed()

    async def negotiate() -> tuple[str, str]:
        offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
        offerer.addTransceiver("video", direction="recvonly")
        offerer.addTransceiver("audio", direction="recvonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        offer, answer = offerer.localDescription.sdp, answerer.localDescription.sdp
        await offerer.close()
        await answerer.close()
        return offer, answer

    offer, answer = asyncio.run(negotiate())
    for sdp in (offer, answer):
        video, audio = sdp.split("m=video")[1].split("m=audio")
        assert URI in video and URI not in audio

    # A sender whose negotiated parameters name the extension writes it on each packet,
    # beside the extensions aiortc writes itself; one whose parameters do not, nothing new.
    with_it = HeaderExtensionsMap()
    with_it.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=12, uri=URI)]))
    written = dict(unpack_header_extensions(*with_it.set(HeaderExtensions(mid="0"))))
    assert written == {1: b"0", 12: delay.payload()}
    without = HeaderExtensionsMap()
    without.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid")]))
    assert dict(unpack_header_extensions(*without.set(HeaderExtensions(mid="0")))) == {1: b"0"}
