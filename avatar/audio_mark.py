"""The invisible audio mark: the message (``avatar.mark_code``) as a faint noise that
follows the voice, in the band every codec keeps.

Each channel has its own pseudo-random noise for each chip position of a block (80 ms,
band-limited to 400-3600 Hz); the mark is the sum of the channels' noises, each signed by
its chip, scaled to ``level_db`` under the voice's own level from moment to moment (so
silence gets none, and loud speech masks it). Why this shape:

* a reader correlating with a known noise over 80 ms gains about 30 dB over the voice it
  hides under: the voice is the noise to it. Measures of the spectrum (band energies) gain
  little, because a voice's spectrum moves as much as any mark that stays inaudible;
* the noises are defined by their spectra, so the same mark is laid down at 16 kHz (files)
  or 48 kHz (WebRTC) and read at 16 kHz; the band survives resampling to 8 kHz, Opus and AAC;
* the reader first finds the exact sample the blocks start on (a cross-correlation with
  the sync channel's noise over the whole copy, folded onto one block), so codec delays
  and cut starts do not matter;
* the server marks each 20 ms frame as it comes: the level follows the frame's own r.m.s.,
  so nothing is delayed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from avatar.mark_code import BLOCK_CHIPS, MIN_SYNC_Z_AUDIO, ChipSource, Reading, read, sync_chips

CHIP_S = 0.08
CHANNELS = 6
BAND = (400.0, 3600.0)
READ_RATE = 16000
NOISE_SEED = 0xA0D10


@dataclass(frozen=True)
class AudioMarkConfig:
    enabled: bool = True
    level_db: float = -36.0
    """The mark's level under the voice's, moment to moment."""

    def __post_init__(self) -> None:
        if not -50 <= self.level_db <= -6:
            raise ValueError(f"audio watermark level {self.level_db} dB: use -50 to -6")


@lru_cache(maxsize=4)
def noises(rate: int) -> np.ndarray:
    """Every (channel, chip position)'s noise at ``rate``: (CHANNELS, BLOCK_CHIPS, n) with
    unit r.m.s. Defined by spectra on a 12.5 Hz grid, so any rate samples the same waves."""
    n = int(round(CHIP_S * rate))
    if abs(n - CHIP_S * rate) > 1e-6:
        raise ValueError(f"audio at {rate} Hz does not fit whole 80 ms chips")
    base = int(round(CHIP_S * READ_RATE))
    bins = base // 2 + 1
    freqs = np.arange(bins) / CHIP_S
    band = (freqs >= BAND[0]) & (freqs <= BAND[1])
    rng = np.random.default_rng(NOISE_SEED)
    phase = rng.uniform(0, 2 * np.pi, size=(CHANNELS, BLOCK_CHIPS, int(band.sum())))
    spec = np.zeros((CHANNELS, BLOCK_CHIPS, n // 2 + 1), np.complex128)
    spec[..., np.flatnonzero(band)] = np.exp(1j * phase)
    wave = np.fft.irfft(spec, n=n, axis=-1)
    wave /= np.sqrt((wave ** 2).mean(axis=-1, keepdims=True))
    # A short fade at each end: consecutive chips' noises meet without a click.
    fade = max(1, int(0.004 * rate))
    ramp = np.ones(n)
    ramp[:fade] = ramp[-fade:][::-1] = np.linspace(0, 1, fade + 2)[1:-1]
    return (wave * ramp).astype(np.float32)


class AudioMarker:
    """Marks a stream of mono float samples at ``rate`` whose sample 0 plays at UTC ``t0``.

    ``process`` takes pieces of it (an utterance's 20 ms frames, or a whole track), each
    with its position in the stream.
    """

    def __init__(self, ident: int, t0: float, rate: int,
                 cfg: AudioMarkConfig = AudioMarkConfig()):
        self.rate, self.cfg = rate, cfg
        self.source = ChipSource(CHANNELS, ident, t0, CHIP_S)
        self.noise = noises(rate)
        self.chip = self.noise.shape[-1]
        self._level = 10 ** (cfg.level_db / 20)
        self._lock = threading.Lock()
        self._gain = 0.0
        self._next = -1

    def _mark(self, start: int, n: int) -> np.ndarray:
        """The unit-level mark for samples ``start`` .. ``start + n``."""
        out = np.empty(n, np.float32)
        i = 0
        while i < n:
            c, at = divmod(start + i, self.chip)
            take = min(n - i, self.chip - at)
            signs = self.source.chips(c).astype(np.float32)
            seg = self.noise[:, c % BLOCK_CHIPS, at:at + take]
            out[i:i + take] = signs @ seg / np.sqrt(CHANNELS)
            i += take
        return out

    def process(self, x: np.ndarray, start: int, piece: int | None = None) -> np.ndarray:
        """Marked copy of float samples ``x`` that play from sample ``start`` on; the level
        follows the voice in pieces of 20 ms (``piece`` samples)."""
        x = np.asarray(x, np.float32)
        step = piece or max(1, self.rate // 50)
        out = np.empty_like(x)
        with self._lock:
            gain = self._gain if start == self._next else 0.0
            for a in range(0, len(x), step):
                seg = x[a:a + step]
                target = self._level * float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))
                # Glide from the last piece's level to this one's: no steps to hear.
                g = np.linspace(gain, target, len(seg), endpoint=False, dtype=np.float32)
                out[a:a + step] = seg + g * self._mark(start + a, len(seg))
                gain = target
            self._gain, self._next = gain, start + len(x)
        return np.clip(out, -1.0, 1.0)

    def process_int16(self, pcm: np.ndarray, start: int) -> np.ndarray:
        y = self.process(pcm.astype(np.float32) / 32768.0, start)
        return np.clip(np.rint(y * 32768.0), -32768, 32767).astype(np.int16)


def _whiten(x: np.ndarray) -> np.ndarray:
    """Flatten the voice's spectrum, moment by moment (the voice is what the reader has to
    see through), and keep the mark's band."""
    from scipy.signal import istft, stft

    _, _, z = stft(x, READ_RATE, nperseg=512, noverlap=384)
    mag = np.abs(z)
    # Each bin over its neighbours' mean level: the spectral envelope divides out.
    k = np.ones(9) / 9
    env = np.apply_along_axis(lambda col: np.convolve(col, k, mode="same"), 0, mag) + 1e-7
    freqs = np.fft.rfftfreq(512, 1 / READ_RATE)
    keep = ((freqs >= BAND[0]) & (freqs <= BAND[1]))[:, None]
    _, y = istft(z / env * keep, READ_RATE, nperseg=512, noverlap=384)
    return y[:len(x)]


