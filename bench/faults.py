"""``twincast bench faults``: what each fault costs, as the clients see it.

Each run puts a server under two real aiortc viewers (each with its data channel), makes
one thing fail, and records what the viewers were told, whether the server went on, and
what was lost; the goal is that nothing is lost but the faulted session's current
utterance. The faults:

- ``renderer``: the face model raises on every batch holding the victim's frames, for
  about a second in the middle of its sentence (the lane's renderer is wrapped).
- ``tts``: the voice raises half way through synthesising the victim's sentence.
- ``vanish``: a viewer in a process of its own is killed (SIGKILL: no goodbye, its
  connection just goes quiet) while the other viewer speaks.
- ``sigterm``: ``twincast serve`` in a child process, a viewer speaking and an RTMP stream
  live (where nginx with its RTMP module is installed), is sent SIGTERM.
- ``disk_full``: enrolment's features stage writing into a tmpfs too small for it (a user
  and mount namespace: ``unshare``), then the same command once the space is there.
- ``killed_enrolment``: enrolment killed with SIGKILL part way, then run again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["Welcome back to the stream, it is good to see so many of you here today.",
             "Let me show you the details of this one before we move on to the next."]
TRIGGER = "This is the sentence where the voice breaks down in the middle of it."
FAULTS = ("renderer", "tts", "vanish", "sigterm", "disk_full", "killed_enrolment")


class _FaultyRenderer:
    """The lane's renderer, raising while ``armed`` on any batch with a victim's frame."""

    def __init__(self, real: object, victims: set[str], armed: threading.Event):
        self.real, self.victims, self.armed = real, victims, armed

    def render(self, requests: list) -> list:
        if self.armed.is_set() and any(r.session in self.victims for r in requests):
            raise RuntimeError("injected renderer fault")
        return self.real.render(requests)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


class _FaultyVoice:
    """The avatar's voice, raising after the first piece of ``TRIGGER``."""

    def __init__(self, real: object):
        self.real = real

    def speak(self, text: str, pace: float = 1.0):  # noqa: ANN201 - the voice's chunks
        for chunk in self.real.speak(text, pace):  # type: ignore[attr-defined]
            yield chunk
            if text == TRIGGER:
                raise RuntimeError("injected synthesis fault")

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


