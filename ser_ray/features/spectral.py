"""Frame-level spectral features: MFCC (+ deltas), log-mel and STFT magnitude blocks.

The definitions are librosa's (``librosa.feature.mfcc`` / ``melspectrogram`` / ``delta``,
``librosa.stft`` with ``center=True`` and zero padding), with librosa's mel filter bank and
window. The computation is arranged for throughput: what librosa rebuilds on every call (mel
basis, padded window, delta filter and its edge fit) is cached per process, and the STFT frames
the padded signal as one strided view and runs one float32 real FFT over every frame, time-major,
so the mel projection is a single matrix product and no array is transposed on the way. librosa
computes the FFT in float64 and rounds it to complex64; the results agree to float32 rounding
(MFCC within 1e-3 of values in the hundreds; ``tests/test_features.py`` pins it), several
times faster than ``librosa.feature.mfcc`` + ``librosa.feature.delta``
(``benchmarks/prepare_throughput.py`` runs both, as (a) and (a')).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import librosa
import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.signal

from ser_ray.features.base import Extractor, _check_choice, register

# librosa.feature.delta's default window; with mode="interp" it needs at least this many frames.
_DELTA_WIDTH = 9


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # cached and shared by every call: nobody may write into it
    return a


@functools.lru_cache(maxsize=32)
def mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0,
              fmax: float | None = None) -> np.ndarray:
    """``librosa.filters.mel`` (Slaney, float32), built once per parameter set."""
    return _frozen(librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax))


@functools.lru_cache(maxsize=32)
def analysis_window(name: str, win_length: int) -> np.ndarray:
    """The analysis window ``librosa.stft`` would build from ``name`` (periodic, float64)."""
    return _frozen(librosa.filters.get_window(name, win_length, fftbins=True))


@functools.lru_cache(maxsize=32)
def _frame_window(name: str, win_length: int, n_fft: int) -> np.ndarray:
    """``analysis_window`` centred in ``n_fft`` samples (as ``librosa.stft`` pads it), float32."""
    return _frozen(librosa.util.pad_center(analysis_window(name, win_length), size=n_fft)
                   .astype(np.float32))


def stft_frames(y: np.ndarray, n_fft: int, hop_length: int, win_length: int,
                window: str = "hann") -> np.ndarray:
    """Complex STFT, time-major ``(1 + len(y) // hop_length, n_fft // 2 + 1)``.

    ``librosa.stft(y, center=True, pad_mode="constant")`` transposed: the signal is zero-padded
    by ``n_fft // 2`` on both sides and framed every ``hop_length`` samples.
    """
    padded = np.pad(np.asarray(y, dtype=np.float32), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    return scipy.fft.rfft(frames * _frame_window(window, win_length, n_fft), axis=-1)


def power_mel(y: np.ndarray, sr: int, n_fft: int, hop_length: int, win_length: int,
              n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """``librosa.feature.melspectrogram`` (power 2, Hann, centred, zero padding), TIME-MAJOR:
    shape ``(frames, n_mels)``, the transpose of librosa's."""
    spec = stft_frames(y, n_fft, hop_length, win_length)
    power = np.square(spec.real)
    power += np.square(spec.imag)
    return power @ mel_basis(sr, n_fft, n_mels, fmin, fmax).T


@functools.lru_cache(maxsize=8)
def _delta_filters(width: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Savitzky-Golay filter of ``librosa.feature.delta`` and its two edge operators.

    The interior is ``savgol_coeffs`` convolved as scipy does. mode="interp" fits a polynomial of
    degree ``order`` to the first/last ``width`` frames and evaluates its ``order``-th
    derivative at the edge frames; that is linear in the frames, so it is a fixed matrix.
    """
    coeffs = scipy.signal.savgol_coeffs(width, order, deriv=order)
    half = width // 2
    fit = np.linalg.pinv(np.vander(np.arange(width, dtype=np.float64), order + 1))

    def derivative_at(points: np.ndarray) -> np.ndarray:  # rows: d^order/dx^order of x^e
        out = np.zeros((len(points), order + 1))
        for k in range(order + 1):
            e = order - k  # np.vander: highest power first
            if e >= order:
                out[:, k] = math.perm(e, order) * points ** (e - order)
        return out

    left = derivative_at(np.arange(0, half, dtype=np.float64)) @ fit
    right = derivative_at(np.arange(width - half, width, dtype=np.float64)) @ fit
    return _frozen(coeffs), _frozen(left), _frozen(right)


def delta(data: np.ndarray, order: int = 1, width: int = _DELTA_WIDTH,
          axis: int = -1) -> np.ndarray:
    """``librosa.feature.delta(data, width=width, order=order, axis=axis)``."""
    data = np.moveaxis(data, axis, -1)
    n = data.shape[-1]
    if width > n:
        raise ValueError(f"delta: width={width} cannot exceed the {n} frames of the input")
    coeffs, left, right = _delta_filters(width, order)
    out = scipy.ndimage.convolve1d(data, coeffs, axis=-1, mode="constant")
    half = width // 2
    out[..., :half] = data[..., :width].astype(np.float64) @ left.T
    out[..., n - half:] = data[..., n - width:].astype(np.float64) @ right.T
    return np.moveaxis(out, -1, axis)


@register("mfcc")
@dataclass(frozen=True)
class MFCC(Extractor):
    """MFCC with stacked deltas, time first.

    pooling="none": (time, n_mfcc * (deltas + 1)), columns [mfcc | delta | delta-delta];
    "mean": (n_mfcc * (deltas + 1),); "mean_std": means then standard deviations, twice that.
    Units: cepstral coefficients of the dB mel power spectrum; one frame per ``hop_length`` samples.
    """

    n_mfcc: int = 40
    deltas: int = 2  # 0 = MFCC only, 1 = + delta, 2 = + delta + delta-delta
    n_fft: int = 512
    hop_length: int = 160  # 10 ms at 16 kHz
    win_length: int = 400  # 25 ms at 16 kHz
    n_mels: int = 64
    pooling: str = "none"  # "none" (2-D arrays for CNNs) | "mean" | "mean_std" (classical models)

    def __post_init__(self):
        _check_choice("mfcc", "deltas", self.deltas, (0, 1, 2))
        _check_choice("mfcc", "pooling", self.pooling, ("none", "mean", "mean_std"))

    def min_samples(self, sr: int) -> int:
        # One full FFT frame; with center=True there are 1 + len // hop frames, and deltas need
        # _DELTA_WIDTH of them.
        return max(self.n_fft, (_DELTA_WIDTH - 1) * self.hop_length if self.deltas else 0)

    def compute(self, y, sr):
        # librosa.feature.mfcc: DCT-II (orthonormal) of the dB mel power spectrogram; time-major
        mel = power_mel(y, sr, self.n_fft, self.hop_length, self.win_length, self.n_mels)
        m = scipy.fft.dct(librosa.power_to_db(mel), axis=-1, type=2, norm="ortho")
        m = m[:, :self.n_mfcc]
        blocks = [m] + [delta(m, order=k, axis=0) for k in range(1, self.deltas + 1)]
        x = np.concatenate(blocks, axis=1)  # (time, coefficient), as the 2D-CNN paper feeds it
        if self.pooling == "mean":
            return x.mean(axis=0)
        if self.pooling == "mean_std":
            return np.concatenate([x.mean(axis=0), x.std(axis=0)])
        return x


@register("logmel")
@dataclass(frozen=True)
class LogMel(Extractor):
    """Log-mel spectrogram, shape (n_mels, time), in dB relative to the clip's loudest bin.

    ref=np.max makes it level-invariant: corpora recorded ~20 dB apart give the same image,
    so a model cannot learn the corpus from loudness (METHODS "Lessons"). Values in [-top_db, 0].
    """

    n_mels: int = 128
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 400
    fmin: float = 0.0
    fmax: float | None = None  # None = sample_rate / 2
    top_db: float | None = 80.0

    def min_samples(self, sr: int) -> int:
        return self.n_fft

    def compute(self, y, sr):
        s = power_mel(y, sr, self.n_fft, self.hop_length, self.win_length, self.n_mels,
                      self.fmin, self.fmax)
        return librosa.power_to_db(s, ref=np.max, top_db=self.top_db).T


@register("stft")
@dataclass(frozen=True)
class STFT(Extractor):
    """STFT spectrogram of one block, shape (n_fft // 2 + 1, 1 + len(y) // hop_length).

    Defaults: 1 s blocks, Hamming 16 ms window, 4 ms hop (75 % overlap), n_fft 512 at 16 kHz
    -> (257, 251). scale="magnitude": linear |X|; "db": dB relative to the block's peak (<= 0).
    """

    block_s: float | None = 1.0
    n_fft: int = 512
    hop_length: int = 64  # 4 ms at 16 kHz
    win_length: int = 256  # 16 ms at 16 kHz
    window: str = "hamming"
    scale: str = "magnitude"  # "magnitude" | "db"
    top_db: float | None = 80.0  # only for scale="db"

    def __post_init__(self):
        _check_choice("stft", "scale", self.scale, ("magnitude", "db"))

    def min_samples(self, sr: int) -> int:
        return self.n_fft

    def compute(self, y, sr):
        mag = np.abs(stft_frames(y, self.n_fft, self.hop_length, self.win_length, self.window).T)
        if self.scale == "db":
            return librosa.amplitude_to_db(mag, ref=np.max, top_db=self.top_db)
        return mag
