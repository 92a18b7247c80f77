"""Who may do what through the API: the operator's token, and viewer tokens it mints.

The operator token (``--token``) may do everything. It is a secret of the operator's
backend: a page that embeds the avatar must not carry it (anyone reading the page's source
could say anything into any broadcast, or end it). Instead the backend asks for a viewer
token (``POST /v1/tokens``) for each visitor: short-lived, good for opening one session
of one avatar (or any), then only for that session: watching it, closing it, and saying
or interrupting only where the operator allowed it.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field

from streaming.ratelimit import Bucket
from streaming.requests import BadRequest, TokenRequest

PREFIX = "tcv_"
"""Viewer tokens start with this (the operator's never should)."""
MAX_GRANTS = 10000
"""Viewer tokens alive at once: minting more is refused (429) until some expire."""


@dataclass
class Grant:
    avatar: str | None
    """The avatar the viewer may open (None: any)."""
    say: bool
    """Whether the viewer may make the avatar speak (and interrupt it)."""
    expires: float
    """``time.monotonic()`` after which the token is refused."""
    session: str | None = None
    """The one session the token has opened (then it is good for that session only)."""
    bucket: Bucket | None = None
    """How often it may call the API (made on its first call)."""


@dataclass
class TokenBook:
    """The viewer tokens minted and not expired (in memory: a restart ends them all)."""

    grants: dict[str, Grant] = field(default_factory=dict)
    clock: object = time.monotonic

    def mint(self, req: TokenRequest) -> tuple[str, Grant]:
        now = self.clock()  # type: ignore[operator]
        for tok in [t for t, g in self.grants.items() if g.expires <= now]:
            del self.grants[tok]
        if len(self.grants) >= MAX_GRANTS:
            raise BadRequest(f"{MAX_GRANTS} viewer tokens are alive; wait for some to expire",
                             429)
        token = PREFIX + secrets.token_urlsafe(24)
        grant = Grant(req.avatar, req.say, now + req.ttl_s)
        self.grants[token] = grant
        return token, grant

    def find(self, token: str) -> Grant | None:
        """The live grant of a viewer token; None for anything else (or expired)."""
        if not token.startswith(PREFIX):
            return None
        g = self.grants.get(token)
        if g is None:
            return None
        if g.expires <= self.clock():  # type: ignore[operator]
            del self.grants[token]
            return None
        return g


_SESSION = re.compile(r"^/v1/sessions/([^/]+)(/say|/ask|/interrupt)?$")


def viewer_may(grant: Grant, method: str, path: str) -> str | None:
    """None if a viewer with ``grant`` may make this request, else why not."""
    if method == "GET" and path == "/v1/avatars":
        return None
    if method == "POST" and path == "/v1/sessions":
        return None if grant.session is None else \
            "this viewer token has opened its session already"
    m = _SESSION.match(path)
    if m is None:
        return "a viewer token opens one session and acts on it only"
    if grant.session != m.group(1):
        return "a viewer token acts on its own session only"
    action = m.group(2)
    if action is None:
        return None if method in ("GET", "DELETE") else "not allowed"
    return None if grant.say else "this viewer token may watch, not make the avatar speak"