class _Viewer:
    """One aiortc viewer with its data channel, receiving media until closed."""

    def __init__(self, http: object, url: str, token: str):
        self.http, self.url, self.auth = http, url, {"Authorization": f"Bearer {token}"}
        self.v = None
        self._pumps: list[asyncio.Future] = []

    async def open(self) -> _Viewer:
        from bench.client import open_session

        self.v = await open_session(self.http, self.url, self.auth["Authorization"][7:],
                                    events=True)

        async def drain(kind: str) -> None:
            while True:
                await self.v.tracks[kind].recv()

        self._pumps = [asyncio.ensure_future(drain(k)) for k in ("video", "audio")]
        for _ in range(100):  # the data channel opens a little after the media
            if self.v.channel.readyState == "open":
                break
            await asyncio.sleep(0.05)
        return self

    @property
    def sid(self) -> str:
        return self.v.location.rsplit("/", 1)[1]

    @property
    def events(self) -> list[dict]:
        return self.v.events

    async def say(self, text: str) -> str:
        async with self.http.post(f"{self.url}{self.v.location}/say", json={"text": text},
                                  headers=self.auth) as r:
            body = await r.json()
            if r.status >= 300:
                raise RuntimeError(f"say refused: {r.status} {body}")
            return body["utterance"]

    async def outcome(self, uid: str, timeout: float = 60.0) -> str | None:
        """How utterance ``uid`` ended (speech_ended, error, interrupted), or None."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in self.events:
                if e.get("utterance") == uid and e["type"] in ("speech_ended", "error",
                                                                "interrupted"):
                    return e["type"]
            await asyncio.sleep(0.05)
        return None

    async def started(self, uid: str, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(e.get("utterance") == uid and e["type"] == "speech_started"
                   for e in self.events):
                return True
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        for p in self._pumps:
            p.cancel()
        async with self.http.delete(f"{self.url}{self.v.location}", headers=self.auth):
            pass
        await self.v.pc.close()


async def _healthy(http: object, url: str) -> bool:
    try:
        async with http.get(f"{url}/healthz") as r:
            return r.status == 200
    except OSError:
        return False


def _errors_of(viewer: _Viewer) -> list[str]:
    return [e.get("message", "") for e in viewer.events if e["type"] == "error"]


async def _in_process(srv: object, url: str, fault: str, armed: threading.Event,
                      victims: set[str]) -> dict:
    """The renderer, tts and vanish faults on a running in-process server."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        bystander = await _Viewer(http, url, srv.token).open()
        late0 = srv.sessions[bystander.sid].stats["frames_late"]
        shown0 = srv.sessions[bystander.sid].stats["frames_shown"]
        out: dict = {"fault": fault}
        if fault == "vanish":
            proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "client_process.py"),
                                     url, srv.token], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            assert proc.stdout is not None
            location = await asyncio.get_running_loop().run_in_executor(
                None, proc.stdout.readline)
            gone = location.strip().rsplit("/", 1)[1]
            said = await bystander.say(SENTENCES[0])
            await asyncio.sleep(1.0)
            proc.kill()
            proc.wait()
            t_kill = time.monotonic()
            while gone in srv.sessions and time.monotonic() - t_kill < 120:
                await asyncio.sleep(0.2)
            out["vanished_session_closed_after_s"] = round(time.monotonic() - t_kill, 1) \
                if gone not in srv.sessions else None
            out["bystander_outcome"] = await bystander.outcome(said)
            out["bystander_next_outcome"] = await bystander.outcome(
                await bystander.say(SENTENCES[1]))
        else:
            victim = await _Viewer(http, url, srv.token).open()
            victims.add(victim.sid)
            said = await bystander.say(SENTENCES[0])
            if fault == "renderer":
                uid = await victim.say(SENTENCES[1])
                out["victim_started"] = await victim.started(uid)
                await asyncio.sleep(0.5)
                armed.set()
                # Armed until a batch with the victim's frames has failed, or its sentence
                # ended without one (a fixed 5 s missed every batch once on a starved host).
                stats = srv.sessions[victim.sid].stats
                end = time.monotonic() + 30.0
                while stats["frames_failed"] == 0 and time.monotonic() < end and \
                        not any(e.get("utterance") == uid and e["type"] in (
                            "speech_ended", "error", "interrupted") for e in victim.events):
                    await asyncio.sleep(0.02)
                armed.clear()
            else:
                uid = await victim.say(TRIGGER)
            out["victim_outcome"] = await victim.outcome(uid)
            out["victim_told"] = _errors_of(victim)
            out["victim_next_outcome"] = await victim.outcome(
                await victim.say(SENTENCES[0]))
            out["victim_frames_failed"] = srv.sessions[victim.sid].stats["frames_failed"]
            out["bystander_outcome"] = await bystander.outcome(said)
            out["bystander_next_outcome"] = await bystander.outcome(
                await bystander.say(SENTENCES[1]))
            await victim.close()
        st = srv.sessions[bystander.sid].stats
        out["bystander_errors"] = _errors_of(bystander)
        shown = st["frames_shown"] - shown0
        out["bystander_late_ratio"] = round((st["frames_late"] - late0) / max(shown, 1), 4)
        out["server_healthy_after"] = await _healthy(http, url)
        await bystander.close()
    lost = []
    if out.get("victim_outcome") == "error":
        lost.append("the victim's current utterance")
    if out.get("bystander_outcome") != "speech_ended" or \
            out.get("bystander_next_outcome") != "speech_ended":
        lost.append("the bystander's speech")
    if fault != "vanish" and out.get("victim_next_outcome") != "speech_ended":
        lost.append("the victim's next utterance")
    out["lost"] = lost
    out["survived"] = bool(out["server_healthy_after"])
    return out


def _server_faults(bundle: Path, faults: list[str]) -> list[dict]:
    from streaming.app import Server, ServerConfig, bundle_names
    from streaming.routes import RunningServer

    # Admission by rendering capacity is off (as in bench serve): the faults need their
    # victim and bystander both in, and on an AVX2-only 2-core host the ci sample renders
    # about 55 frames/s, a hair under two sessions' 25 each at the 0.9 share.
    srv = Server(bundle_names([bundle]), ServerConfig(token="faults", max_sessions=6,
                                                      capacity_share=1e9, host_share=None,
                                                      lost_share=None,
                                                      allow_unconsented=True))
    srv.load()
    name = next(iter(srv.avatars))
    if srv.voices.get(name) is None:
        raise RuntimeError("bench faults needs an avatar with a voice")
    armed, victims = threading.Event(), set()
    for lane in srv.scheduler.lanes:
        lane.renderers[name] = _FaultyRenderer(lane.renderers[name], victims, armed)
    srv.voices[name] = _FaultyVoice(srv.voices[name])
    running = RunningServer(srv)
    try:
        return [asyncio.run(_in_process(srv, running.url, f, armed, victims))
                for f in faults]
    finally:
        running.stop()


