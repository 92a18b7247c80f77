"""``twincast serve`` in a child process, for benchmarks that must measure the server alone.

A benchmark's own viewers decode video and keep Python busy; in the server's process they
would take the server's CPU and GIL and be counted in its memory. In a child process the
server is measured as it runs for a user: its memory, descriptors and threads are read
from ``/proc``, its sessions' figures from its API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from avatar.errors import TwincastError

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running ``twincast serve``: ``url``, ``token``, ``pid``; its output goes to
    ``log_path``."""

    def __init__(self, bundle: Path, log_path: Path, token: str = "bench",
                 args: tuple[str, ...] = (), verbose: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.log_path = log_path
        self._log = open(log_path, "w+")  # noqa: SIM115 - read after the child ends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "twincast.cli", *(["-v"] if verbose else []), "serve",
             str(bundle), "--port",
             str(self.port), "--token", token, "--allow-unconsented", *args], cwd=ROOT,
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "TWINCAST_PROGRESS": "0"})

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_ready(self, http: object, timeout: float = 300.0) -> None:
        """Until ``/healthz`` answers (the bundle loaded, the renderer warmed up)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                # One line for the user (a bundle path that does not exist, say): the
                # server's own last words, not a traceback from here.
                self._log.flush()
                lines = [ln for ln in self.log_path.read_text().splitlines() if ln.strip()]
                why = lines[-1].strip() if lines else "no output"
                raise TwincastError(f"twincast serve ended before it served (exit "
                                    f"{self.proc.returncode}: {why}); see {self.log_path}")
            try:
                async with http.get(f"{self.url}/healthz") as r:  # type: ignore[attr-defined]
                    if r.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"twincast serve did not answer in {timeout:.0f} s; see "
                           f"{self.log_path}")

    def sample(self) -> dict:
        """CPU seconds used so far, resident memory (MB), open descriptors and threads of the
        server process."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        from streaming.thread_cpu import stat_cpu_seconds

        cpu = stat_cpu_seconds(Path(f"/proc/{self.pid}/stat"), os.sysconf("SC_CLK_TCK"))
        if cpu is None:
            raise RuntimeError(f"the server (pid {self.pid}) has gone")
        return {"cpu_s": round(cpu, 2),
                "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
                "fds": len(os.listdir(f"/proc/{self.pid}/fd")),
                "threads": int(fields["Threads"])}

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a graceful stop), SIGKILL after ``timeout``; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")
