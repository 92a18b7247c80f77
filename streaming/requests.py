"""What clients ask of the server, as types validated in one place.

The HTTP API, the WebRTC data channel and the command line all parse through these, so a
limit or a message is written once; the OpenAPI document's schemas are generated from the
same field specs (``schemas()``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from avatar.errors import TwincastError

REQUIRED = object()


class BadRequest(TwincastError):
    """A request the server refuses: ``status`` is its HTTP status (400 unless said)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Field:
    """One field of a JSON request: its type, range and documentation."""

    kind: type
    description: str
    default: Any = REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    even: bool = False
    enum: tuple[str, ...] | None = None

    def schema(self) -> dict:
        kind = {str: "string", int: "integer", float: "number", bool: "boolean",
                list: "array"}[self.kind]
        s: dict[str, Any] = {"enum": list(self.enum)} if self.enum else {"type": kind}
        if self.kind is list:
            s["items"] = {"type": "integer"}
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        if self.default is not REQUIRED and self.default is not None:
            s["default"] = self.default
        s["description"] = self.description + (" (even)" if self.even else "")
        return s

    def check(self, name: str, value: Any) -> Any:
        """``value`` as this field's type, or a BadRequest saying what it should be."""
        if self.kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
            what = f"a number from {_num(self.minimum)} to {_num(self.maximum)}"
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and \
                not (self.even and value % 2)
            what = f"a whole number from {_num(self.minimum)} to {_num(self.maximum)}" + \
                (" (even)" if self.even else "")
        else:
            ok = isinstance(value, self.kind)
            what = {str: "a string", bool: "true or false", list: "a list"}[self.kind]
        if ok and self.minimum is not None and value < self.minimum:
            ok = False
        if ok and self.maximum is not None and value > self.maximum:
            ok = False
        if ok and self.enum is not None and value not in self.enum:
            ok, what = False, " or ".join(repr(v) for v in self.enum)
            raise BadRequest(f"'{name}' is {what}")
        if not ok:
            raise BadRequest(f"'{name}' must be {what}")
        return value


def _num(v: float | None) -> str:
    return "any" if v is None else f"{v:g}"


