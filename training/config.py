"""Typed configuration of the enrolment features stage.

Every field that changes the cache's content is part of :meth:`FeaturesConfig.digest`, so a
changed setting recomputes exactly what it affects and nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from avatar.audio import SPEECH_RATE, VOICE_MEL, VOICE_RATE

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".avi", ".m4v", ".ts")


@dataclass(frozen=True)
class FaceConfig:
    """Face tracking, smoothing and the aligned crop."""

    crop_size: int = 256
    """Side of the aligned face crop, in pixels, for faces no larger than that."""
    max_crop_size: int = 512
    """A larger face gets a larger crop, up to this side, so that the crop keeps the detail
    the footage has (``training.crop_size``); 0 or ``crop_size`` keeps every crop
    at ``crop_size``."""
    crop_shrink: float = 1.25
    """Most source pixels per crop pixel before the crop grows: a face that would be
    shrunk more than this into a ``crop_size`` crop gets a larger one."""
    crop_points: str = "eyes+nose"
    """Landmarks the crop is fitted to (see ``training.face.CROP_TEMPLATE``); named here so
    that a cache made with other crop points is recomputed, not reused."""
    analysis_max_side: int = 1280
    """Frames are downscaled to at most this side before the face mesh sees them: the mesh
    model works on a 192 px face crop, so larger inputs only cost time."""
    max_faces: int = 2
    """Faces looked for per frame; 2 so that a second person is noticed and reported."""
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    smooth_min_cutoff: float = 1.5
    """One-Euro filter cutoff (Hz) at rest: lower removes more jitter, adds lag when still."""
    smooth_beta: float = 8.0
    """One-Euro speed coefficient, per inter-ocular distance per second: higher follows fast
    motion (speech, head turns) with less lag."""


@dataclass(frozen=True)
class PoseConfig:
    """Body pose (MediaPipe pose, 33 landmarks)."""

    enabled: bool = True
    model_complexity: int = 1
    """Only 1 ships inside the mediapipe 0.10.21 wheel: 0 and 2 are downloaded at run time
    and fail offline."""
    analysis_max_side: int = 640
    """The pose model looks at 256 px: a smaller input costs nothing in accuracy."""


@dataclass(frozen=True)
class AudioConfig:
    """Voice features."""

    rates: tuple[int, int] = (SPEECH_RATE, VOICE_RATE)
    """Sample rates written: 16 kHz for the talking head and alignment, 22.05 kHz for TTS."""
    hop_ms: float = 10.0
    """Hop of VAD, loudness, f0 and the 16 kHz log-mel (100 frames/s, 4 per video frame)."""
    n_mels: int = VOICE_MEL.n_mels
    mel22_hop: int = VOICE_MEL.hop
    """Hop of the 22.05 kHz log-mel used by the voice model (the LJ Speech convention)."""
    mel22_n_fft: int = VOICE_MEL.n_fft
    f0_min: float = 60.0
    f0_max: float = 500.0
    max_utterance_s: float = 12.0
    """Utterances longer than this are split at their deepest pause."""
    min_pause_s: float = 0.35
    """A pause at least this long may end an utterance."""


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the quality report. ``error`` gates stop enrolment; the others warn
    (``--strict`` makes every gate an error)."""

    min_usable_minutes: float = 0.5
    min_speech_minutes: float = 3.0
    min_clip_one_face_share: float = 0.8
    """A clip with a single face in fewer of its frames is rejected (no face, two faces)."""
    min_face_px: float = 100.0
    min_eye_px: float = 80.0
    """Distance between the outer eye corners below which the mouth (about half as wide)
    has too few source pixels for teeth and lip texture to show."""
    min_blur: float = 30.0
    min_snr_db: float = 15.0
    max_clipping_share: float = 0.001


@dataclass(frozen=True)
class FeaturesConfig:
    """Everything the features stage needs; a preset is one of these."""

    fps: int = 25
    min_clip_seconds: float = 1.5
    segment_seconds: float = 60.0
    """Long clips are cut into segments of this length, processed in parallel and resumed
    segment by segment after a kill."""
    workers: int = 2
    face: FaceConfig = field(default_factory=FaceConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    gates: GateConfig = field(default_factory=GateConfig)

    def visual_digest(self) -> str:
        """Hash of the settings that change the per-frame (video) arrays."""
        return _digest({"fps": self.fps, "segment": self.segment_seconds,
                        "face": dataclasses.asdict(self.face),
                        "pose": dataclasses.asdict(self.pose)})

    def audio_digest(self) -> str:
        """Hash of the settings that change the audio arrays and utterances."""
        return _digest({"fps": self.fps, "audio": dataclasses.asdict(self.audio)})


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def features_preset(name: str, workers: int = 2) -> FeaturesConfig:
    """The features settings of a training preset (``[NAME.features]`` in
    ``training/presets.toml``): ``ci`` accepts seconds of footage (for tests); ``cpu`` and
    ``gpu`` extract the same features and keep the real gates."""
    from training import presets

    changes = presets.overrides(name, "features")
    return presets.apply(FeaturesConfig(workers=workers), changes, "features.")