def _sigterm(bundle: Path, work: Path) -> dict:
    """``twincast serve`` in a child process, sent SIGTERM mid-sentence."""
    import aiohttp

    from bench import localrtmp
    from bench.server_process import free_port

    port, token = free_port(), "faults-sigterm"
    url = f"http://127.0.0.1:{port}"
    nginx = None
    if localrtmp.available():
        nginx = localrtmp.LocalRtmp(work / "nginx")
        nginx.start()
    err = open(work / "serve.log", "w+")  # noqa: SIM115 - read after the child ends
    proc = subprocess.Popen([sys.executable, "-m", "twincast.cli", "serve", str(bundle),
                             "--port", str(port), "--token", token,
                             "--rtmp-allow", "127.0.0.1", "--allow-unconsented"], cwd=ROOT,
                            stdout=err,
                            stderr=subprocess.STDOUT, env={**os.environ,
                                                           "TWINCAST_PROGRESS": "0"})
    out: dict = {"fault": "sigterm"}

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                if await _healthy(http, url):
                    break
                if proc.poll() is not None:
                    raise RuntimeError("twincast serve ended before it served")
                await asyncio.sleep(0.2)
            viewer = await _Viewer(http, url, token).open()
            stream_id = None
            if nginx is not None:
                async with http.post(f"{url}/v1/streams", headers=viewer.auth,
                                     json={"rtmp": nginx.url("live"), "width": 320,
                                           "height": 180}) as r:
                    stream_id = (await r.json()).get("id")
                for _ in range(300):
                    async with http.get(f"{url}/v1/sessions/{stream_id}",
                                        headers=viewer.auth) as r:
                        if (await r.json()).get("rtmp_state") == "live":
                            out["stream_was_live"] = True
                            break
                    await asyncio.sleep(0.1)
            uid = await viewer.say(SENTENCES[0])
            await viewer.started(uid)
            await asyncio.sleep(0.5)
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while proc.poll() is None and time.monotonic() - t < 60:
                await asyncio.sleep(0.05)
            out["exit_code"] = proc.poll()
            out["exit_after_s"] = round(time.monotonic() - t, 2)
            await asyncio.sleep(0.3)
            closing = [e for e in viewer.events if e["type"] == "closing"]
            out["viewer_told"] = closing[0]["reason"] if closing else None
            out["viewer_last_event"] = viewer.events[-1]["type"] if viewer.events else None
            out.setdefault("stream_was_live", False)
            out["stream_started"] = stream_id is not None
            for p in viewer._pumps:
                p.cancel()
            await viewer.v.pc.close()

    try:
        asyncio.run(run())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if nginx is not None:
            nginx.kill()
    err.seek(0)
    text = err.read()
    err.close()
    out["stream_flushed"] = ("stream flushed and closed" in text) if out["stream_was_live"] \
        else None
    out["traceback_in_log"] = "Traceback" in text
    # The operator chose this token: it must not reach the log (log lines are shipped and
    # kept), not even in the "open this link" line.
    out["token_in_log"] = token in text
    out["survived"] = out["exit_code"] == 0 and out["viewer_told"] is not None
    out["lost"] = ["the utterance being said (the server stopped)"]
    return out


