"""A telephone line as a pure function of the waveform: what happens to speech between a caller's
mouth and a contact centre's recorder.

:func:`telephone` applies, in the order a call meets them: a level change (handset, AGC), clipping
(an overdriven input), the telephone band-pass (300-3400 Hz), the network's 8 kHz rate, a codec
(G.711 mu-law or A-law, or a low-bitrate MP3/Opus as recorders store calls), and packet loss
(20 ms frames lost on the way, hidden by repeating the last good frame at falling level), then
back to the caller's rate. The codecs are libsndfile's own encoders (``audio.encode``), the same
library that decodes calls, so nothing here writes a codec by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ser_ray import audio
from ser_ray.config import LINE_CODECS

LINE_RATE = 8000


@dataclass(frozen=True)
class Line:
    """One line's settings; the defaults are a clean G.711 mu-law call."""

    codec: str = "mulaw"
    kbps: float = 16.0          # mp3 / opus only
    low_hz: float = 300.0
    high_hz: float = 3400.0
    rate: int = LINE_RATE
    gain_db: float = 0.0
    clip: float | None = None   # clip at this fraction of the (gained) peak; None: no clipping
    loss: float = 0.0           # share of ``frame_ms`` frames lost
    frame_ms: float = 20.0

    def __post_init__(self):
        if self.codec not in LINE_CODECS:
            raise ValueError(f"telephone: codec={self.codec!r} is not one of {list(LINE_CODECS)}")
        if not 0 < self.low_hz < self.high_hz < self.rate / 2:
            raise ValueError(f"telephone: need 0 < low_hz={self.low_hz} < high_hz={self.high_hz}"
                             f" < rate/2={self.rate / 2}")
        if self.clip is not None and not 0 < self.clip <= 1:
            raise ValueError(f"telephone: clip={self.clip} must be in (0, 1]")
        if not 0 <= self.loss < 1:
            raise ValueError(f"telephone: loss={self.loss} must be in [0, 1)")
        if self.codec == "opus" and self.rate not in audio.OPUS_RATES:
            raise ValueError(f"telephone: opus runs at {list(audio.OPUS_RATES)} Hz, not "
                             f"rate={self.rate}")


def band_pass(y: np.ndarray, sr: int, low_hz: float, high_hz: float) -> np.ndarray:
    """A 4th-order Butterworth band-pass (causal, as a line is), float32."""
    from scipy.signal import butter, sosfilt

    high = min(high_hz, 0.999 * sr / 2)
    sos = butter(4, [low_hz, high], btype="bandpass", fs=sr, output="sos")
    return sosfilt(sos, y).astype(np.float32)


def conceal_losses(y: np.ndarray, sr: int, loss: float, rng: np.random.Generator,
                   frame_ms: float = 20.0) -> tuple[np.ndarray, int]:
    """Drop each ``frame_ms`` frame with probability ``loss``; a lost frame repeats the last
    received one at half its level per consecutive loss (silence if the first frame is lost), as
    a simple packet-loss concealment does. -> (signal, frames lost)."""
    n = max(1, int(round(sr * frame_ms / 1000)))
    frames = int(np.ceil(len(y) / n))
    lost = rng.random(frames) < loss
    if not lost.any():
        return y, 0
    out = y.copy()
    last = np.zeros(n, np.float32)
    fade = 1.0
    for k in range(frames):
        seg = slice(k * n, min((k + 1) * n, len(y)))
        if lost[k]:
            fade *= 0.5
            out[seg] = (last[:seg.stop - seg.start] * fade).astype(np.float32)
        else:
            fade = 1.0
            last = np.zeros(n, np.float32)
            last[:seg.stop - seg.start] = y[seg]
    return out, int(lost.sum())


def telephone(y: np.ndarray, sr: int, line: Line = Line(),
              rng: np.random.Generator | None = None) -> np.ndarray:
    """Mono float32 ``y`` at ``sr`` through ``line`` and back to ``sr``; the same length.

    Nothing above ``line.rate / 2`` survives (the 8 kHz leg removes it) and the codec's
    quantisation is in the result. ``rng`` draws the lost frames (needed when ``line.loss``)."""
    y = np.asarray(y, dtype=np.float32)
    if y.size == 0:
        return y
    if line.gain_db:
        y = y * np.float32(10 ** (line.gain_db / 20))
    if line.clip is not None:
        level = line.clip * float(np.max(np.abs(y)))
        y = np.clip(y, -level, level)
    y = np.clip(y, -1.0, 1.0)  # the line's converter saturates at full scale
    narrow = audio.resample(band_pass(y, sr, line.low_hz, line.high_hz), sr, line.rate)
    coded = audio.round_trip(narrow, line.rate, line.codec, line.kbps)
    if line.loss:
        if rng is None:
            raise ValueError("telephone: packet loss needs a random generator")
        coded, _ = conceal_losses(coded, line.rate, line.loss, rng, line.frame_ms)
    return audio.fit_length(audio.resample(coded, line.rate, sr), len(y))
