"""RTMPS with the ingest's certificate checked: TLS done by Python, not by FFmpeg.

The FFmpeg inside PyAV's wheels takes an ``rtmps://`` ingest with a self-signed or
wrong-host certificate even with ``tls_verify=1`` (an earlier probe of this
project's PyAV; not re-checked on every release): a stream key
sent there goes to whoever answers. So the TLS connection is opened here, with Python's
default context (the system's CA store, or ``SSL_CERT_FILE``; the host name checked), and
FFmpeg speaks plain RTMP to a loopback port that this relay carries over that connection.
A certificate that fails is refused before one byte of the stream, or the key, leaves.

The relay is a process of its own (``python -m streaming.tls_relay HOST PORT [CAFILE]``,
no secret on its command line): PyAV holds the interpreter lock while FFmpeg connects, so a
relay thread in the push process could never answer FFmpeg's connection. Its first line on
stdout is ``ready LOCAL_PORT`` or ``refused WHY``; it ends when the connection does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import sys


class RelayRefused(Exception):
    """The ingest could not be reached, or its certificate did not verify."""


class TlsRelay:
    """The relay process for one connection to ``host:port``; ``port`` is the loopback
    port FFmpeg connects to."""

    def __init__(self, host: str, port: int, cafile: str | None = None,
                 timeout_s: float = 10.0):
        args = [sys.executable, "-m", "streaming.tls_relay", host, str(port),
                str(timeout_s)] + ([cafile] if cafile else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode(errors="replace").strip()
        if not line.startswith("ready "):
            self.close()
            raise RelayRefused(line.removeprefix("refused ") or "the TLS relay failed")
        self.port = int(line.split()[1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (OSError, ssl.SSLError):
        pass  # either side gone: the other is closed below
    finally:
        with contextlib.suppress(Exception):
            w.close()


async def _relay(host: str, port: int, timeout_s: float, cafile: str | None) -> int:
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        # The ingest first: a certificate that fails is refused before FFmpeg connects.
        remote_r, remote_w = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout_s)
    except ssl.SSLCertVerificationError as e:
        print(f"refused the ingest's TLS certificate was refused ({e.verify_message}); a "
              "stream key is sent only to an ingest whose certificate verifies", flush=True)
        return 3
    except (TimeoutError, OSError, ssl.SSLError) as e:
        print(f"refused the ingest cannot be reached over TLS ({type(e).__name__}: "
              f"{str(e)[:200]})", flush=True)
        return 3
    connected, done = asyncio.Event(), asyncio.Event()

    async def carry(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        server.close()  # one connection only: the push's
        connected.set()
        await asyncio.gather(_pipe(r, remote_w), _pipe(remote_r, w))
        done.set()

    server = await asyncio.start_server(carry, "127.0.0.1", 0)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    try:
        # FFmpeg connects at once; a push that never does leaves nothing running.
        await asyncio.wait_for(connected.wait(), timeout_s)
        await done.wait()
    except TimeoutError:
        return 4
    finally:
        remote_w.close()
    return 0


def main(argv: list[str]) -> int:
    host, port, timeout_s = argv[0], int(argv[1]), float(argv[2])
    cafile = argv[3] if len(argv) > 3 else None
    return asyncio.run(_relay(host, port, timeout_s, cafile))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
