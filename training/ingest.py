"""Footage in: find clips, check them, and decode them as a stream.

Video comes out at a constant frame rate whatever the source rate (each output frame shows
the source frame on screen at its time), audio as mono float32 at the requested rates.
Nothing decodes a whole clip into memory: frames are yielded one by one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from avatar.errors import TwincastError, path_error
from training.config import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipInfo:
    """What a quick look at a footage file tells."""

    path: Path
    clip_id: str
    duration: float
    """Seconds of video."""
    width: int
    height: int
    source_fps: float
    video_start: float
    """Time of the first video frame in the container (seconds); frame 0 of the constant-rate
    output is taken at this time."""
    n_frames: int
    """Frames at the output rate."""
    audio_rate: int


def find_footage(paths: Sequence[Path]) -> list[Path]:
    """Expand files and folders into a sorted list of footage files."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise path_error(p, "no such file or folder")
        if p.is_dir():
            found = sorted(f for f in p.iterdir()
                           if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                raise path_error(p, "folder holds no video files "
                                 f"({', '.join(VIDEO_EXTENSIONS)})")
            files.extend(found)
        else:
            files.append(p)
    return files


def clip_ids(files: Sequence[Path]) -> list[str]:
    """Stable, unique, filesystem-safe ids from file names."""
    ids: list[str] = []
    seen: set[str] = set()
    for f in files:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f.stem) or "clip"
        cid = base
        if cid in seen:
            cid = f"{base}-{hashlib.sha1(str(f.resolve()).encode()).hexdigest()[:6]}"
        seen.add(cid)
        ids.append(cid)
    return ids


def probe(path: Path, clip_id: str, fps: int, min_seconds: float) -> ClipInfo:
    """Open the file and check it is footage twincast can learn from; raise a one-line error
    naming the file otherwise."""
    if not path.is_file():
        raise path_error(path, "is not a file")
    if path.stat().st_size == 0:
        raise path_error(path, "file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise path_error(path, f"cannot be read as video ({_short(e)}); "
                         "is it a truncated download or not a video file?") from None
    with container:
        vstreams = container.streams.video
        astreams = container.streams.audio
        if not vstreams:
            raise path_error(path, "has no video track; enrolment needs footage of the "
                             "person's face")
        if not astreams:
            raise path_error(path, "has no audio track; enrolment needs the person "
                             "speaking on camera")
        vs = vstreams[0]
        # Decode the first frame: a header can parse while the stream itself is garbage.
        first = _first_frame_time(container, vs, path)
        duration = _duration(container, vs, first)
        width, height = vs.codec_context.width, vs.codec_context.height
        rate = float(vs.average_rate or vs.guessed_rate or fps)
        audio_rate = int(astreams[0].codec_context.sample_rate or 0)
    if not width or not height:
        raise path_error(path, "video track has no frame size")
    if duration < min_seconds:
        raise path_error(path, f"only {duration:.1f} s long; each clip must be at least "
                         f"{min_seconds:g} s")
    return ClipInfo(path=path, clip_id=clip_id, duration=duration, width=width, height=height,
                    source_fps=rate, video_start=first,
                    n_frames=int(math.floor(duration * fps + 1e-6)), audio_rate=audio_rate)


def _first_frame_time(container: av.container.InputContainer, vs: av.video.VideoStream,
                      path: Path) -> float:
    try:
        for frame in container.decode(vs):
            return float(frame.time if frame.time is not None else 0.0)
    except av.error.FFmpegError as e:
        raise path_error(path, f"video cannot be decoded ({_short(e)})") from None
    raise path_error(path, "video track holds no decodable frame (truncated or corrupt?)")


def _duration(container: av.container.InputContainer, vs: av.video.VideoStream,
              first: float) -> float:
    if vs.duration is not None and vs.time_base is not None:
        return float(vs.duration * vs.time_base)
    if container.duration is not None:
        return max(0.0, container.duration / 1_000_000 - first)
    if vs.frames and vs.average_rate:
        return vs.frames / float(vs.average_rate)
    return 0.0


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # PyAV repeats the path in its messages; the caller names the file already.
    return re.sub(r":\s*'[^']*'$", "", text)[:160]