def _clips(data: Path, n: int, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for f in sorted(data.glob("*.mpg"))[:n]:
        shutil.copy(f, into / f.name)
    return into


def _enrol_cmd(clips: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "twincast.cli", "enrol", str(clips), "--workdir", str(work),
            "--preset", "ci", "--features-only"]


def _disk_full(data: Path, work: Path, clips_n: int = 8) -> dict:
    """Enrolment's features into a tmpfs too small, then room made and the same command."""
    if shutil.which("unshare") is None:
        return {"fault": "disk_full", "skipped": "unshare is not installed"}
    clips = _clips(data, clips_n, work / "clips")
    # Measured first: what the stage writes, so the tmpfs can hold about a third of it.
    full = work / "measure"
    subprocess.run(_enrol_cmd(clips, full), cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "TWINCAST_PROGRESS": "0"})
    need = sum(f.stat().st_size for f in full.rglob("*") if f.is_file())
    shutil.rmtree(full)
    small = max(1, need // 3 // 1024)
    mnt = work / "mnt"
    mnt.mkdir()
    driver = (
        "import json, subprocess, sys, os, pathlib\n"
        f"mnt = pathlib.Path({str(mnt)!r}); cmd = {_enrol_cmd(clips, mnt / 'work')!r}\n"
        "env = {**os.environ, 'TWINCAST_PROGRESS': '0'}\n"
        f"subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size={small}k', 'tmpfs', str(mnt)],"
        " check=True)\n"
        "a = subprocess.run(cmd, capture_output=True, text=True, env=env)\n"
        "scraps = [str(p) for p in mnt.rglob('.*.tmp*')]\n"
        "kept = len(list(mnt.rglob('seg-*.npz')))\n"
        f"subprocess.run(['mount', '-o', 'remount,size={need * 3 // 1024}k', str(mnt)],"
        " check=True)\n"
        "b = subprocess.run(cmd, capture_output=True, text=True, env=env)\n"
        "print(json.dumps({'rc': a.returncode, 'stderr': a.stderr, 'scraps': scraps,\n"
        "  'kept': kept, 'rc2': b.returncode, 'stderr2': b.stderr,\n"
        "  'report': (mnt / 'work' / 'features' / 'report.json').exists()}))\n")
    r = subprocess.run(["unshare", "-r", "-m", sys.executable, "-c", driver], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"fault": "disk_full", "skipped": f"unshare failed: {r.stderr.strip()[-200:]}"}
    got = json.loads(r.stdout.strip().splitlines()[-1])
    lines = [ln for ln in got["stderr"].splitlines() if ln.startswith("twincast: error")]
    m = re.search(r"(\d+) units to compute, (\d+) reused", got["stderr2"])
    return {"fault": "disk_full", "tmpfs_kb": small, "stage_writes_kb": need // 1024,
            "exit_code": got["rc"], "error_line": lines[-1] if lines else None,
            "traceback": "Traceback" in got["stderr"], "scraps_left": len(got["scraps"]),
            "segments_kept": got["kept"], "rerun_exit_code": got["rc2"],
            "rerun_reused": int(m.group(2)) if m else None,
            "rerun_computed": int(m.group(1)) if m else None,
            "finished": got["report"],
            "survived": got["rc"] != 0 and bool(lines) and "Traceback" not in got["stderr"]
            and got["rc2"] == 0 and got["report"],
            "lost": [] if got["report"] else ["the enrolment"]}


def _killed_enrolment(data: Path, work: Path, clips_n: int = 8) -> dict:
    clips = _clips(data, clips_n, work / "clips")
    run = work / "run"
    env = {**os.environ, "TWINCAST_PROGRESS": "0"}
    proc = subprocess.Popen(_enrol_cmd(clips, run) + ["--workers", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    done: list[Path] = []
    end = time.monotonic() + 300
    while time.monotonic() < end and proc.poll() is None:
        done = list(run.glob("features/clips/*/video/seg-*.npz"))
        if len(done) >= 3:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list(run.glob("features/clips/*/video/seg-*.npz"))
    r = subprocess.run(_enrol_cmd(clips, run), cwd=ROOT, env=env, capture_output=True,
                       text=True)
    m = re.search(r"(\d+) units to compute, (\d+) reused", r.stderr)
    finished = (run / "features" / "report.json").exists()
    return {"fault": "killed_enrolment", "segments_when_killed": len(done),
            "rerun_exit_code": r.returncode,
            "rerun_reused": int(m.group(2)) if m else None,
            "rerun_computed": int(m.group(1)) if m else None,
            "scraps_left": len(list(run.rglob(".*.tmp*"))), "finished": finished,
            "survived": r.returncode == 0 and finished,
            "lost": [] if finished else ["the enrolment"]}


def bench_faults(bundle: Path, faults: list[str], data: Path) -> dict:
    """Run the named faults (``FAULTS``); ``data``: a folder of .mpg clips for the
    enrolment faults (GRID's train split)."""
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    results: list[dict] = []
    in_process = [f for f in faults if f in ("renderer", "tts", "vanish")]
    if in_process:
        results += _server_faults(bundle, in_process)
    with tempfile.TemporaryDirectory(prefix="twincast-faults-") as tmp:
        for f in faults:
            t0 = time.monotonic()
            work = Path(tmp) / f
            work.mkdir()
            if f == "sigterm":
                results.append(_sigterm(bundle, work))
            elif f == "disk_full":
                results.append(_disk_full(data, work))
            elif f == "killed_enrolment":
                results.append(_killed_enrolment(data, work))
            else:
                continue
            results[-1]["seconds"] = round(time.monotonic() - t0, 1)
    order = {f: i for i, f in enumerate(faults)}
    results.sort(key=lambda r: order[r["fault"]])
    return {"faults": results,
            "survived": sum(1 for r in results if r.get("survived")),
            "of": len(results),
            "method": "bench/faults.py: two aiortc viewers with data channels; the fault "
                      "injected by wrapping the renderer or the voice, killing a client "
                      "process, SIGTERM to a serve child, a tmpfs too small for enrolment "
                      "in a user namespace, SIGKILL to an enrolment"}
