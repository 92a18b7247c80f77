"""``twincast bench watermark``: does the invisible mark survive what outputs go through,
what does it cost, and does it ever appear where it was not put?

The avatar speaks the given speech for ``minutes``; every frame and the voice are marked as
``render`` and the server mark them. Each copy then goes through one path a real copy
takes, with the real encoders: aiortc's VP8 encoder at the rate a WebRTC session starts at
and at its floor, x264 (PyAV) at platform rates, FFmpeg's scaler to 720p and 480p, a crop
of 10 % off one corner, a platform's second encode; the voice through Opus as WebRTC sends
it, AAC as files and platforms carry it, and an 8 kHz telephone band. For each path:

* bit accuracy: the 80 bits of every 10.24 s block read back against those laid down;
* detection rate: of ``window_s`` stretches cut anywhere, the share in which ``verify``
  finds the mark with the right id and a right time code;
* false positives: the same reading on unmarked real footage and speech, and on the same
  avatar's output rendered unmarked (goal 0);
* cost: PSNR of marked against unmarked frames, SNR of the marked voice, and the marking's
  time per frame against the render's at batch 1.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from avatar.audio_mark import CHIP_S, READ_RATE, read_audio
from avatar.mark_code import BLOCK_CHIPS, Reading, encode
from avatar.video_mark import CHANNELS, FRAMES_PER_CHIP, read_video, thumbnail_features
from avatar.watermark import StreamMarks, WatermarkConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatermarkBenchConfig:
    minutes: float = 5.0
    window_s: float = 20.0
    """How long a stretch ``verify`` is given for the detection rate."""
    speech: tuple[Path, ...] = ()
    """What the avatar says: audio files or folders of them, looped to ``minutes``."""
    unmarked_video: tuple[Path, ...] = ()
    unmarked_audio: tuple[Path, ...] = ()
    """Real footage and speech that never saw the mark (false positives)."""
    t0: float = 1_764_547_200.0
    """The marks' UTC clock (2025-12-01): fixed, so runs compare."""
    paths: tuple[str, ...] = field(default=())
    """Only these video/audio paths (all when empty)."""


# ------------------------------------------------------------------ video paths
class _Stage:
    def push(self, frame):  # noqa: ANN001, ANN201 - av.VideoFrame in, a list out
        raise NotImplementedError

    def flush(self) -> list:
        return []


def _timed(out, frame):  # noqa: ANN001, ANN202 - av.VideoFrame
    """``out`` with ``frame``'s timestamp (a decoder's flushed frames may have none)."""
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    return out


class _Scale(_Stage):
    """FFmpeg's scaler (swscale, bicubic), as a platform's ladder or a player rescales."""

    def __init__(self, width: int, height: int):
        self.size = (width, height)

    def push(self, frame):  # noqa: ANN001, ANN201
        out = frame.reformat(width=self.size[0], height=self.size[1], format="yuv420p")
        return [_timed(out, frame)]


class _Crop(_Stage):
    """Cut ``share`` of the width and of the height off the top-left corner (the worst
    case for the reader: the frame's middle moves)."""

    def __init__(self, share: float):
        self.share = share

    def push(self, frame):  # noqa: ANN001, ANN201
        import av

        rgb = frame.to_ndarray(format="rgb24")
        h, w = rgb.shape[:2]
        dy, dx = int(h * self.share) // 2 * 2, int(w * self.share) // 2 * 2
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[dy:, dx:]), format="rgb24")
        return [_timed(out, frame)]


