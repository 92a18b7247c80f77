"""The runtime avatar: load a bundle on a device and render batches of frames.

``Avatar.render`` takes frame requests from any number of sessions at once: each names an
idle frame and carries the log-mel window of the speech at that frame. The generator paints
every requested mouth in one batch; each result is then composited into its idle frame with
a feathered mask and a colour match, so no seam shows.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from avatar import devices, resample
from avatar.audio import FACE_MEL, mel_windows
from avatar.bundle import load_weights, read_manifest
from avatar.colour import RING, TOLERANCE, UNWEIGHTED, match_colour
from avatar.cues import NodCues, frame_rows
from avatar.decode import DecodeError, rgb_frames
from avatar.detail import frame_low, keep_detail
from avatar.errors import TwincastError, path_error
from avatar.manifest import Manifest
from avatar.models.fold import fold_batchnorm
from avatar.models.head import HeadConfig, HeadGenerator, blank_lower, region_keep_mask
from avatar.models.refine import RefineConfig, Refiner, blur_matrix, sharpen
from avatar.motion import Entry, MotionConfig, Walker
from avatar.paint_cast import LinearCast, PaintCast

if TYPE_CHECKING:
    from avatar.bank import MotionBank
    from avatar.texture import TextureBank

log = logging.getLogger(__name__)


@dataclass
class FrameRequest:
    """One frame to render: which idle frame to speak over, with which audio."""

    idle_index: int
    mel: np.ndarray
    """(bins, frames) raw log-mel window centred on this frame (see ``Avatar.mel_windows``)."""
    session: str = ""
    deadline: float = 0.0
    base: Entry | None = None
    """The motion bank's frame to paint over (avatars with a bank); None: the idle loop's
    frame ``idle_index``."""
    cond: np.ndarray | None = None
    """``Avatar.condition`` of ``mel``, where the caller computed it ahead (a live session,
    as its speech arrives); None: computed in the batch."""


def pingpong(n: int, length: int) -> int:
    """Index into a loop of ``length`` frames played forwards then backwards, so the idle
    footage never jumps at the loop point."""
    if length <= 1:
        return 0
    period = 2 * (length - 1)
    k = n % period
    return k if k < length else period - k


@dataclass
class _IdleFrame:
    frame: np.ndarray          # (H, W, 3) uint8, full idle frame
    region: np.ndarray         # (3, S, S) float32 in [0, 1], the model's view of it
    to_frame: np.ndarray       # 2x3: region pixels -> frame pixels
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the paste area in the frame
    blend: np.ndarray          # (h, w, 1) float32 feathered mask over the box
    ring: np.ndarray           # (S, S) bool: where colours are compared
    low: np.ndarray | None = None
    """(h, w, 3) float32: the box of the frame blurred at the detail scale (``keep_detail``'s
    frame side), made with the frame (on the motion bank's thread for its frames) rather
    than in every render batch: a third of the detail step, which was half of compositing
    (4.4 of 8.6 ms a 720p frame here)."""

    @property
    def nbytes(self) -> int:
        """What this adds to the frame itself."""
        return self.region.nbytes + self.blend.nbytes + (self.low.nbytes if self.low
                                                          is not None else 0)


class Avatar:
    def __init__(self, path: Path, manifest: Manifest, gen: HeadGenerator, device: torch.device,
                 idle: list[_IdleFrame], reference: torch.Tensor, mel_mean: float,
                 mel_std: float, dtype: torch.dtype = torch.float32):
        self.path = path
        self.dtype = dtype
        self.manifest = manifest
        self.gen = gen
        self.device = device
        self.idle = idle
        self.reference = reference
        self.mel_mean, self.mel_std = mel_mean, mel_std
        self.fps = int(manifest.fps or 25)
        self.size = gen.cfg.size
        self.mel_frames = gen.cfg.mel_frames
        self._pool: ThreadPoolExecutor | None = None
        self.colour = "field"
        """How the painted region's colour is matched to its frame (``avatar.colour``)."""
        self.colour_tolerance = TOLERANCE
        """The colour match's ``tolerance``: the bundle's (``_colour_tolerance``)."""
        self.detail = "keep"
        """Whether the frame's own fine detail is kept where the paint agrees with it
        (``avatar.detail``): ``keep`` or ``off``."""
        self.compositing = "cpu"
        """Where the painted mouth is put into its frame: ``cpu`` (OpenCV, frames shared out
        over the cores) or ``device`` (torch on the model's device, the batch in one pass:
        ``avatar.device_composite``). On an H200 node at 720p the batched one takes 3 ms of
        CPU a frame against 15 and holds 19 sessions on a lane with batches of 64 against
        14, but renders 307 frames/s at batch 16 against 402 (12 sessions against 16), so
        the server asks for it (``serve --compositing device``) rather than having it by
        default."""
        self.texture: TextureBank | None = None
        """Fine texture from the person's own frames for the painted mouth
        (``avatar.texture``); None for a bundle without a texture bank, or turned off."""
        self.bank: MotionBank | None = None
        """The motion bank (``avatar.bank.MotionBank``), or None for a bundle without one."""
        self.cues: NodCues | None = None
        """When the person nods, from their speech (``avatar.cues``); None: not known."""
        self.refiner: Refiner | None = None
        """The person-specific detail stage run on the paint (``avatar.models.refine``);
        None for a bundle without one, or turned off."""
        self.sharpen = 0.0
        """How much the refined paint's finest band is lifted (``avatar.models.refine
        .sharpen``): the bundle's amount, chosen with its refiner; 0 without one."""
        self.cast: PaintCast | None = None
        """The correction added to the paint's interior: the bundle's measured colour cast,
        one shift or per frame (``avatar.paint_cast``); None for a bundle without the
        measurement, or turned off."""

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: Path | str, device: str = "cpu",
             architecture: HeadConfig | None = None, precision: str = "auto",
             refine: bool = True) -> Avatar:
        """Load a bundle. ``architecture`` replaces the bundle's model by a freshly
        initialised one of that size (for speed measurements only: weights do not change
        how fast a model runs). ``precision``: ``auto`` renders in bfloat16 where the
        device computes it natively (``devices.compute_dtype``), else float32.
        ``refine``: run the bundle's refiner where it has one; the texture bank then stays
        unloaded (on GRID's training clips held out from a refiner, sharpness 0.70 with that
        refiner alone, 0.62 with the bank's band over it, 0.57 with the bank alone)."""
        path = Path(path)
        manifest = read_manifest(path)
        dev = devices.device(device)
        head = manifest.head
        if head is None:
            raise path_error(path / "manifest.json", "this bundle has a voice but no face "
                             "(a voice-only enrolment); enrol video footage for one")
        if head.mel.spec != FACE_MEL:
            raise path_error(path / "manifest.json", f"the head hears {head.mel.spec}, but "
                             f"this twincast makes {FACE_MEL}; re-export the avatar")
        try:
            cfg = HeadConfig.from_dict(head.config)
        except TypeError as e:
            raise path_error(path / "manifest.json", f"head.config is invalid ({e})") from None
        if architecture is not None:
            cfg = architecture
        gen = HeadGenerator(cfg)
        if architecture is None:
            load_weights(gen, path / head.file, "head")
        gen = fold_batchnorm(gen).to(dev)
        if dev.type == "cpu":
            # oneDNN's convolutions run faster on channels-last weights (the activations
            # follow them): on a 2-core AVX2 EPYC in float32, 21.5 -> 17.3 ms a frame for a
            # 160 px generator at batch 1 and 30 -> 23 at batch 16, same output to 1e-7.
            # Not measured on a GPU, which keeps the default layout.
            gen = gen.to(memory_format=torch.channels_last)
        dtype = devices.compute_dtype(dev, precision)
        ref_img = _read_rgb(path / head.reference, (cfg.size, cfg.size))
        reference = torch.from_numpy(ref_img).permute(2, 0, 1).float().div(255).to(dev)
        idle, geometry = _load_idle(path, manifest, cfg)
        log.info("avatar %s loaded on %s (%s): %d idle frames", manifest.name, dev,
                 str(dtype).removeprefix("torch."), len(idle))
        avatar = cls(path, manifest, gen, dev, idle, reference, head.mel.mean, head.mel.std,
                     dtype)
        avatar._geometry = geometry
        avatar.cast = _cast(path, head.colour, geometry[1], geometry[2], dev)
        avatar.colour_tolerance = _colour_tolerance(path, head.colour)
        if head.refine and refine and architecture is None:
            avatar.refiner = load_refiner(path, head.refine, dev)
            avatar.sharpen = sharpen_amount(path, head.refine)
        elif head.texture:
            avatar.texture = _load_texture(path / head.texture, cfg.size, dev)
        if manifest.motion is not None:
            avatar.bank = _load_bank(path, manifest, geometry, cfg.size)
            if manifest.motion.cues:
                avatar.cues = _load_cues(path / manifest.motion.cues)
        return avatar

    @cached_property
    def _blur_matrix(self) -> torch.Tensor:
        """``sharpen``'s blur for this working size, made once on the render device."""
        return blur_matrix(self.size).to(self.device)

    def walker(self, seed: int = 0, cfg: MotionConfig | None = None) -> Walker | None:
        """A fresh walk through the motion bank (one per session); None without a bank."""
        return Walker(self.bank.graph, cfg, seed) if self.bank is not None else None

    def base_frame(self, e: Entry) -> np.ndarray:
        """The plain frame a motion entry shows (silence, no rendering)."""
        assert self.bank is not None
        return self.bank.show(e)

    def base_frame_ready(self, e: Entry) -> bool:
        """Whether ``base_frame(e)`` answers without decoding video."""
        return self.bank is not None and self.bank.ready(e)

    # ------------------------------------------------------------------ audio
    def mel_windows(self, audio16k: np.ndarray) -> np.ndarray:
        """(n_frames, bins, frames) raw log-mel windows, one per video frame of the audio."""
        from avatar.audio import log_mel

        if audio16k.size == 0:
            raise TwincastError("the audio is empty: nothing to say")
        n = int(np.ceil(len(audio16k) / FACE_MEL.rate * self.fps))
        return mel_windows(log_mel(audio16k), n, self.fps, self.mel_frames)

    def nods(self, windows: np.ndarray) -> np.ndarray | None:
        """Per frame of ``windows`` (``mel_windows``): whether the person would nod at its
        lowest there; None for a bundle that does not know (no cue model)."""
        if self.cues is None:
            return None
        return self.cues.peaks(self.cues.probability(frame_rows(windows, self.fps)), self.fps)

    def silent_requests(self, n: int) -> list[FrameRequest]:
        """``n`` requests of silence over the first idle frames (to warm a renderer up),
        conditioned ahead as a live session's are."""
        window = self.mel_windows(np.zeros(FACE_MEL.rate // self.fps, np.float32))[0]
        cond = self.condition(window[None])[0]
        return [FrameRequest(idle_index=i, mel=window, cond=cond) for i in range(n)]

    def condition(self, windows: np.ndarray) -> np.ndarray:
        """(n, D) float32: the audio's part of rendering each of ``windows`` (raw log-mel,
        ``mel_windows``), for ``FrameRequest.cond``. A third of a CPU render batch's time
        was this part; computed as the speech arrives (on its synthesis thread, in one
        batch per chunk), it leaves the shared renderer's batches shorter."""
        out = []
        for i in range(0, len(windows), 64):  # bounded memory for a long stretch
            with torch.inference_mode(), torch.autocast(
                    self.device.type, self.dtype, enabled=self.dtype != torch.float32):
                out.append(self.gen.condition(self._mel_tensor(windows[i:i + 64]))
                           .float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def _mel_tensor(self, windows: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        mels = (np.asarray(windows, np.float32) - self.mel_mean) / self.mel_std
        return torch.from_numpy(mels).unsqueeze(1).to(self.device)

    def over(self, frames: list[np.ndarray], crop_affines: np.ndarray) -> Avatar:
        """The same avatar standing in other footage (frames with their crop transforms):
        for evaluation over held-out frames. Shares the model; nothing is copied."""
        other = object.__new__(Avatar)
        other.__dict__.update(self.__dict__)
        other.idle = prepare_frames(list(frames), crop_affines, *self._geometry, self.size)
        return other

    # ------------------------------------------------------------------ rendering
    @property
    def idle_frames(self) -> int:
        return len(self.idle)

    def idle_frame(self, n: int) -> np.ndarray:
        """The plain idle frame shown at loop position ``n`` (silence, no rendering)."""
        return self.idle[pingpong(n, len(self.idle))].frame

    def paint_area(self, n: int) -> tuple[tuple[int, int, int, int], np.ndarray, float]:
        """Where idle frame ``n`` is painted: the box in frame pixels (x0, y0, x1, y1), the
        blend weight over that box, and screen pixels per generator pixel (how much the
        painted region is enlarged on screen)."""
        f = self.idle[pingpong(n, len(self.idle))]
        scale = resample.scale_of(f.to_frame)
        return f.box, f.blend[..., 0], scale

    def render(self, requests: list[FrameRequest]) -> list[np.ndarray]:
        """Render a batch of requests (any sessions, any idle frames) in one model call."""
        if not requests:
            return []
        idle = [self.bank.take(r.base) if r.base is not None and self.bank is not None
                else self.idle[pingpong(r.idle_index, len(self.idle))] for r in requests]
        regions = torch.from_numpy(np.stack([f.region for f in idle])).to(self.device)
        ref = self.reference.unsqueeze(0).expand(len(requests), -1, -1, -1)
        missing = [i for i, r in enumerate(requests) if r.cond is None]
        with torch.inference_mode(), torch.autocast(
                self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            masked = blank_lower(regions, self.gen.cfg.mask_top)
            if len(missing) == len(requests):
                out = self.gen.generate(ref, masked, self._mel_tensor([r.mel for r in requests]))
            else:
                conds = [r.cond for r in requests]
                if missing:  # a batch of several sessions, some conditioned ahead
                    made = self.condition(np.stack([requests[i].mel for i in missing]))
                    for i, c in zip(missing, made, strict=True):
                        conds[i] = c
                cond_t = torch.from_numpy(np.stack(conds).astype(np.float32)).to(self.device)
                out = self.gen.paint_conditioned(ref, masked, cond_t)
        if self.refiner is not None:
            # In the generator's precision (bfloat16 where native): only the detail it adds
            # is computed in it, the paint it is added to stays float32. On the AMX Xeon
            # with channels-last weights, 1.2 ms a 96 px frame at batch 16 against 8.5 in
            # float32 with the default layout.
            with torch.inference_mode(), torch.autocast(
                    self.device.type, self.dtype, enabled=self.dtype != torch.float32):
                out = self.refiner(out.float().clamp(0, 1)).float()
            if self.sharpen > 0:
                with torch.inference_mode():
                    out = sharpen(out, self.sharpen, blur=self._blur_matrix)
        fine: list[Fine | None] = [None] * len(requests)
        mixed = None
        if self.texture is not None:
            with torch.inference_mode():  # in float32: its band is a few levels
                out, mixed = self.texture.apply_fine(out)
        if self.cast is not None:
            # Zero on the ring, so the colour match (which reads the ring) is unchanged.
            out = out.float() + self.cast(out, regions)
        if self.compositing == "device":
            from avatar.device_composite import composite

            with torch.inference_mode():
                return composite(idle, out, regions, self.colour, self.detail, fine=mixed,
                                 tolerance=self.colour_tolerance,
                                 fine_sigma=self.texture.fine_sigma if mixed is not None
                                 else 0.0)
        if mixed is not None:
            sigma = self.texture.fine_sigma
            fine = [Fine(b, sigma, self.size) for b in mixed.permute(0, 2, 3, 1).cpu().numpy()]
        painted = (out.float().clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).cpu().numpy()
        if len(requests) < 8 or (os.cpu_count() or 1) < 2:
            return [_composite(f, p, self.colour, self.detail, t, self.colour_tolerance)
                    for f, p, t in zip(idle, painted, fine, strict=True)]
        # Compositing is per-frame OpenCV/numpy work that releases the GIL: on a large
        # batch from a GPU it is the bottleneck unless the CPU cores share it.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(min(16, os.cpu_count() or 1),
                                            thread_name_prefix="composite")
        return list(self._pool.map(_composite, idle, painted, [self.colour] * len(idle),
                                   [self.detail] * len(idle), fine,
                                   [self.colour_tolerance] * len(idle)))


@dataclass
class Fine:
    """A mouth's fine band from the texture bank at the screen's scale (``avatar.texture``):
    the detail a region painted smaller than it shows on screen cannot hold."""

    band: np.ndarray
    """(H, H, 3) float32 levels over the region at screen size."""
    sigma: float
    """Its blur in its own pixels."""
    size: int
    """The working size the region was painted at."""


def _composite(idle: _IdleFrame, painted: np.ndarray, colour: str = "field",
               detail: str = "keep", fine: Fine | None = None,
               tolerance: float = TOLERANCE) -> np.ndarray:
    frame = idle.frame.copy()
    x0, y0, x1, y1 = idle.box
    # Colour and light match against the idle frame where the paint fades into it (the
    # ring): see avatar/colour.py.
    real = idle.region.transpose(1, 2, 0) * 255
    patch = np.clip(match_colour(painted.astype(np.float32), real, idle.ring, colour,
                                 tolerance), 0, 255)
    m = idle.to_frame.copy()
    m[:, 2] -= (x0, y0)
    # Bicubic: a bilinear warp back at about 1:1 blurs the mouth (avatar/resample.py).
    warped = np.clip(resample.warp(patch, m, (x1 - x0, y1 - y0)), 0, 255)
    if fine is not None:
        from avatar.texture import screen_band

        # The region was enlarged on screen, so its finest band is missing: the bank's,
        # from the person's own frames at this scale, takes its place.
        band, sigma = screen_band(fine.band, m, fine.size, (x1 - x0, y1 - y0), fine.sigma)
        warped = np.clip(cv2.GaussianBlur(warped, (0, 0), sigma) + band, 0, 255)
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    if detail == "keep":
        upscale = resample.scale_of(m)
        warped = np.clip(keep_detail(warped, roi, upscale, low_frame=idle.low), 0, 255)
    frame[y0:y1, x0:x1] = np.rint(roi + (warped - roi) * idle.blend).astype(np.uint8)
    return frame


def _read_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise path_error(path, "cannot be read as an image; the bundle is damaged")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size is not None and img.shape[:2] != (size[1], size[0]):
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return img


def _load_idle(path: Path, manifest: Manifest, cfg: HeadConfig
               ) -> tuple[list[_IdleFrame], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    assert manifest.head is not None and manifest.idle is not None  # checked by the loader
    size = cfg.size
    idle_file = path / manifest.idle.file
    with np.load(path / manifest.idle.transforms, allow_pickle=False) as z:
        affines = z["crop_affine"].astype(np.float64)
    crop_mask = cv2.imread(str(path / manifest.head.mask), cv2.IMREAD_GRAYSCALE)
    if crop_mask is None:
        raise path_error(path / manifest.head.mask, "cannot be read; bundle damaged")
    reg_to_crop, region_mask, ring = region_geometry(crop_mask, int(manifest.crop_size or 0),
                                                     cfg)
    try:
        decoded = list(rgb_frames(idle_file, container="mp4"))
    except DecodeError as e:
        raise path_error(idle_file, f"cannot be decoded ({e}); bundle damaged") from None
    if len(decoded) != len(affines) or not decoded:
        raise path_error(idle_file, f"has {len(decoded)} frames but its transforms "
                         f"{len(affines)}; the bundle is damaged")
    geometry = (reg_to_crop, region_mask, ring)
    return prepare_frames(decoded, affines, *geometry, size), geometry


def _colour_tolerance(path: Path, colour: dict) -> float:
    """The colour match the bundle's paint cast was measured after: its recorded
    ``ring_tolerance``, the unweighted field for a cast measured before there was one, and
    today's for a bundle with no cast to keep."""
    if not colour:
        return TOLERANCE
    if "ring_tolerance" not in colour:
        log.info("%s: its paint cast was measured against the unweighted colour match, "
                 "which it keeps ('twincast train colour' measures it again against "
                 "today's, which follows the mouth better)", path.name)
        return UNWEIGHTED
    tol = colour["ring_tolerance"]
    if not (isinstance(tol, int | float) and not isinstance(tol, bool) and 0 < tol < 1e6):
        raise path_error(path / "manifest.json", "head.colour.ring_tolerance must be a "
                         "positive number of levels; the bundle is damaged (twincast train "
                         "colour measures it again)")
    return float(tol)


def _cast(path: Path, colour: dict, region_mask: np.ndarray, ring: np.ndarray,
          dev: torch.device) -> PaintCast | None:
    """The paint-cast correction over the region (``HeadSection.colour``), or None."""
    if not colour:
        return None
    shift = colour.get("rgb_shift")
    if not (isinstance(shift, list) and len(shift) == 3
            and all(isinstance(v, int | float) and abs(v) < 64 for v in shift)):
        raise path_error(path / "manifest.json", "head.colour.rgb_shift must be three "
                         "numbers under 64 levels; the bundle is damaged")
    linear = None
    if "linear" in colour:
        try:
            linear = LinearCast.from_dict(colour["linear"])
        except ValueError as e:
            raise path_error(path / "manifest.json", f"head.colour.linear {e}; the bundle "
                             "is damaged (twincast train colour measures it again)") from None
    # With a per-frame model the one shift is not added as well: the model's bias is it.
    return PaintCast(region_mask, ring, dev, None if linear else np.asarray(shift), linear)


def load_refiner(path: Path, refine: dict, dev: torch.device) -> Refiner:
    """The bundle's refiner (``HeadSection.refine``), or one error naming what is wrong."""
    file = refine.get("file")
    if not isinstance(file, str) or not file:
        raise path_error(path / "manifest.json", "head.refine.file must name the refiner's "
                         "weights; the bundle is damaged")
    try:
        cfg = RefineConfig.from_dict(refine.get("config") or {})
    except ValueError as e:
        raise path_error(path / "manifest.json", f"{e}; the bundle is damaged") from None
    refiner = Refiner(cfg)
    load_weights(refiner, path / file, "refiner")
    return place_refiner(refiner, dev)


def sharpen_amount(path: Path, refine: dict) -> float:
    """The bundle's ``head.refine.sharpen`` (0 where a bundle made before it has none), or
    one error naming what is wrong."""
    amount = refine.get("sharpen", 0.0)
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) \
            or not 0 <= amount <= 4:
        raise path_error(path / "manifest.json", f"head.refine.sharpen is {amount!r}, not a "
                         "number from 0 to 4; the bundle is damaged")
    return float(amount)


def place_refiner(refiner: Refiner, dev: torch.device) -> Refiner:
    """``refiner`` on ``dev``, ready to render."""
    refiner = refiner.to(dev).eval()
    # oneDNN's convolutions are faster on channels-last weights, as the generator's.
    return refiner.to(memory_format=torch.channels_last) if dev.type == "cpu" else refiner


def region_geometry(crop_mask: np.ndarray, crop_size: int, cfg: HeadConfig
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the generator's square sits in the crop and how it is blended: region pixels
    -> crop pixels (3x3), the blend weight over the region (S, S) float32 in [0, 1], and the
    ring (S, S) bool where the paint fades into the frame and colours are compared.
    ``crop_mask``: the bundle's mask.png (uint8, crop pixels)."""
    size = cfg.size
    x0r, y0r, side_r = cfg.region
    rx, ry, rs = x0r * crop_size, y0r * crop_size, side_r * crop_size
    reg_to_crop = np.array([[rs / size, 0, rx], [0, rs / size, ry], [0, 0, 1]])
    region_mask = cv2.resize(crop_mask[int(ry): int(ry + rs), int(rx): int(rx + rs)],
                             (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    # Blend only where the generator paints, fading in over its soft edge.
    paint = 1.0 - region_keep_mask(size, cfg.mask_top)[0, 0].numpy()
    region_mask *= paint
    ring = (region_mask > RING[0]) & (region_mask < RING[1])
    return reg_to_crop, region_mask, ring


def _load_bank(path: Path, manifest: Manifest,
               geometry: tuple[np.ndarray, np.ndarray, np.ndarray], size: int) -> MotionBank:
    from avatar.bank import MotionBank  # it builds on this module's prepare_frames

    m = manifest.motion
    assert m is not None
    try:
        with np.load(path / m.index, allow_pickle=False) as z:
            index = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise path_error(path / m.index, f"cannot be read ({e}); bundle damaged") from None
    if len(index.get("state", ())) != m.frames:
        raise path_error(path / m.index, f"holds {len(index.get('state', ()))} frames but the "
                         f"manifest says {m.frames}; the bundle is damaged")
    bank = MotionBank(path, index, m.files, int(manifest.fps or 25), geometry, size)
    log.info("motion bank: %d frames (%s)", m.frames,
             ", ".join(f"{k} {v:.0f} s" for k, v in m.seconds.items()))
    return bank


def _load_texture(path: Path, size: int, dev: torch.device) -> TextureBank | None:
    from avatar.texture import TextureBank

    try:
        bank = TextureBank.load(path)
    except (OSError, ValueError, KeyError) as e:
        raise path_error(path, f"cannot be read ({e}); bundle damaged") from None
    if bank.size != size:
        # Only where a speed measurement swaps the model for another size (``architecture``).
        log.info("texture bank is for %d px mouths, the model paints %d: rendering without",
                 bank.size, size)
        return None
    return bank.to(dev)


def _load_cues(path: Path) -> NodCues:
    try:
        return NodCues.load(path)
    except (OSError, ValueError, KeyError) as e:
        raise path_error(path, f"cannot be read ({e}); bundle damaged") from None


def prepare_frames(decoded: list[np.ndarray], affines: np.ndarray, reg_to_crop: np.ndarray,
                   region_mask: np.ndarray, ring: np.ndarray, size: int) -> list[_IdleFrame]:
    """Everything compositing needs per background frame, computed once."""
    frames: list[_IdleFrame] = []
    for frame, a in zip(decoded, affines, strict=True):
        crop_from_frame = np.vstack([a, [0, 0, 1]])
        to_frame = (resample.invert(crop_from_frame) @ reg_to_crop)[:2]
        # The model's view: the region, straight from the idle frame.
        from_frame = resample.invert(to_frame)
        region = resample.warp(frame, from_frame, (size, size))
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]]).T
        pts = to_frame @ corners
        h, w = frame.shape[:2]
        x0 = int(max(0, np.floor(pts[0].min())))
        y0 = int(max(0, np.floor(pts[1].min())))
        x1 = int(min(w, np.ceil(pts[0].max()) + 1))
        y1 = int(min(h, np.ceil(pts[1].max()) + 1))
        m = to_frame.copy()
        m[:, 2] -= (x0, y0)
        blend = cv2.warpAffine(region_mask, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
        low = frame_low(frame[y0:y1, x0:x1].astype(np.float32), resample.scale_of(m))
        frames.append(_IdleFrame(frame=frame,
                                 region=region.transpose(2, 0, 1).astype(np.float32) / 255,
                                 to_frame=to_frame, box=(x0, y0, x1, y1), blend=blend,
                                 ring=ring, low=low))
    return frames
