"""Frame-level spectral features: MFCC (+ deltas), log-mel and STFT magnitude blocks."""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np

from ser_ray.features.base import Extractor, _check_choice, register

# librosa.feature.delta's default window; with mode="interp" it needs at least this many frames.
_DELTA_WIDTH = 9


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
        m = librosa.feature.mfcc(
            y=y, sr=sr, n_mfcc=self.n_mfcc, n_fft=self.n_fft, hop_length=self.hop_length,
            win_length=self.win_length, n_mels=self.n_mels,
        )
        blocks = [m] + [librosa.feature.delta(m, order=k) for k in range(1, self.deltas + 1)]
        x = np.concatenate(blocks, axis=0).T  # (time, coefficient), as the 2D-CNN paper feeds it
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
        s = librosa.feature.melspectrogram(
            y=y, sr=sr, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax,
        )
        return librosa.power_to_db(s, ref=np.max, top_db=self.top_db)


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
        mag = np.abs(librosa.stft(
            y, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window=self.window, center=True,
        ))
        if self.scale == "db":
            return librosa.amplitude_to_db(mag, ref=np.max, top_db=self.top_db)
        return mag
