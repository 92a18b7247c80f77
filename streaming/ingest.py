"""Which RTMP ingests an API caller may have the server connect to.

``POST /v1/streams`` makes the server open a connection to a URL the caller chose: left
open, that reaches the server's own loopback and private network (and the session's state
tells the caller whether a port there answered). An ingest must resolve to public
addresses only, unless the operator allows a host or network (``--rtmp-allow``: a local
nginx, a LAN encoder). The command line's own ``twincast stream`` is the operator's and is
not checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from streaming.requests import BadRequest


def _allowed(host: str, addr: str, allow: tuple[str, ...]) -> bool:
    ip = ipaddress.ip_address(addr)
    for rule in allow:
        if rule == "*" or rule.lower() == host.lower():
            return True
        try:
            if ip in ipaddress.ip_network(rule, strict=False):
                return True
        except ValueError:
            continue  # a host name rule, not a network
    return ip.is_global


async def check_ingest(url: str, allow: tuple[str, ...], what: str = "ingest") -> None:
    """Refuse (403) an ingest whose host resolves to any non-public address that
    ``allow`` does not name (a host name, an address or a network, ``*`` for any)."""
    try:
        host = urlsplit(url).hostname or ""
        port = urlsplit(url).port
    except ValueError:
        raise BadRequest(f"the {what} URL cannot be read") from None
    if not host:
        raise BadRequest(f"the {what} URL names no host")
    if "*" in allow:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port or 1935, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise BadRequest(f"the {what} host {host!r} cannot be resolved") from None
    addrs = sorted({info[4][0] for info in infos})
    refused = [a for a in addrs if not _allowed(host, a, allow)]
    if refused:
        raise BadRequest(f"the {what} host {host!r} resolves to {refused[0]}, which is not "
                         "a public address; the server connects there only if its operator "
                         "allows it (twincast serve --rtmp-allow HOST|NETWORK)", 403)
