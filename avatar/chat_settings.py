"""A show's ``[chat]`` table: where live chat comes from, what is let through, and when
the avatar answers it (``streaming.chat`` does the work).

    [chat]
    twitch = "mychannel"          # read a Twitch channel's chat (anonymously), or
    irc = "irc://127.0.0.1:6667/#shop"   # any IRC server (ircs:// for TLS)
    answer = "windows"            # in the show's qa segments; "between" segments; "anytime"
    every = 20                    # at most one answer per this many seconds
    order = "most-asked"          # or "newest"
    questions_only = true         # only messages that ask something
    block = ["giveaway", "crypto"]   # added to the built-in block list
    max_chars = 300               # longer messages are dropped
    per_user = 3                  # messages a minute one user may send
    max_age = 300                 # a question waiting longer is dropped
    filter = "mypackage.chat:keep"   # the operator's own check (a function of user, text)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from avatar.errors import TwincastError

ANSWER_MODES = ("windows", "between", "anytime")
ORDERS = ("newest", "most-asked")
KEYS = {"twitch", "irc", "answer", "every", "order", "questions_only", "block", "max_chars",
        "per_user", "max_age", "filter", "links"}


@dataclass(frozen=True)
class ChatSettings:
    irc: str | None = None
    """``irc://host:port/#channel`` or ``ircs://…`` (TLS); ``twitch = NAME`` fills it."""
    answer: str = "anytime"
    every: float = 20.0
    order: str = "most-asked"
    questions_only: bool = True
    block: tuple[str, ...] = ()
    max_chars: int = 300
    per_user: int = 3
    max_age: float = 300.0
    filter: str | None = None
    links: bool = False
    """Let messages with links through (off: links are the commonest spam)."""


def _number(v: object, lo: float, hi: float, what: Callable[[], str]) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise TwincastError(f"{what()} must be a number from {lo:g} to {hi:g}")
    return float(v)


def parse_chat(table: object, where: Callable[[str], str], has_windows: bool,
               show: bool = True) -> ChatSettings:
    """The ``[chat]`` table; ``where(key)`` names the file and line for an error.
    ``answer`` defaults to the show's Q&A windows when it has any, else between segments;
    without a show (``show`` False: chat set on a live session) it is always ``anytime``."""
    if not isinstance(table, dict):
        raise TwincastError(f"{where('chat')}: 'chat' is a table ([chat])")
    for key in table:
        if key not in KEYS:
            raise TwincastError(f"{where(key)}: unknown key {key!r} in [chat] (known: "
                                f"{', '.join(sorted(KEYS))})")
    irc = table.get("irc")
    twitch = table.get("twitch")
    if irc is not None and twitch is not None:
        raise TwincastError(f"{where('twitch')}: give either twitch or irc, not both")
    if twitch is not None:
        if not isinstance(twitch, str) or not re.fullmatch(r"#?[A-Za-z0-9_]{2,25}", twitch):
            raise TwincastError(f"{where('twitch')}: 'twitch' is a channel name (letters, "
                                "digits and _)")
        irc = f"ircs://irc.chat.twitch.tv:6697/#{twitch.lstrip('#').lower()}"
    elif irc is not None:
        if not isinstance(irc, str) or not re.fullmatch(
                r"ircs?://[^/\s:]+(:\d{1,5})?/#[^\s,]{1,50}", irc):
            raise TwincastError(f"{where('irc')}: 'irc' is irc://HOST[:PORT]/#CHANNEL (or "
                                "ircs:// for TLS)")
    answer = table.get("answer", "windows" if has_windows else
                       "between" if show else "anytime")
    if not show and answer != "anytime":
        raise TwincastError(f"{where('answer')}: a session without a show answers "
                            "\"anytime\" (windows and between are a show's segments)")
    if answer not in ANSWER_MODES:
        raise TwincastError(f"{where('answer')}: 'answer' is one of {', '.join(ANSWER_MODES)}")
    if answer == "windows" and not has_windows:
        raise TwincastError(f"{where('answer')}: answer = \"windows\" needs qa segments in "
                            "the show (a [[segment]] with qa = SECONDS)")
    order = table.get("order", "most-asked")
    if order not in ORDERS:
        raise TwincastError(f"{where('order')}: 'order' is one of {', '.join(ORDERS)}")
    block = table.get("block", [])
    if not isinstance(block, list) or not all(isinstance(b, str) and b.strip()
                                              for b in block):
        raise TwincastError(f"{where('block')}: 'block' is a list of words or phrases")
    flt = table.get("filter")
    if flt is not None and (not isinstance(flt, str) or
                            not re.fullmatch(r"[\w.]+:\w+", flt)):
        raise TwincastError(f"{where('filter')}: 'filter' is module.path:function")
    for key in ("questions_only", "links"):
        if key in table and not isinstance(table[key], bool):
            raise TwincastError(f"{where(key)}: '{key}' is true or false")
    return ChatSettings(
        irc=irc, answer=answer,
        every=_number(table.get("every", 20.0), 0, 3600, lambda: f"{where('every')}: 'every'"),
        order=order, questions_only=table.get("questions_only", True),
        block=tuple(b.strip().lower() for b in block),
        max_chars=int(_number(table.get("max_chars", 300), 10, 2000,
                              lambda: f"{where('max_chars')}: 'max_chars'")),
        per_user=int(_number(table.get("per_user", 3), 1, 600,
                             lambda: f"{where('per_user')}: 'per_user'")),
        max_age=_number(table.get("max_age", 300.0), 5, 86400,
                        lambda: f"{where('max_age')}: 'max_age'"),
        filter=flt, links=table.get("links", False))
