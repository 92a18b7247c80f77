"""Show files: what an unattended stream says, in order, as TOML.

    repeat = 3          # the whole show; "forever" for a stream that never ends
    rate = 1.0          # speaking rate for every segment unless it sets its own

    [[segment]]
    say = "Welcome to the stream! Today: the new autumn collection."

    [[segment]]
    pause = 1.5         # seconds of silence, standing still

    [[segment]]
    say = "This jacket is waterproof and weighs 400 grams."
    rate = 0.9
    repeat = 2

    [[segment]]
    idle = 10           # seconds of idle motion

    [[segment]]
    qa = 60             # a Q&A window: live chat questions answered (see [chat])

    [chat]              # where chat comes from and what is answered (avatar.chat_settings)
    twitch = "mychannel"

Every error names the file, the line and the key, so a long script is quick to fix.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from avatar.chat_settings import ChatSettings, parse_chat
from avatar.errors import TwincastError, path_error

log = logging.getLogger(__name__)

TOP_KEYS = {"repeat", "rate", "segment", "chat"}
SEGMENT_KEYS = {"say", "pause", "idle", "qa", "rate", "repeat"}
MAX_SECONDS = 3600.0
MAX_SEGMENTS = 1000
"""A show longer than this is refused (a script of an hour's talk is a few hundred)."""


@dataclass(frozen=True)
class Segment:
    kind: str
    """"say", "pause", "idle" or "qa" (a Q&A window: chat answered, else idle)."""
    text: str = ""
    seconds: float = 0.0
    rate: float = 1.0
    repeat: int = 1


@dataclass(frozen=True)
class Show:
    segments: tuple[Segment, ...]
    repeat: int | None = 1
    """Times through the whole show; None: forever."""
    chat: ChatSettings | None = None
    """Live chat answered on this show's stream (``[chat]``); None: no chat."""

    def passes(self) -> range:
        return range(self.repeat) if self.repeat is not None else range(10 ** 9)


def _key_line(lines: list[str], key: str, start: int) -> int | None:
    """1-based line of ``key = ...`` in the table that begins at line index ``start`` (the
    top level when 0): tomllib gives no positions, so errors find their line here."""
    for i in range(start, len(lines)):
        if i > start and re.match(r"\s*\[", lines[i]):
            return None
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            return i + 1
    return None


def _segment_lines(lines: list[str]) -> list[int]:
    """1-based line of each ``[[segment]]`` header, in order."""
    return [i + 1 for i, line in enumerate(lines)
            if re.match(r"\s*\[\[\s*segment\s*\]\]", line)]


def parse_show(text: str, name: str = "show") -> Show:
    """The show in ``text``. Linear in its length: line numbers are looked up only for
    an error (a 3,000-segment show once took 44 s, on the server's event loop)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TwincastError(f"{name}: not valid TOML: {e}") from None

    lines = text.splitlines()
    headers: list[int] = []

    def seg_line(seg: int) -> int | None:
        if not headers:
            headers.extend(_segment_lines(lines) or [0])
        return headers[seg] if seg < len(headers) and headers[seg] else None

    def where(key: str, seg: int | None = None) -> str:
        start = 0 if seg is None else (seg_line(seg) or 1) - 1
        line = _key_line(lines, key, start) or (start + 1 if seg is not None else None)
        return f"{name}, line {line}" if line else name

    for key in data:
        if key not in TOP_KEYS:
            raise TwincastError(f"{where(key)}: unknown key {key!r} (known: "
                                f"{', '.join(sorted(TOP_KEYS))})")
    repeat = _repeat(data.get("repeat", 1), lambda: where("repeat"), allow_forever=True)
    rate = _rate(data.get("rate", 1.0), lambda: where("rate"))
    raw = data.get("segment", [])
    if not isinstance(raw, list):
        raise TwincastError(f"{where('segment')}: segments are [[segment]] tables")
    if len(raw) > MAX_SEGMENTS:
        raise TwincastError(f"{name}: {len(raw)} segments; a show holds at most "
                            f"{MAX_SEGMENTS} (split it, or use repeat)")
    segments = []
    for i, seg in enumerate(raw):
        for key in seg:
            if key not in SEGMENT_KEYS:
                raise TwincastError(f"{where(key, i)}: unknown key {key!r} in segment "
                                    f"{i + 1} (known: {', '.join(sorted(SEGMENT_KEYS))})")
        kinds = [k for k in ("say", "pause", "idle", "qa") if k in seg]
        if len(kinds) != 1:
            at = f"{name}, line {seg_line(i)}"
            raise TwincastError(f"{at}: segment {i + 1} needs exactly one of say, pause, "
                                f"idle, qa (it has {', '.join(kinds) or 'none'})")
        kind = kinds[0]
        seg_rate = _rate(seg.get("rate", rate), lambda i=i: where("rate", i))
        seg_repeat = _repeat(seg.get("repeat", 1), lambda i=i: where("repeat", i),
                             allow_forever=False)
        if kind == "say":
            words = seg["say"]
            if not isinstance(words, str):
                raise TwincastError(f"{where('say', i)}: 'say' must be text in quotes")
            if not words.strip():
                log.warning("%s: segment %d has empty text; skipped", where("say", i), i + 1)
                continue
            segments.append(Segment("say", text=words.strip(), rate=seg_rate,
                                    repeat=seg_repeat))
        else:
            seconds = seg[kind]
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not \
                    0 < seconds <= MAX_SECONDS:
                raise TwincastError(f"{where(kind, i)}: '{kind}' is seconds, above 0 and at "
                                    f"most {MAX_SECONDS:.0f}")
            segments.append(Segment(kind, seconds=float(seconds), repeat=seg_repeat))
    if not segments:
        raise TwincastError(f"{name}: the show is empty; add [[segment]] tables with say, "
                            "pause or idle")
    has_windows = any(s.kind == "qa" for s in segments)
    chat = None
    if "chat" in data:
        chat = parse_chat(data["chat"], lambda key: _chat_where(lines, key, name),
                          has_windows)
    elif has_windows:
        log.warning("%s: the show has qa segments but no [chat] table; they are idle "
                    "unless questions are posted to the stream's chat", name)
    return Show(tuple(segments), repeat, chat)


def _chat_where(lines: list[str], key: str, name: str) -> str:
    """File and line of ``key`` in the ``[chat]`` table (of its header for the table)."""
    head = next((i for i, line in enumerate(lines) if re.match(r"\s*\[\s*chat\s*\]", line)),
                None)
    if head is None:
        return name
    line = _key_line(lines, key, head) if key != "chat" else None
    return f"{name}, line {line or head + 1}"


def load_show(path: Path) -> Show:
    path = Path(path)
    if not path.is_file():
        raise path_error(path, "no such show file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise path_error(path, "is not UTF-8 text") from None
    return parse_show(text, str(path))


def _repeat(value: object, where: Callable[[], str], allow_forever: bool) -> int | None:
    if allow_forever and value == "forever":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100000:
        extra = ' or "forever"' if allow_forever else ""
        raise TwincastError(f"{where()}: 'repeat' must be a whole number from 1{extra}")
    return value


def _rate(value: object, where: Callable[[], str]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not \
            0.5 <= value <= 2.0:
        raise TwincastError(f"{where()}: 'rate' must be a number from 0.5 to 2.0")
    return float(value)