class _X264(_Stage):
    """x264 through PyAV at a target bit rate (ABR, 2 s keyframes), decoded back."""

    def __init__(self, kbps: int, fps: int):
        self.kbps, self.fps = kbps, fps
        self.n = 0
        self.enc = None
        self.dec = None

    def _open(self, frame) -> None:  # noqa: ANN001
        import av

        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height = frame.width, frame.height
        enc.pix_fmt = "yuv420p"
        enc.time_base = Fraction(1, self.fps)
        enc.framerate = Fraction(self.fps, 1)
        enc.bit_rate = self.kbps * 1000
        enc.gop_size = 2 * self.fps
        enc.options = {"preset": "veryfast", "maxrate": f"{self.kbps}k",
                       "bufsize": f"{2 * self.kbps}k"}
        self.enc = enc
        self.dec = av.CodecContext.create("h264", "r")

    def _decode(self, packets) -> list:  # noqa: ANN001
        out = []
        for p in packets:
            out.extend(self.dec.decode(p))
        return out

    def push(self, frame):  # noqa: ANN001, ANN201
        if self.enc is None:
            self._open(frame)
        f = frame.reformat(format="yuv420p")
        f.pts, f.time_base = self.n, Fraction(1, self.fps)
        self.n += 1
        return self._decode(self.enc.encode(f))

    def flush(self) -> list:
        if self.enc is None:
            return []
        return self._decode(self.enc.encode(None)) + list(self.dec.decode(None))


class _Vp8(_Stage):
    """aiortc's own VP8 encoder (its settings: CBR, real-time, noise sensitivity 4) at a
    fixed target rate, its RTP payloads put back together and decoded by libvpx."""

    def __init__(self, bitrate: int):
        from aiortc.codecs.vpx import Vp8Encoder

        self.enc = Vp8Encoder()
        self.enc.target_bitrate = bitrate
        self.dec = None
        self.i = 0

    def push(self, frame):  # noqa: ANN001, ANN201
        import av
        from aiortc.codecs.vpx import vp8_depayload

        if self.dec is None:
            self.dec = av.CodecContext.create("libvpx", "r")
        f = frame.reformat(format="yuv420p")
        f.pts, f.time_base = self.i * 3600, Fraction(1, 90000)
        payloads, _ = self.enc.encode(f, force_keyframe=self.i == 0)
        self.i += 1
        data = b"".join(vp8_depayload(p) for p in payloads)
        return list(self.dec.decode(av.Packet(data))) if data else []


def video_paths(fps: int) -> dict[str, list[_Stage]]:
    from aiortc.codecs.vpx import DEFAULT_BITRATE, MIN_BITRATE

    return {
        "webrtc_vp8_start_rate": [_Vp8(DEFAULT_BITRATE)],
        "webrtc_vp8_floor_rate": [_Vp8(MIN_BITRATE)],
        "h264_1mbit": [_X264(1000, fps)],
        "h264_3mbit": [_X264(3000, fps)],
        "rescale_720p_h264_2mbit": [_Scale(1280, 720), _X264(2000, fps)],
        "rescale_480p_h264_1mbit": [_Scale(854, 480), _X264(1000, fps)],
        "crop_10pct_h264_2mbit": [_Crop(0.10), _X264(2000, fps)],
        "platform_reencode_720p_then_480p": [_Scale(1280, 720), _X264(3000, fps),
                                             _Scale(854, 480), _X264(1000, fps)],
    }


def features_of(frame) -> np.ndarray:  # noqa: ANN001 - av.VideoFrame
    """What ``verify`` keeps of a decoded frame (the same reduction)."""
    small = frame.reformat(width=128, height=96, format="gray",
                           interpolation="AREA").to_ndarray()
    return thumbnail_features(small)


class _Path:
    def __init__(self, stages: list[_Stage]):
        self.stages = stages
        self.features: list[np.ndarray] = []
        self.seconds = 0.0

    def push(self, frame) -> None:  # noqa: ANN001
        t = time.perf_counter()
        frames = [frame]
        for s in self.stages:
            frames = [o for f in frames for o in s.push(f)]
        self.features.extend(features_of(f) for f in frames)
        self.seconds += time.perf_counter() - t

    def close(self) -> np.ndarray:
        pending: list = []
        for s in self.stages:
            pending = [o for f in pending for o in s.push(f)] + s.flush()
        self.features.extend(features_of(f) for f in pending)
        return np.array(self.features).reshape(-1, CHANNELS)


