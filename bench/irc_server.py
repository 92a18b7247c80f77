"""A real IRC server for tests and ``bench ask``: Debian's ngircd on a free loopback port,
run in the foreground from a temporary folder, and a bot that posts into a channel.

ngircd's flood penalties are switched off (``MaxPenaltyTime = 0``) so a bot can post a
burst the way a busy channel's many viewers would.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CONFIG = """[Global]
Name = irc.twincast.test
Info = twincast test chat
Listen = 127.0.0.1
Ports = {port}
PidFile = {root}/ngircd.pid
MotdPhrase = twincast test chat
[Limits]
MaxPenaltyTime = 0
MaxNickLength = 30
[Options]
PAM = no
Ident = no
DNS = no
"""


def available() -> bool:
    return shutil.which("ngircd") is not None or Path("/usr/sbin/ngircd").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class IrcServer:
    def __init__(self, port: int | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="twincast-irc-"))
        self.port = port or _free_port()
        conf = self.root / "ngircd.conf"
        conf.write_text(CONFIG.format(port=self.port, root=self.root))
        exe = shutil.which("ngircd") or "/usr/sbin/ngircd"
        self.proc = subprocess.Popen([exe, "-n", "-f", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("ngircd did not start") from None
                time.sleep(0.1)

    def url(self, channel: str) -> str:
        return f"irc://127.0.0.1:{self.port}/{channel}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class Bot:
    """A viewer in the channel (blocking sockets: a test's or a benchmark's thread)."""

    def __init__(self, server: IrcServer, nick: str, channel: str):
        self.channel = channel
        self.sock = socket.create_connection(("127.0.0.1", server.port), 5)
        self.sock.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :bot\r\nJOIN {channel}\r\n"
                          .encode())
        buf = b""
        deadline = time.monotonic() + 10
        while b" 366 " not in buf:  # the end of the channel's names: joined
            if time.monotonic() > deadline:
                raise RuntimeError("the bot could not join " + channel)
            buf += self.sock.recv(65536)

    def say(self, text: str) -> None:
        self.sock.sendall(f"PRIVMSG {self.channel} :{text}\r\n".encode())

    def say_many(self, lines: list[str]) -> None:
        self.sock.sendall(b"".join(f"PRIVMSG {self.channel} :{t}\r\n".encode()
                                   for t in lines))

    def close(self) -> None:
        try:
            self.sock.sendall(b"QUIT :bye\r\n")
        except OSError:
            pass
        self.sock.close()
