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
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.fft

from ser_ray.features.base import Extractor, _check_choice, register

# librosa.feature.delta's default window; with mode="interp" it needs at least this many frames.
_DELTA_WIDTH = 9


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # cached and shared by every call: nobody may write into it
    return a


# librosa's definitions, in numpy. Importing librosa (and scipy.signal) costs a new process ~2.5 CPU
# seconds, most of it numba loading kernels these features never call; every scoring actor and
# prepare worker paid it at start-up. The code below is the arithmetic of librosa 0.11's
# ``filters.mel`` (Slaney), ``hz_to_mel`` / ``mel_to_hz``, ``power_to_db`` and scipy's periodic
# Hann/Hamming windows and ``savgol_coeffs``, operation for operation;
# ``tests/test_features.py`` compares each with the library's own function.

_F_SP = 200.0 / 3  # Slaney mel scale: linear below 1 kHz ...
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0  # ... logarithmic above


def hz_to_mel(frequencies) -> np.ndarray:
    """``librosa.hz_to_mel(f, htk=False)`` (Slaney)."""
    f = np.asanyarray(frequencies, dtype=np.float64)
    mels = f / _F_SP
    log_t = f >= _MIN_LOG_HZ
    return np.where(log_t, _MIN_LOG_MEL + np.log(np.where(log_t, f, _MIN_LOG_HZ) / _MIN_LOG_HZ)
                    / _LOGSTEP, mels)


def mel_to_hz(mels) -> np.ndarray:
    """``librosa.mel_to_hz(m, htk=False)`` (Slaney)."""
    m = np.asanyarray(mels, dtype=np.float64)
    freqs = _F_SP * m
    log_t = m >= _MIN_LOG_MEL
    return np.where(log_t, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), freqs)


@functools.lru_cache(maxsize=32)
def mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0,
              fmax: float | None = None) -> np.ndarray:
    """``librosa.filters.mel(sr=, n_fft=, n_mels=, fmin=, fmax=)``: Slaney mel scale and area
    normalisation, float32 ``(n_mels, 1 + n_fft // 2)``; built once per parameter set."""
    if fmax is None:
        fmax = float(sr) / 2
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):  # triangles from the lower and upper slopes
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    if not np.all((mel_f[:-2] == 0) | (weights.max(axis=1) > 0)):
        warnings.warn(f"mel filter bank sr={sr} n_fft={n_fft} n_mels={n_mels}: some filters are "
                      "empty (their bands produce zeros); use fewer mels or a longer FFT",
                      stacklevel=2)
    return _frozen(weights)


def power_to_db(s: np.ndarray, ref=1.0, amin: float = 1e-10,
                top_db: float | None = 80.0) -> np.ndarray:
    """``librosa.power_to_db`` for real power: dB re ``ref`` (a value or a function of ``s``,
    e.g. ``np.max``), floored at ``amin``, clipped ``top_db`` below the peak."""
    s = np.asarray(s)
    ref_value = ref(s) if callable(ref) else np.abs(ref)
    log_spec = 10.0 * np.log10(np.maximum(amin, s))
    log_spec -= 10.0 * np.log10(np.maximum(amin, ref_value))
    if top_db is not None:
        log_spec = np.maximum(log_spec, log_spec.max() - top_db)
    return log_spec


_COSINE_WINDOWS = {"hann": (0.5, 1.0 - 0.5), "hamming": (0.54, 1.0 - 0.54)}  # general_hamming


@functools.lru_cache(maxsize=32)
def analysis_window(name: str, win_length: int) -> np.ndarray:
    """The analysis window ``librosa.stft`` would build from ``name``: periodic (``fftbins``),
    float64. Hann and Hamming as ``scipy.signal.get_window`` computes them; other names through
    scipy.signal itself."""
    if name not in _COSINE_WINDOWS:
        import scipy.signal
        return _frozen(scipy.signal.get_window(name, win_length, fftbins=True))
    if win_length <= 1:
        return _frozen(np.ones(win_length))
    # scipy.signal.windows.general_cosine over win_length + 1 points, the last dropped
    fac = np.linspace(-np.pi, np.pi, win_length + 1)
    w = np.zeros(win_length + 1)
    for k, a in enumerate(_COSINE_WINDOWS[name]):
        w += a * np.cos(k * fac)
    return _frozen(w[:-1])