def _fields(body: object, fields: dict[str, Field]) -> dict[str, Any]:
    """The fields of a JSON object, checked; absent optional ones take their defaults."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    out = {}
    for name, f in fields.items():
        if name not in body or body[name] is None:
            if f.default is REQUIRED:
                raise BadRequest(f"'{name}' is missing")
            out[name] = f.default
        else:
            out[name] = f.check(name, body[name])
    return out


MAX_TEXT_CHARS = 5000
"""The longest text one request may say (a server may lower it)."""


@dataclass(frozen=True)
class Say:
    """Say ``text``: after what is queued, or cutting it off (``interrupt``)."""

    text: str
    interrupt: bool = False
    rate: float = 1.0

    FIELDS = {
        "text": Field(str, "what to say"),
        "policy": Field(str, "after what is queued, or cut it off", "append",
                        enum=("append", "interrupt")),
        "interrupt": Field(bool, "the same as policy: interrupt", False),
        "rate": Field(float, "speaking rate", 1.0, minimum=0.5, maximum=2.0),
    }

    @classmethod
    def parse(cls, body: object, max_chars: int = MAX_TEXT_CHARS) -> Say:
        if isinstance(body, dict) and "text" in body and not isinstance(body["text"], str):
            raise BadRequest("'text' must be a string")
        v = _fields(body, cls.FIELDS)
        if len(v["text"]) > max_chars:
            raise BadRequest(f"the text is {len(v['text'])} characters; the limit is "
                             f"{max_chars}", 413)
        return cls(v["text"], v["policy"] == "interrupt" or v["interrupt"], v["rate"])


@dataclass(frozen=True)
class Ask:
    """Ask the avatar a question: the operator's LLM answers it in the avatar's voice."""

    text: str
    sender: str | None = None

    FIELDS = {
        "text": Field(str, "the question"),
        "from": Field(str, "who asks (a viewer's name), for the LLM and the logs", ""),
    }
    MAX_CHARS = 500

    @classmethod
    def parse(cls, body: object) -> Ask:
        if isinstance(body, dict) and "text" in body and not isinstance(body["text"], str):
            raise BadRequest("'text' must be a string")
        v = _fields(body, cls.FIELDS)
        text = " ".join(v["text"].split())
        if not text:
            raise BadRequest("'text' is empty")
        if len(text) > cls.MAX_CHARS:
            raise BadRequest(f"the question is {len(text)} characters; the limit is "
                             f"{cls.MAX_CHARS}", 413)
        sender = " ".join(v["from"].split())[:60] or None
        return cls(text, sender)


@dataclass(frozen=True)
class ChatPost:
    """Chat messages from a platform without an open chat protocol (its webhook, or a
    relay): one ``{"from", "text"}`` or ``{"messages": [...]}`` of up to 1,000. Each is
    moderated like IRC chat; what a viewer typed never makes the request fail."""

    messages: tuple[tuple[str, str], ...]
    MAX_MESSAGES = 1000

    @classmethod
    def parse(cls, body: object) -> ChatPost:
        if not isinstance(body, dict):
            raise BadRequest('the body must be a JSON object: {"from", "text"} or '
                             '{"messages": [{"from", "text"}, ...]}')
        items = body.get("messages", [body]) if "messages" in body else [body]
        if not isinstance(items, list) or not items:
            raise BadRequest("'messages' must be a non-empty list of {\"from\", \"text\"}")
        if len(items) > cls.MAX_MESSAGES:
            raise BadRequest(f"{len(items)} messages in one request; send at most "
                             f"{cls.MAX_MESSAGES}", 413)
        out = []
        for i, m in enumerate(items):
            if not isinstance(m, dict) or not isinstance(m.get("text"), str) or \
                    not isinstance(m.get("from", ""), str):
                raise BadRequest(f"message {i + 1}: needs 'text' (a string) and 'from' (a "
                                 "string, optional)")
            out.append((m.get("from", "") or "viewer", m["text"]))
        return cls(tuple(out))


@dataclass(frozen=True)
class Interrupt:
    """Stop speaking now (barge-in)."""


Command = Say | Interrupt


def parse_json(text: str, what: str = "the body") -> object:
    """``text`` as JSON, or a BadRequest: not JSON, nested too deep (Python's recursion
    limit), or a number too long to convert (Python's 4,300-digit limit) are the client's
    mistakes, never a server error."""
    try:
        return json.loads(text)
    except RecursionError:
        raise BadRequest(f"{what} is nested too deep") from None
    except ValueError as e:  # JSONDecodeError, and the integer digit limit
        raise BadRequest(f"{what} is not JSON ({str(e).splitlines()[0][:80]})") from None


def parse_command(message: object, max_chars: int = MAX_TEXT_CHARS) -> Command:
    """A data-channel message: ``{"type": "say", "text", "interrupt", "rate"}``,
    ``{"type": "ask", "text", "from"}`` or ``{"type": "interrupt"}``."""
    cmd = parse_json(message, "a command") if isinstance(message, str) else None
    if not isinstance(cmd, dict):
        raise BadRequest("a command is a JSON object")
    kind = cmd.get("type")
    if kind == "say":
        return Say.parse({k: v for k, v in cmd.items() if k != "type"}, max_chars)
    if kind == "ask":
        return Ask.parse({k: v for k, v in cmd.items() if k != "type"})
    if kind == "interrupt":
        return Interrupt()
    raise BadRequest(f"unknown command {kind!r} (say, ask, interrupt)")


@dataclass(frozen=True)
class StreamRequest:
    """Push a new session to an RTMP(S) ingest."""

    rtmp: str
    avatar: str | None = None
    show: str | None = None
    """A show file's TOML text."""
    width: int = 1280
    height: int = 720
    video_kbps: int = 2500
    audio_kbps: int = 128
    keyframe_s: float = 2.0
    key_colour: tuple[int, int, int] | None = None
    show_from: int = 0
    """The show step to begin at (``streaming.show.run_show``)."""

    FIELDS = {
        "rtmp": Field(str, "rtmp:// or rtmps:// ingest URL with its stream key"),
        "avatar": Field(str, "which avatar (default: the first)", None),
        "show": Field(str, "a show file's TOML text", None),
        # At most 1080p and 12 Mbit/s (a platform's top for 1080p): the avatar is
        # rendered at its bundle's size, and a 4K, 50 Mbit/s push only costs the host.
        "width": Field(int, "frame width", 1280, minimum=64, maximum=1920, even=True),
        "height": Field(int, "frame height", 720, minimum=64, maximum=1080, even=True),
        "video_kbps": Field(int, "video bit rate", 2500, minimum=100, maximum=12000),
        "audio_kbps": Field(int, "audio bit rate", 128, minimum=16, maximum=512),
        "keyframe_s": Field(float, "seconds between keyframes", 2.0, minimum=0.5,
                            maximum=10),
        "key_colour": Field(list, "[r, g, b]: background replaced by this colour for "
                            "chroma keying", None),
        "show_from": Field(int, "the show step to begin at (a segment's each repeat, pass "
                           "after pass, from 0; the session's show_step says which is on)",
                           0, minimum=0, maximum=10**9),
    }

    @classmethod
    def parse(cls, body: object) -> StreamRequest:
        v = _fields(body, cls.FIELDS)
        if not v["rtmp"].startswith(("rtmp://", "rtmps://")):
            raise BadRequest(f"'rtmp' {v['rtmp']!r}: an ingest URL starts with rtmp:// or "
                             "rtmps:// (for example rtmp://live.example.com/app/STREAM-KEY)")
        key = v["key_colour"]
        if key is not None:
            if not (len(key) == 3 and all(isinstance(c, int) and not isinstance(c, bool)
                                          and 0 <= c <= 255 for c in key)):
                raise BadRequest("'key_colour' must be [r, g, b] with values 0-255")
            v["key_colour"] = tuple(key)
        return cls(**v)

    def rtmp_config(self):  # noqa: ANN201 - streaming.rtmp.RtmpConfig, imported lazily
        from streaming.rtmp import RtmpConfig

        return RtmpConfig(url=self.rtmp, width=self.width, height=self.height,
                          video_kbps=self.video_kbps, audio_kbps=self.audio_kbps,
                          keyframe_s=self.keyframe_s, key_colour=self.key_colour)

    def parsed_show(self):  # noqa: ANN201 - avatar.show.Show or None
        from avatar.show import parse_show

        return None if self.show is None else parse_show(self.show, "show")


MAX_TOKEN_TTL_S = 24 * 3600


@dataclass(frozen=True)
class TokenRequest:
    """Mint a viewer token (``streaming.tokens``)."""

    avatar: str | None = None
    say: bool = False
    ttl_s: int = 600

    FIELDS = {
        "avatar": Field(str, "the avatar the viewer may open (default: any)", None),
        "say": Field(bool, "whether the viewer may make it speak (and interrupt it)", False),
        "ttl_s": Field(int, "seconds the token lasts", 600, minimum=10,
                       maximum=MAX_TOKEN_TTL_S),
    }

    @classmethod
    def parse(cls, body: object) -> TokenRequest:
        v = _fields(body, cls.FIELDS)
        return cls(v["avatar"], v["say"], v["ttl_s"])


def _schema(fields: dict[str, Field]) -> dict:
    return {"type": "object",
            "required": [n for n, f in fields.items() if f.default is REQUIRED],
            "properties": {n: f.schema() for n, f in fields.items()}}


def schemas() -> dict[str, dict]:
    """The OpenAPI component schemas of the request bodies."""
    return {"Say": _schema(Say.FIELDS), "Ask": _schema(Ask.FIELDS),
            "Stream": _schema(StreamRequest.FIELDS),
            "Token": _schema(TokenRequest.FIELDS),
            "ChatPost": {"type": "object", "properties": {
                "from": {"type": "string"}, "text": {"type": "string"},
                "messages": {"type": "array", "maxItems": ChatPost.MAX_MESSAGES, "items": {
                    "type": "object", "required": ["text"], "properties": {
                        "from": {"type": "string"}, "text": {"type": "string"}}}}}},
            "ChatSettings": {"type": "object", "description": "the keys of a show's [chat] "
                             "table (avatar.chat_settings); answer is always anytime here",
                             "properties": {
                                 "irc": {"type": "string"}, "twitch": {"type": "string"},
                                 "every": {"type": "number"},
                                 "order": {"enum": ["newest", "most-asked"]},
                                 "questions_only": {"type": "boolean"},
                                 "block": {"type": "array", "items": {"type": "string"}},
                                 "max_chars": {"type": "integer"},
                                 "per_user": {"type": "integer"},
                                 "max_age": {"type": "number"}, "links": {"type": "boolean"},
                                 "filter": {"type": "string"}}}}
