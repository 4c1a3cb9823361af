"""Clip-level hand-crafted vectors: per-frame librosa features averaged over time.

Both reproduce the literature's ``extract_feature`` recipes with librosa's default frames
(n_fft 2048, hop 512). Where a clip is read from (the paper's 0.5 s offset, 2.5 s window) is the
pipeline's windowing, not the extractor's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import librosa
import numpy as np

from ser_ray.features.base import Extractor, _check_choice, register


def _mel_and_mfcc(mag: np.ndarray, sr: int, n_mels: int, mel_db: bool, n_mfcc: int):
    """Mel bands (n_mels, time) and MFCC (n_mfcc, time) from one shared magnitude STFT.

    The MFCC equals ``librosa.feature.mfcc(y=y, sr=sr, n_mfcc=n_mfcc)`` (128-band dB mel), as the
    papers call it, whatever ``n_mels`` the mel part uses; sharing the STFT saves recomputing it.
    """
    power = mag**2
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_mels=n_mels)
    mel128_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr))
    mfcc = librosa.feature.mfcc(S=mel128_db, n_mfcc=n_mfcc)
    # ref=np.max: dB relative to the clip's loudest bin, so recording level drops out.
    return (librosa.power_to_db(mel, ref=np.max) if mel_db else mel), mfcc


@register("handcrafted173")
@dataclass(frozen=True)
class Handcrafted173(Extractor):
    """173 time-averaged values, shape (173,):

    [0:20] MFCC, [20:148] mel power (mel_db: dB re the clip's peak), [148:160] chroma (0..1),
    [160:167] spectral contrast (dB), [167:173] tonnetz (-1..1).
    """

    n_fft: int = 2048
    hop_length: int = 512
    n_mfcc: int = 20
    n_mels: int = 128
    # "cqt" reproduces the paper; "stft" is about twice as cheap (CQT dominates the CPU time).
    tonnetz_chroma: str = "cqt"
    # Tonnetz of the harmonic part (librosa.effects.harmonic), as the paper's extract_feature does.
    tonnetz_harmonic: bool = True
    # False = raw mel power as the paper (carries recording level); True = dB relative to the
    # clip's loudest bin, level-invariant (METHODS "Lessons").
    mel_db: bool = False

    def __post_init__(self):
        _check_choice("handcrafted173", "tonnetz_chroma", self.tonnetz_chroma, ("cqt", "stft"))

    def min_samples(self, sr: int) -> int:
        return self.n_fft

    def compute(self, y, sr):
        mag = np.abs(librosa.stft(y, n_fft=self.n_fft, hop_length=self.hop_length))
        mel, mfcc = _mel_and_mfcc(mag, sr, self.n_mels, self.mel_db, self.n_mfcc)
        chroma = librosa.feature.chroma_stft(S=mag, sr=sr)  # magnitude, as the paper passes it
        contrast = librosa.feature.spectral_contrast(S=mag, sr=sr)
        yt = librosa.effects.harmonic(y) if self.tonnetz_harmonic else y
        if self.tonnetz_chroma == "cqt":
            # The lowest CQT octaves run on a heavily downsampled signal, so librosa warns that
            # their FFT exceeds it for any clip of a few seconds; expected, and noise in job logs.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="n_fft=.* is too large")
                tchroma = librosa.feature.chroma_cqt(y=yt, sr=sr, hop_length=self.hop_length)
        else:
            tchroma = librosa.feature.chroma_stft(
                y=yt, sr=sr, n_fft=self.n_fft, hop_length=self.hop_length
            )
        tonnetz = librosa.feature.tonnetz(sr=sr, chroma=tchroma)
        return np.concatenate([f.mean(axis=1) for f in (mfcc, mel, chroma, contrast, tonnetz)])


@register("handcrafted94")
@dataclass(frozen=True)
class Handcrafted94(Extractor):
    """94 time-averaged values, shape (94,):

    [0:12] chroma (0..1), [12:72] mel power (mel_db: dB re the clip's peak), [72:92] MFCC,
    [92] zero-crossing rate (crossings per sample), [93] spectral centroid (Hz).
    """

    n_fft: int = 2048
    hop_length: int = 512
    n_mfcc: int = 20
    n_mels: int = 60
    mel_db: bool = False  # as in handcrafted173: True removes the recording level from the mel

    def min_samples(self, sr: int) -> int:
        return self.n_fft

    def compute(self, y, sr):
        mag = np.abs(librosa.stft(y, n_fft=self.n_fft, hop_length=self.hop_length))
        mel, mfcc = _mel_and_mfcc(mag, sr, self.n_mels, self.mel_db, self.n_mfcc)
        feats = (
            librosa.feature.chroma_stft(S=mag, sr=sr),
            mel,
            mfcc,
            librosa.feature.zero_crossing_rate(
                y, frame_length=self.n_fft, hop_length=self.hop_length
            ),
            librosa.feature.spectral_centroid(S=mag, sr=sr),
        )
        return np.concatenate([f.mean(axis=1) for f in feats])