@functools.lru_cache(maxsize=32)
def _frame_window(name: str, win_length: int, n_fft: int) -> np.ndarray:
    """``analysis_window`` centred in ``n_fft`` samples (as ``librosa.stft`` pads it), float32."""
    if win_length > n_fft:
        raise ValueError(f"win_length={win_length} is longer than n_fft={n_fft}")
    out = np.zeros(n_fft, dtype=np.float32)
    lpad = (n_fft - win_length) // 2  # librosa.util.pad_center
    out[lpad:lpad + win_length] = analysis_window(name, win_length)
    return _frozen(out)


def stft_frames(y: np.ndarray, n_fft: int, hop_length: int, win_length: int,
                window: str = "hann") -> np.ndarray:
    """Complex STFT, time-major ``(1 + len(y) // hop_length, n_fft // 2 + 1)``.

    ``librosa.stft(y, center=True, pad_mode="constant")`` transposed: the signal is zero-padded
    by ``n_fft // 2`` on both sides and framed every ``hop_length`` samples.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"stft: expected mono samples (1-D), got shape {y.shape}")
    half = n_fft // 2
    padded = np.zeros(len(y) + 2 * half, dtype=np.float32)  # np.pad, without its overhead
    padded[half:half + len(y)] = y
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


def savgol_coeffs(width: int, order: int) -> np.ndarray:
    """``scipy.signal.savgol_coeffs(width, order, deriv=order)`` (odd width, centred, for
    convolution): least-squares polynomial of degree ``order``, its ``order``-th derivative."""
    half = width // 2
    x = np.arange(-half, width - half, dtype=np.float64)[::-1]  # use="conv": reversed
    powers = x ** np.arange(order + 1).reshape(-1, 1)
    target = np.zeros(order + 1)
    target[order] = math.factorial(order)
    return np.linalg.lstsq(powers, target, rcond=None)[0]


@functools.lru_cache(maxsize=8)
def _delta_filters(width: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Savitzky-Golay filter of ``librosa.feature.delta`` and its two edge operators.

    The interior is ``savgol_coeffs`` convolved as ``scipy.ndimage.convolve1d`` does.
    mode="interp" fits a polynomial of degree ``order`` to the first/last ``width`` frames and
    evaluates its ``order``-th derivative at the edge frames; that is linear in the frames, so it
    is a fixed matrix.
    """
    if width < 3 or width % 2 == 0:
        raise ValueError(f"delta: width={width} must be an odd integer >= 3")
    coeffs = savgol_coeffs(width, order)
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
    """``librosa.feature.delta(data, width=width, order=order, axis=axis)``: float32 in, float32
    out (float64 otherwise), like scipy's ``savgol_filter(mode="interp")`` underneath."""
    data = np.asarray(data)
    dtype = data.dtype if data.dtype in (np.float32, np.float64) else np.float64
    x = np.moveaxis(data, axis, 0)  # frames first: every shifted slice below is contiguous
    n = x.shape[0]
    if width > n:
        raise ValueError(f"delta: width={width} cannot exceed the {n} frames of the input")
    coeffs, left, right = _delta_filters(width, order)
    half = width // 2
    out = np.empty(x.shape, dtype=dtype)
    x64 = x.astype(np.float64)  # scipy filters in float64 too
    acc = np.zeros((n - 2 * half,) + x.shape[1:])
    tap = np.empty_like(acc)
    for j, c in enumerate(coeffs):  # interior: the convolution, one shifted slice per tap
        if c:
            np.multiply(x64[width - 1 - j:n - j], c, out=tap)
            acc += tap
    out[half:n - half] = acc
    out[:half] = (left @ x64[:width].reshape(width, -1)).reshape((half,) + x.shape[1:])
    out[n - half:] = (right @ x64[n - width:].reshape(width, -1)).reshape((half,) + x.shape[1:])
    return np.moveaxis(out, 0, axis)


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
        m = scipy.fft.dct(power_to_db(mel), axis=-1, type=2, norm="ortho")
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
        return power_to_db(s, ref=np.max, top_db=self.top_db).T


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
            import librosa
            return librosa.amplitude_to_db(mag, ref=np.max, top_db=self.top_db)
        return mag
