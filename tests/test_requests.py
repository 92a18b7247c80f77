"""Request types, session events and the session registry: the server's contracts."""

from __future__ import annotations

import asyncio

import pytest

from streaming.events import Interrupted, SpeechFailed, SpeechStarted
from streaming.registry import Full, Registry
from streaming.requests import (
    BadRequest,
    Interrupt,
    Say,
    StreamRequest,
    parse_command,
    schemas,
)


def test_say_takes_its_defaults_and_both_ways_of_interrupting():
    assert Say.parse({"text": "hi"}) == Say("hi", False, 1.0)
    assert Say.parse({"text": "hi", "policy": "interrupt"}).interrupt
    assert Say.parse({"text": "hi", "interrupt": True, "rate": 2}) == Say("hi", True, 2.0)


@pytest.mark.parametrize("body, status, words", [
    ({"text": 3}, 400, "'text' must be a string"),
    ({}, 400, "'text' is missing"),
    ({"text": "hi", "policy": "x"}, 400, "'policy' is 'append' or 'interrupt'"),
    ({"text": "hi", "rate": 3}, 400, "'rate' must be a number from 0.5 to 2"),
    ({"text": "hi", "rate": True}, 400, "'rate' must be a number"),
    ({"text": "x" * 11}, 413, "the text is 11 characters; the limit is 10"),
    (["text"], 400, "the body must be a JSON object"),
])
def test_say_refuses_with_one_line(body, status, words):
    with pytest.raises(BadRequest) as e:
        Say.parse(body, max_chars=10)
    assert e.value.status == status and words in str(e.value)


def test_hostile_json_is_a_bad_request_not_a_crash():
    from streaming.requests import BadRequest, parse_command, parse_json

    for text, words in [("[" * 20000 + "]" * 20000, "nested too deep"),
                        ('{"n": ' + "9" * 5000 + "}", "not JSON"), ("{", "not JSON")]:
        with pytest.raises(BadRequest, match=words):
            parse_json(text)
    with pytest.raises(BadRequest, match="a command is nested too deep"):
        parse_command('{"type": "say", "text": ' + "[" * 20000 + "]" * 20000 + "}")


def test_data_channel_commands_parse_like_the_api():
    assert parse_command('{"type": "say", "text": "hi", "rate": 1.5}') == Say("hi", False, 1.5)
    assert parse_command('{"type": "interrupt"}') == Interrupt()
    for bad, words in (("not json", "not JSON"), ('{"type": "dance"}', "unknown command"),
                       ('{"type": "say", "rate": 0.1, "text": "a"}', "'rate'"), (b"x", "JSON")):
        with pytest.raises(BadRequest, match=words):
            parse_command(bad)


def test_stream_requests_are_checked_and_become_rtmp_settings():
    req = StreamRequest.parse({"rtmp": "rtmps://x/app/k", "key_colour": [0, 255, 0],
                               "width": 640, "height": 360})
    cfg = req.rtmp_config()
    assert (cfg.width, cfg.height, cfg.video_kbps, cfg.audio_kbps) == (640, 360, 2500, 128)
    assert cfg.key_colour == (0, 255, 0) and req.parsed_show() is None
    for body, words in (({"rtmp": "http://x"}, "rtmp://"),
                        ({"rtmp": "rtmp://x", "width": 641}, r"from 64 to 1920 \(even\)"),
                        ({"rtmp": "rtmp://x", "width": 3840, "height": 2160}, "1920"),
                        ({"rtmp": "rtmp://x", "video_kbps": 50000}, "12000"),
                        ({"rtmp": "rtmp://x", "key_colour": [0, 300, 0]}, "values 0-255"),
                        ({"rtmp": "rtmp://x", "keyframe_s": 20}, "'keyframe_s'"),
                        ({"rtmp": "rtmp://x", "show": "[[segment]]\nsay = 3\n"}, None)):
        if words is None:
            with pytest.raises(Exception, match="show"):
                StreamRequest.parse(body).parsed_show()
            continue
        with pytest.raises(BadRequest, match=words):
            StreamRequest.parse(body)


def test_the_openapi_schemas_are_the_request_fields():
    s = schemas()
    assert s["Say"]["required"] == ["text"]
    assert s["Say"]["properties"]["rate"]["minimum"] == 0.5
    assert s["Stream"]["required"] == ["rtmp"]
    assert s["Stream"]["properties"]["width"]["maximum"] == 1920
    assert set(s["Stream"]["properties"]) == set(StreamRequest.FIELDS)


