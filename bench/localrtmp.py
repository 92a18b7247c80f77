"""A throwaway RTMP ingest on loopback (Debian's nginx with its RTMP module), for the
stream tests and ``twincast bench stream``: what a platform's ingest would be."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from avatar.errors import TwincastError

MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


def available() -> bool:
    return shutil.which("nginx") is not None and MODULE.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRtmp:
    """nginx in the foreground in ``root``; players may connect before the publisher."""

    def __init__(self, root: Path):
        if not available():
            raise TwincastError("a local RTMP server needs nginx and libnginx-mod-rtmp "
                                "(apt-get install nginx-light libnginx-mod-rtmp)")
        self.root, self.port = Path(root), free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "nginx.conf").write_text(
            f"load_module {MODULE};\ndaemon off;\nmaster_process off;\n"
            f"pid {self.root}/nginx.pid;\nerror_log {self.root}/error.log info;\n"
            "events { worker_connections 64; }\n"
            f"rtmp {{ server {{ listen 127.0.0.1:{self.port}; application live {{ live on; "
            "record off; idle_streams on; } } }\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["nginx", "-p", str(self.root), "-c",
                                      str(self.root / "nginx.conf"), "-e",
                                      str(self.root / "error.log")])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TwincastError("nginx did not start: " +
                            (self.root / "error.log").read_text()[-500:])

    def kill(self) -> None:
        """Gone at once, as a crashed ingest is (no goodbye to the publisher)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"