# ------------------------------------------------------------------ audio paths
def _codec(x: np.ndarray, rate: int, codec: str, kbps: int, codec_rate: int) -> np.ndarray:
    """``x`` (mono float at ``rate``) through an encoder and back, at ``READ_RATE``."""
    import av

    from avatar.audio import resample

    y = resample(x, rate, codec_rate) if codec_rate != rate else x
    buf = io.BytesIO()
    fmt = {"aac": "mp4", "libopus": "ogg"}[codec]
    with av.open(buf, "w", format=fmt) as out:
        s = out.add_stream(codec, rate=codec_rate)
        s.bit_rate, s.layout = kbps * 1000, "mono"
        pcm = (np.clip(y, -1, 1) * 32767).astype(np.int16)
        step = codec_rate // 50
        for i in range(0, len(pcm), step):
            f = av.AudioFrame.from_ndarray(pcm[None, i:i + step], format="s16", layout="mono")
            f.sample_rate, f.pts = codec_rate, i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    buf.seek(0)
    got = []
    resampler = av.AudioResampler(format="flt", layout="mono", rate=READ_RATE)
    with av.open(buf) as inp:
        for f in inp.decode(audio=0):
            got.extend(o.to_ndarray().reshape(-1) for o in resampler.resample(f))
    return np.concatenate(got)


def audio_paths() -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """name: (which marked copy it starts from, what it goes through). ``webrtc`` is the
    voice marked as the server marks it (48 kHz, 20 ms frames), ``file`` as ``render``
    marks its 16 kHz track."""
    from avatar.audio import resample

    return {
        "webrtc_opus_64k": ("webrtc", lambda x: _codec(x, 48000, "libopus", 64, 48000)),
        "opus_32k": ("webrtc", lambda x: _codec(x, 48000, "libopus", 32, 48000)),
        "file_aac_128k": ("file", lambda x: _codec(x, 16000, "aac", 128, 16000)),
        "platform_aac_64k_44k": ("file", lambda x: _codec(x, 16000, "aac", 64, 44100)),
        "telephone_8khz": ("file", lambda x: resample(resample(x, 16000, 8000), 8000,
                                                      READ_RATE)),
    }


# ------------------------------------------------------------------ scoring
def _score(reading_at, n_units: int, units_per_s: float, block_s: float,
           marks: StreamMarks, window_s: float, whole: Reading) -> dict:
    """Bit accuracy over the whole copy's blocks; detection over windows cut at every
    ``window_s`` (not on block edges)."""
    bits_ok = bits_all = blocks_ok = blocks_all = 0
    for blk in whole.blocks:
        b = round(blk.start_s / block_s)
        if blk.start_s < -0.5 or (b + 1) * block_s * units_per_s > n_units + units_per_s:
            continue  # a partial block at either end
        truth = encode(marks.ident, int(marks.t0 + b * block_s))
        bits_ok += int((blk.bits == truth).sum())
        bits_all += len(truth)
        blocks_all += 1
        blocks_ok += int(blk.ident == marks.ident and blk.utc_second == int(marks.t0 + b * block_s))
    step = int(window_s * units_per_s)
    found = total = 0
    for a in range(0, n_units - step + 1, step):
        r = reading_at(a, a + step)
        total += 1
        good = r.found and r.ident == marks.ident and any(
            blk.utc_second is not None and abs(blk.utc_second - (marks.t0 + a / units_per_s
                                                                 + blk.start_s)) <= 1.5
            for blk in r.blocks)
        found += int(good)
    return {"bit_accuracy": round(bits_ok / bits_all, 4) if bits_all else None,
            "blocks_read_right": f"{blocks_ok}/{blocks_all}",
            "detection_rate": round(found / total, 3) if total else None,
            "windows": total, "sync_z": round(whole.sync_z, 1)}


def _false_positives(readings: list[Reading]) -> dict:
    found = sum(r.found for r in readings)
    crc = sum(b.ident is not None for r in readings for b in r.blocks)
    return {"windows": len(readings), "found": found, "blocks_passing_crc": crc,
            "max_sync_z": round(max((r.sync_z for r in readings), default=0.0), 1)}