def test_events_keep_the_data_channel_form():
    assert SpeechStarted("s1", "u1", 1.25).to_json() == {
        "type": "speech_started", "session": "s1", "utterance": "u1", "stream_time": 1.25}
    assert Interrupted("s1", None, 2.0).type == "interrupted"
    assert SpeechFailed("s1", "u2", 0.5, message="no voice").to_json()["message"] == "no voice"


class FakeSession:
    def __init__(self, sid: str):
        self.id, self.closed, self.describe_extra = sid, False, None
        self.told: list[str] = []
        self.stats = {"frames_shown": 0, "frames_late": 0}

    def tell_closing(self, reason: str, retry: bool = False) -> None:
        self.told.append(reason)

    async def close(self, reason: str = "closed") -> None:
        self.tell_closing(reason)
        self.closed = True


class FakeOutput:
    def __init__(self, kind: str, gone: str | None = None):
        self.kind, self.gone, self.closed = kind, gone, False

    def describe(self) -> dict:
        return {"output": self.kind}

    async def vanished(self) -> str | None:
        return self.gone

    async def close(self) -> None:
        self.closed = True


def test_the_registry_admits_by_count_and_capacity_for_every_output():
    reg = Registry(max_sessions=2, capacity_share=0.9)
    with reg.reserve(25, capacity_fps=100.0):
        reg.add(FakeSession("a"), FakeOutput("rtmp"))
    with pytest.raises(Full, match="rendering capacity"), reg.reserve(25, capacity_fps=50.0):
        pass
    with reg.reserve(25, capacity_fps=100.0):
        # A place held while negotiating counts: nobody else gets in meanwhile.
        with pytest.raises(Full, match="maximum of 2"), reg.reserve(25, 1000.0):
            pass
        reg.add(FakeSession("b"), FakeOutput("webrtc"))
    assert len(reg) == 2 and [sid for sid, _ in reg.of_kind("rtmp")] == ["a"]
    assert reg.get("b").session.describe_extra() == {"output": "webrtc"}
    with pytest.raises(Full) as e, reg.reserve(25, 1000.0):
        pass
    assert e.value.status == 503
    # Idle, it admits one even on a measure too low for it (taken under an overload, it
    # would otherwise never be measured again).
    idle = Registry(max_sessions=2, capacity_share=0.9)
    with idle.reserve(25, capacity_fps=10.0):
        idle.add(FakeSession("c"), FakeOutput("webrtc"))
    with pytest.raises(Full, match="rendering capacity"), idle.reserve(25, capacity_fps=10.0):
        pass


def test_the_registry_closes_what_vanished_and_everything_at_the_end():
    async def scenario() -> None:
        reg = Registry(max_sessions=8, capacity_share=0.9)
        kept, gone = FakeSession("kept"), FakeSession("gone")
        out_kept, out_gone = FakeOutput("webrtc"), FakeOutput("webrtc", "its client vanished")
        reg.add(kept, out_kept)
        reg.add(gone, out_gone)
        await reg.sweep()
        assert list(reg.sessions) == ["kept"] and gone.closed and out_gone.closed
        assert not kept.closed
        assert gone.told == ["its client vanished"]
        await reg.close("unknown")  # nothing to do, no error
        await reg.close_all()
        assert len(reg) == 0 and kept.closed and out_kept.closed
        # Told why before its connection closed (SIGTERM: the server shutting down).
        assert kept.told[0] == "the server is shutting down"

    asyncio.run(scenario())


def test_an_api_caller_streams_only_to_public_ingests_unless_allowed():
    import asyncio

    from streaming.ingest import check_ingest

    async def check(url: str, allow: tuple[str, ...] = ()) -> None:
        await check_ingest(url, allow)

    for url in ("rtmp://127.0.0.1/live/k", "rtmp://10.1.2.3:1935/live/k",
                "rtmps://169.254.169.254/latest/k", "rtmp://[::1]/live/k",
                "rtmp://localhost/live/k"):
        with pytest.raises(BadRequest, match="not a public address") as e:
            asyncio.run(check(url))
        assert e.value.status == 403
    asyncio.run(check("rtmp://8.8.8.8/live/k"))                  # public: fine
    asyncio.run(check("rtmp://127.0.0.1/live/k", ("127.0.0.1",)))  # allowed host
    asyncio.run(check("rtmp://10.1.2.3/live/k", ("10.0.0.0/8",)))  # allowed network
    asyncio.run(check("rtmp://10.1.2.3/live/k", ("*",)))
    with pytest.raises(BadRequest, match="cannot be resolved"):
        asyncio.run(check("rtmp://no-such-host.invalid/live/k"))
