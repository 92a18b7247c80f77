"""The quality report of an enrolment: what the footage holds and whether it is enough.

Gates compare a measure with a threshold. ``error`` gates stop the enrolment (there is
nothing to learn from); ``warning`` gates say what quality will suffer, and ``--strict``
makes them errors too.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from avatar.errors import TwincastError
from training import face as F
from training.config import FeaturesConfig

JITTER_WINDOW = 12  # frames (0.48 s at 25 fps)


def _nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def landmark_jitter(frames: dict[str, np.ndarray], crop_size: int) -> tuple[float, float, int]:
    """Median std (px at the scale of a 256 px crop) of stable face points over still
    stretches, for the raw and the smoothed landmarks; and the number of still windows
    measured.

    A window is still when the smoothed nose bridge moves less than 2% of the inter-ocular
    distance across it. Positions are in source pixels, scaled by the crop's own scale, so
    the figure does not depend on the crop transform made from the smoothed points.
    """
    raw, smooth = frames["landmarks_raw"], frames["landmarks"]
    m = frames["crop_affine"]
    scale = np.hypot(m[:, 0, 0], m[:, 0, 1])
    idx = list(F.STABLE_POINTS)
    stds_raw, stds_smooth = [], []
    for a in range(0, len(raw) - JITTER_WINDOW + 1, JITTER_WINDOW):
        sl = slice(a, a + JITTER_WINDOW)
        if not np.all(frames["n_faces"][sl] == 1):
            continue
        iod = np.linalg.norm(smooth[sl, F.RIGHT_EYE_OUTER, :2]
                             - smooth[sl, F.LEFT_EYE_OUTER, :2], axis=1).mean()
        bridge = smooth[sl, 168, :2]
        if np.ptp(bridge, axis=0).max() > 0.02 * iod:
            continue
        # In pixels of a 256 px crop whatever the crop's size: the gates are set there.
        k = float(scale[sl].mean()) * 256 / crop_size
        stds_raw.append(float(raw[sl][:, idx, :2].std(axis=0).mean()) * k)
        stds_smooth.append(float(smooth[sl][:, idx, :2].std(axis=0).mean()) * k)
    if not stds_raw:
        return float("nan"), float("nan"), 0
    return float(np.median(stds_raw)), float(np.median(stds_smooth)), len(stds_raw)


def _gate(name: str, value: float, threshold: float, ok: bool, severity: str,
          message: str) -> dict:
    return {"name": name, "value": None if math.isnan(value) else round(value, 4),
            "threshold": threshold, "passed": bool(ok), "severity": severity,
            "message": None if ok else message}


MOUTH_PER_EYE = 0.55
"""Mouth width over the distance between the outer eye corners, for a face seen from the
front (about 50 mm over 90 mm)."""


def _eye_distance(frames: dict) -> np.ndarray:
    """Per frame: pixels between the outer eye corners (NaN without a face)."""
    from training.face import LEFT_EYE_OUTER, RIGHT_EYE_OUTER

    lm = frames.get("landmarks")
    if lm is None or len(lm) == 0:
        return np.full(1, np.nan)
    d = lm[:, RIGHT_EYE_OUTER, :2] - lm[:, LEFT_EYE_OUTER, :2]
    return np.linalg.norm(d.astype(np.float64), axis=1)


def build_report(clips: list[dict], utterances: list[dict], cfg: FeaturesConfig,
                 features_dir: Path, have_transcript: bool) -> dict:
    fps = cfg.fps
    g = cfg.gates
    total_frames = sum(c["n_frames"] for c in clips)
    one_face = sum(int((c["_frames"]["n_faces"] == 1).sum()) for c in clips)
    cat = {k: np.concatenate([c["_frames"][k] for c in clips])
           for k in ("face_width_px", "blur", "brightness", "clipped_share")}
    jit = [landmark_jitter(c["_frames"], cfg.face.crop_size) for c in clips]
    n_windows = sum(j[2] for j in jit)
    w = np.array([j[2] for j in jit], float)

    def wmean(vals: list[float]) -> float:
        v = np.array(vals, float)
        ok = np.isfinite(v) & (w > 0)
        return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")

    audio = [c["audio"] for c in clips]
    speech_s = sum(a["speech_seconds"] for a in audio)

    def audio_wmean(key: str) -> float:
        vals = [(a[key], a["seconds"]) for a in audio if a[key] == a[key]]
        return (sum(v * s for v, s in vals) / sum(s for _, s in vals)) if vals else float("nan")

    usable_min = one_face / fps / 60
    speech_min = speech_s / 60
    face_px = _nanmedian(cat["face_width_px"])
    eye_px = round(_nanmedian(np.concatenate([_eye_distance(c["_frames"]) for c in clips])), 1)
    blur = _nanmedian(cat["blur"])
    snr = audio_wmean("snr_db")
    clipping = audio_wmean("clipping_share")
    words = sum(len(u.get("words", [])) for u in utterances)
    gates = [
        _gate("usable_footage", usable_min, g.min_usable_minutes,
              usable_min >= g.min_usable_minutes, "error",
              f"only {usable_min:.1f} min of footage with one face; at least "
              f"{g.min_usable_minutes:g} are needed"),
        _gate("speech", speech_min, g.min_speech_minutes, speech_min >= g.min_speech_minutes,
              "warning", f"only {speech_min:.1f} min of usable speech; at least "
              f"{g.min_speech_minutes:g} are needed for a good voice"),
        _gate("face_size", face_px, g.min_face_px, face_px >= g.min_face_px, "warning",
              f"the face is only {face_px:.0f} px wide; at least {g.min_face_px:g} px "
              "keeps the face tracking steady (move closer or film at a higher resolution)"),
        _gate("mouth_detail", eye_px, g.min_eye_px, eye_px >= g.min_eye_px, "warning",
              f"the eyes are only {eye_px:.0f} px apart, so the mouth spans about "
              f"{MOUTH_PER_EYE * eye_px:.0f} px: teeth and lip texture cannot be sharper "
              f"than that (at least {g.min_eye_px:g} px between the eyes; move closer or "
              "film at a higher resolution)"),
        _gate("sharpness", blur, g.min_blur, blur >= g.min_blur, "warning",
              f"the face is blurred (sharpness {blur:.0f}, want {g.min_blur:g}); "
              "focus the camera and light the face"),
        _gate("snr", snr, g.min_snr_db, snr >= g.min_snr_db, "warning",
              f"background noise is high (SNR {snr:.0f} dB, want {g.min_snr_db:g}); "
              "use a closer microphone or a quieter room"),
        _gate("clipping", clipping, g.max_clipping_share, clipping <= g.max_clipping_share,
              "warning", f"{clipping:.2%} of audio samples are clipped; record at a lower "
              "gain"),
    ]
    return {
        "schema": 1,
        "clips": len(clips),
        "frames": total_frames,
        "minutes_footage": round(total_frames / fps / 60, 3),
        "minutes_usable": round(usable_min, 3),
        "one_face_share": round(one_face / max(total_frames, 1), 4),
        "face_width_px": round(face_px, 1),
        "eye_distance_px": round(eye_px, 1),
        "blur_laplacian_var": round(blur, 1),
        "brightness_mean": round(_nanmedian(cat["brightness"]), 1),
        "exposure_clipped_share": round(_nanmedian(cat["clipped_share"]), 4),
        "audio_level_dbfs": round(audio_wmean("speech_level_dbfs"), 1),
        "peak_dbfs": round(max(a["peak_dbfs"] for a in audio), 1),
        "clipping_share": round(clipping, 6),
        "snr_db": round(snr, 1),
        "minutes_speech": round(speech_min, 3),
        "utterances": len(utterances),
        "transcript": have_transcript,
        "aligned_words": words,
        "transcript_note": None if have_transcript else (
            "no transcript: utterances have no text, so the voice cannot be trained from "
            "this footage; pass --transcript"),
        "landmark_jitter_px": {"raw": round(wmean([j[0] for j in jit]), 4),
                               "smoothed": round(wmean([j[1] for j in jit]), 4),
                               "still_windows": n_windows},
        "gates": gates,
        "per_clip": [{"clip": c["clip"], "frames": c["n_frames"], **c["face"],
                      "speech_seconds": round(c["audio"]["speech_seconds"], 2)}
                     for c in clips],
    }


def blocking_gates(report: dict, strict: bool) -> list[dict]:
    """Failed gates that stop the enrolment: errors, and with ``strict`` warnings too."""
    return [g for g in report["gates"]
            if not g["passed"] and (g["severity"] == "error" or strict)]


def raise_for_gates(report: dict, strict: bool, where: Path | None = None) -> None:
    for g in blocking_gates(report, strict):
        see = f" (see {where / 'report.txt'})" if where else ""
        raise TwincastError(f"enrolment stopped: {g['message']}{see}")


def summary(report: dict) -> str:
    lines = [
        f"footage   {report['minutes_footage']:.1f} min in {report['clips']} clips, "
        f"{report['minutes_usable']:.1f} min usable ({report['one_face_share']:.1%} of frames "
        "with one face)",
        f"face      {report['face_width_px']:.0f} px wide, eyes "
        f"{report.get('eye_distance_px', float('nan')):.0f} px apart, sharpness "
        f"{report['blur_laplacian_var']:.0f}, brightness {report['brightness_mean']:.0f}/255",
        f"audio     speech at {report['audio_level_dbfs']:.0f} dBFS, peak "
        f"{report['peak_dbfs']:.1f} dBFS, SNR {report['snr_db']:.0f} dB, clipping "
        f"{report['clipping_share']:.3%}",
        f"speech    {report['minutes_speech']:.1f} min in {report['utterances']} utterances, "
        f"{report['aligned_words']} words aligned",
        f"jitter    {report['landmark_jitter_px']['raw']:.2f} px raw -> "
        f"{report['landmark_jitter_px']['smoothed']:.2f} px smoothed (256 px crop scale)",
    ]
    if report["transcript_note"]:
        lines.append(f"note      {report['transcript_note']}")
    for g in report["gates"]:
        if not g["passed"]:
            lines.append(f"{g['severity']:<9} {g['message']}")
    return "\n".join(lines) + "\n"