# ------------------------------------------------------------------ run
def _speech(paths: tuple[Path, ...], seconds: float) -> np.ndarray:
    from avatar.audio import SPEECH_RATE, load_audio
    from avatar.errors import TwincastError

    files = _files(paths, (".wav", ".flac", ".mp3", ".mpg", ".mp4", ".ogg", ".m4a"))
    if not files:
        raise TwincastError("bench watermark: --speech names no audio files")
    parts, total, i = [], 0, 0
    while total < seconds * SPEECH_RATE:
        a = load_audio(files[i % len(files)], SPEECH_RATE)
        parts.append(a)
        total += len(a)
        i += 1
    return np.clip(np.concatenate(parts)[:int(seconds * SPEECH_RATE)], -1, 1)


def _files(paths: tuple[Path, ...], exts: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in exts))
        elif p.is_file():
            out.append(p)
    return out


def _unmarked_video(paths: tuple[Path, ...]) -> tuple[np.ndarray, float]:
    import av

    feats, fps = [], 25.0
    for f in _files(paths, (".mpg", ".mp4", ".mov", ".mkv", ".webm", ".avi")):
        with av.open(str(f)) as c:
            fps = float(c.streams.video[0].average_rate or 25)
            feats.extend(features_of(fr) for fr in c.decode(video=0))
    return np.array(feats).reshape(-1, CHANNELS), fps