def read_audio(samples: np.ndarray, rate: int) -> Reading:
    """Find the mark in mono float samples at ``rate``."""
    from avatar.audio import resample

    x = np.asarray(samples, np.float32)
    if rate != READ_RATE:
        x = resample(x, rate, READ_RATE)
    chip = int(round(CHIP_S * READ_RATE))
    if len(x) < 32 * chip:
        return read([np.zeros((CHANNELS, 0))], CHIP_S, min_z=MIN_SYNC_Z_AUDIO)
    y = _whiten(x.astype(np.float64))
    wave = noises(READ_RATE).astype(np.float64)
    # Where blocks start: the sync channel's whole block against the copy at every lag,
    # folded onto one block's length (every block of the copy adds to the same lag).
    block = BLOCK_CHIPS * chip
    ref = (sync_chips()[:, None] * wave[0]).ravel()
    size = 1 << int(np.ceil(np.log2(len(y) + block)))
    corr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(ref, size)), size)
    corr = corr[:len(y)]
    folded = np.zeros(block)
    np.add.at(folded, np.arange(len(corr)) % block, corr)
    top = int(np.argmax(folded))
    lag = top % chip
    # The peak against every lag more than a chip away from it.
    far = np.abs((np.arange(block) - top + block // 2) % block - block // 2) > chip
    z = float((folded[top] - folded[far].mean()) / (folded[far].std() + 1e-12))
    # Every chip from there on, every channel: its noise against the copy.
    m = (len(y) - lag) // chip
    seg = y[lag:lag + m * chip].reshape(m, chip)
    # The chip positions are only known up to the block offset ``read`` finds; correlate
    # each chip with the noise of the position the folded peak puts it at.
    offset = top // chip
    pos = (np.arange(m) - offset) % BLOCK_CHIPS
    est = np.einsum("mn,kmn->km", seg, wave[:, pos, :])
    return read([est], CHIP_S, start_s=lag / READ_RATE, sync_z=z, min_z=MIN_SYNC_Z_AUDIO)