def iter_frames(info: ClipInfo, fps: int, start: int, stop: int,
                max_side: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(n, rgb)`` for output frames ``start <= n < stop`` at a constant ``fps``.

    Output frame n shows the source frame on screen at ``video_start + n / fps``. Seeks to the
    keyframe before ``start`` so segments of a long clip can be decoded independently.
    """
    stop = min(stop, info.n_frames)
    if start >= stop:
        return
    with av.open(str(info.path)) as container:
        vs = container.streams.video[0]
        vs.thread_type = "AUTO"
        t_start = info.video_start + start / fps
        if start > 0 and vs.time_base:
            # Seek a little early: timestamps of some formats are coarse.
            container.seek(max(0, int((t_start - 1.0) / vs.time_base)), stream=vs,
                           backward=True)
        n = start
        # Keep the undecoded frame and convert it only when an output frame shows it: a
        # 60 fps source or the frames before a seek point are never converted.
        prev: av.VideoFrame | None = None
        prev_rgb: np.ndarray | None = None
        try:
            for frame in container.decode(vs):
                t = frame.time
                if t is None:
                    continue
                # Every output frame whose time falls before this source frame shows `prev`.
                while n < stop and prev is not None and info.video_start + n / fps < t - 1e-4:
                    if prev_rgb is None:
                        prev_rgb = _to_rgb(prev, max_side)
                    yield n, prev_rgb
                    n += 1
                if n >= stop:
                    return
                prev, prev_rgb = frame, None
        except av.error.FFmpegError as e:
            log.warning("%s: decoding stopped at frame %d (%s)", info.path, n, _short(e))
        # The last source frame stays on screen until the clip ends.
        while n < stop and prev is not None:
            if prev_rgb is None:
                prev_rgb = _to_rgb(prev, max_side)
            yield n, prev_rgb
            n += 1


def _to_rgb(frame: av.VideoFrame, max_side: int | None) -> np.ndarray:
    w, h = frame.width, frame.height
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        # Scale in the decoder's own swscale: cheaper than converting then resizing.
        return frame.to_ndarray(format="rgb24", width=int(round(w * s)) // 2 * 2,
                                height=int(round(h * s)) // 2 * 2)
    return frame.to_ndarray(format="rgb24")


def decode_audio(path: Path, rates: Sequence[int]) -> dict[int, np.ndarray]:
    """Decode the first audio track as mono float32 at each of ``rates`` in one pass."""
    resamplers = {r: av.AudioResampler(format="fltp", layout="mono", rate=r) for r in rates}
    parts: dict[int, list[np.ndarray]] = {r: [] for r in rates}
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(audio=0):
                frame.pts = None  # let the resampler keep its own continuous clock
                for r, rs in resamplers.items():
                    for out in rs.resample(frame):
                        parts[r].append(out.to_ndarray()[0])
    except av.error.FFmpegError as e:
        raise path_error(path, f"audio cannot be decoded ({_short(e)})") from None
    for r, rs in resamplers.items():
        for out in rs.resample(None):
            parts[r].append(out.to_ndarray()[0])
    result = {r: (np.concatenate(p).astype(np.float32) if p else np.zeros(0, np.float32))
              for r, p in parts.items()}
    if all(a.size == 0 for a in result.values()):
        raise path_error(path, "audio track holds no decodable audio")
    return result


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Content hash of a footage file (sha256, streamed)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise path_error(path, f"cannot be read ({e.strerror})") from None
    return h.hexdigest()[:24]


def require_writable_dir(path: Path) -> None:
    """Create ``path`` if needed and prove a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe_file = path / ".twincast-write-test"
        probe_file.write_bytes(b"")
        probe_file.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise TwincastError(f"{path}: cannot write there ({reason}); "
                            "choose another --workdir") from None