def _render_cost(avatar, audio: np.ndarray, marks: StreamMarks, n: int = 40) -> dict:  # noqa: ANN001
    from avatar.avatar import FrameRequest

    windows = avatar.mel_windows(audio[:16000 * 4])
    frames, render = [], []
    for i in range(min(n, len(windows))):
        t = time.perf_counter()
        frames.extend(avatar.render([FrameRequest(idle_index=i, mel=windows[i])]))
        render.append(time.perf_counter() - t)
    mark = []
    for i, f in enumerate(frames * 3):
        t = time.perf_counter()
        marks.video.apply(f, i)
        mark.append(time.perf_counter() - t)
    chunk = marks.audio.rate // 50
    voice = []
    pcm = (audio[:16000 * 4] * 32767).astype(np.int16)
    for j in range(len(pcm) // chunk):
        t = time.perf_counter()
        marks.audio.process_int16(pcm[j * chunk:(j + 1) * chunk], j * chunk)
        voice.append(time.perf_counter() - t)
    r, m = float(np.median(render)), float(np.median(mark))
    return {"render_ms_batch1": round(r * 1000, 2), "video_mark_ms": round(m * 1000, 3),
            "video_mark_share_of_render": round(m / r, 4),
            "audio_mark_ms_per_20ms_16k": round(float(np.median(voice)) * 1000, 3)}


def run(bundle: Path, cfg: WatermarkBenchConfig) -> dict:
    from tqdm import tqdm

    from avatar.audio import SPEECH_RATE, load_audio, resample
    from avatar.avatar import Avatar
    from avatar.offline import _bars, speaking_frames

    avatar = Avatar.load(bundle, "cpu")
    fps = avatar.fps
    speech = _speech(cfg.speech, cfg.minutes * 60)
    wm = WatermarkConfig()
    marks = StreamMarks(avatar.manifest.files, fps, SPEECH_RATE, wm, t0=cfg.t0)
    server = StreamMarks(avatar.manifest.files, fps, 48000, wm, t0=cfg.t0)
    vpaths = {k: _Path(v) for k, v in video_paths(fps).items()
              if not cfg.paths or k in cfg.paths}
    clean = _Path([])
    unmarked_render = _Path([])
    se = sq = 0.0
    count = 0
    import av

    n = int(np.ceil(len(speech) / SPEECH_RATE * fps))
    with tqdm(total=n, desc="render, mark, encode", unit="frame", disable=not _bars()) as pb:
        for frames in speaking_frames(avatar, speech):
            for rgb in frames:
                marked = marks.video.apply(rgb, count)
                d = marked.astype(np.float64) - rgb
                se += float((d * d).sum())
                sq += d.size
                vf = av.VideoFrame.from_ndarray(marked, format="rgb24")
                vf.pts, vf.time_base = count, Fraction(1, fps)
                clean.push(vf)
                plain = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                unmarked_render.push(plain)
                for p in vpaths.values():
                    p.push(vf)
                count += 1
            pb.update(len(frames))
    block_frames = BLOCK_CHIPS * FRAMES_PER_CHIP
    block_s = block_frames / fps

    def video_result(feats: np.ndarray) -> dict:
        return _score(lambda a, b: read_video(feats[a:b], fps), len(feats), fps, block_s,
                      marks, cfg.window_s, read_video(feats, fps))

    out: dict = {"bundle": str(bundle), "minutes": cfg.minutes, "frames": count,
                 "fps": fps, "frame_size": list(avatar.manifest.frame_size or ()),
                 "window_s": cfg.window_s,
                 "video_psnr_db": round(10 * np.log10(255 ** 2 / (se / sq)), 2),
                 "video": {"marked_lossless": video_result(clean.close())}}
    for name, p in vpaths.items():
        log.info("video path %s", name)
        out["video"][name] = video_result(p.close())
        out["video"][name]["path_seconds"] = round(p.seconds, 1)

    # The voice: as a file carries it, and as the server marks it.
    file_track = marks.audio.process(speech, 0)
    at48 = resample(speech, SPEECH_RATE, 48000)
    step = 960
    webrtc_track = np.concatenate([server.audio.process(at48[i:i + step], i)
                                   for i in range(0, len(at48), step)])
    speech_power = float(np.mean(speech.astype(np.float64) ** 2))
    out["audio_snr_db"] = round(10 * np.log10(
        speech_power / float(np.mean((file_track.astype(np.float64) - speech) ** 2))), 2)
    base = {"file": resample(file_track, SPEECH_RATE, READ_RATE),
            "webrtc": webrtc_track}

    def audio_result(x: np.ndarray) -> dict:
        return _score(lambda a, b: read_audio(x[a:b], READ_RATE), len(x), READ_RATE,
                      block_s_audio, marks, cfg.window_s, read_audio(x, READ_RATE))

    block_s_audio = BLOCK_CHIPS * CHIP_S
    out["audio"] = {"marked_lossless": audio_result(base["file"])}
    for name, (start, fn) in audio_paths().items():
        if cfg.paths and name not in cfg.paths:
            continue
        log.info("audio path %s", name)
        out["audio"][name] = audio_result(fn(base[start]))

    # False positives: nothing marked, read the same way.
    step_v = int(cfg.window_s * fps)
    fp: dict = {}
    plain = unmarked_render.close()
    fp["unmarked_render_video"] = _false_positives(
        [read_video(plain[a:a + step_v], fps) for a in range(0, len(plain) - step_v + 1, step_v)])
    if cfg.unmarked_video:
        feats, vfps = _unmarked_video(cfg.unmarked_video)
        sv = int(cfg.window_s * vfps)
        fp["real_footage_video"] = _false_positives(
            [read_video(feats[a:a + sv], vfps) for a in range(0, len(feats) - sv + 1, sv)])
        fp["real_footage_video"]["minutes"] = round(len(feats) / vfps / 60, 2)
    sa = int(cfg.window_s * READ_RATE)
    plain_a = resample(speech, SPEECH_RATE, READ_RATE)
    fp["same_speech_unmarked_audio"] = _false_positives(
        [read_audio(plain_a[a:a + sa], READ_RATE) for a in range(0, len(plain_a) - sa + 1, sa)])
    if cfg.unmarked_audio:
        files = _files(cfg.unmarked_audio, (".wav", ".flac", ".mp3", ".mpg", ".mp4", ".ogg"))
        real = np.concatenate([load_audio(f, READ_RATE) for f in files]) if files else \
            np.zeros(0, np.float32)
        fp["real_speech_audio"] = _false_positives(
            [read_audio(real[a:a + sa], READ_RATE) for a in range(0, len(real) - sa + 1, sa)])
        fp["real_speech_audio"]["minutes"] = round(len(real) / READ_RATE / 60, 2)
    out["false_positives"] = fp
    out["cost"] = _render_cost(avatar, speech, marks)
    return out
