"""Synthetic emotional speech for demos and tests: a source-filter voice whose prosody carries emotion.

No real corpus ships with ser-ray (licences forbid it), so demos and tests run on audio made here
and written under the real corpora's naming schemes (see CORPORA.md). The voice is a Rosenberg
glottal pulse train with jitter, shimmer and aspiration noise, shaped by vowel formants that change
every syllable. Emotion lives only in prosody and voice quality (pitch level, range and contour,
speaking rate, loudness, breathiness, tension, tremor, creak), drawn afresh for every utterance, so
a classifier can learn it from MFCC / pitch / energy features but not from a single constant.
This is NOT speech: numbers measured on it say nothing about real corpora."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import lfilter, sosfilt

from ser_ray.labels import CANONICAL_LABELS


class Prosody(NamedTuple):
    """How one emotion is spoken; every field is a mean that each utterance perturbs."""

    f0: float        # pitch level, multiple of the speaker's base F0
    range_st: float  # pitch-accent range, semitones peak to peak
    slope_st: float  # F0 change start -> end, semitones (declination < 0 < rising question)
    syl_s: float     # mean vowel duration, s (speaking rate)
    level_db: float  # loudness relative to neutral
    breath: float    # aspiration noise relative to voicing
    tense: float     # 0 lax/dark .. 1 pressed/bright: glottal closure speed and spectral tilt
    jitter: float    # relative F0 perturbation per ~period
    shimmer: float   # relative amplitude perturbation per period
    tremor: float    # relative depth of a 5-7 Hz F0 tremor
    creak: float     # 0..1 damping of every other period (period doubling: creaky, harsh)


EMOTIONS: dict[str, Prosody] = {
    "neutral":    Prosody(1.00, 3.0, -2.0, 0.20, 0.0, 0.08, 0.50, 0.005, 0.03, 0.00, 0.0),
    "calm":       Prosody(0.92, 2.5, -2.0, 0.25, -5.0, 0.15, 0.35, 0.004, 0.03, 0.00, 0.0),
    "happy":      Prosody(1.30, 8.0, -1.0, 0.16, 4.0, 0.08, 0.65, 0.008, 0.04, 0.00, 0.0),
    "sad":        Prosody(0.85, 1.5, -3.0, 0.28, -8.0, 0.35, 0.20, 0.010, 0.06, 0.00, 0.0),
    "angry":      Prosody(1.40, 9.0, -3.0, 0.14, 8.0, 0.03, 0.95, 0.012, 0.06, 0.00, 0.0),
    "fearful":    Prosody(1.45, 5.0, 0.0, 0.13, 1.0, 0.20, 0.55, 0.030, 0.08, 0.06, 0.0),
    "disgust":    Prosody(0.88, 4.0, -4.0, 0.26, 1.0, 0.10, 0.70, 0.020, 0.15, 0.00, 0.6),
    "surprised":  Prosody(1.35, 7.0, 7.0, 0.17, 4.0, 0.08, 0.70, 0.008, 0.04, 0.00, 0.0),
    "boredom":    Prosody(0.85, 1.0, -1.0, 0.27, -5.0, 0.15, 0.30, 0.006, 0.04, 0.00, 0.2),
    "excited":    Prosody(1.40, 9.0, 0.0, 0.15, 6.0, 0.06, 0.80, 0.010, 0.05, 0.00, 0.0),
    "frustrated": Prosody(1.10, 5.0, -3.0, 0.19, 4.0, 0.10, 0.75, 0.012, 0.07, 0.00, 0.2),
}


# Every canonical label must be speakable, or a layout could name an emotion with no prosody.
assert set(EMOTIONS) == set(CANONICAL_LABELS)


# Adult male vowel formants F1-F4, Hz (Peterson & Barney 1952): a, i, u, e, o.
_VOWELS = np.array([[730, 1090, 2440, 3400], [270, 2290, 3010, 3700], [300, 870, 2240, 3300],
                    [530, 1840, 2480, 3500], [570, 840, 2410, 3400]], dtype=float)


_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0])
_REF_DBFS = -28.0    # speech RMS of a neutral, 0 dB speaker: leaves headroom for angry + loud voices
_FLOOR_DBFS = -70.0  # background noise: silence that trimming has to find, not digital zero


@dataclass(frozen=True)
class SpeakerProfile:
    """One synthetic voice: base F0 (Hz), vocal-tract scale (formants x scale) and level (dB)."""

    id: str
    sex: str  # "female" | "male"
    f0_base: float
    formant_scale: float
    level_db: float


def voice(speaker_id: str, sex: str, rng: np.random.Generator) -> SpeakerProfile:
    female = sex == "female"
    return SpeakerProfile(speaker_id, sex, rng.uniform(175, 240) if female else rng.uniform(95, 140),
                          rng.uniform(1.12, 1.22) if female else rng.uniform(0.95, 1.05), rng.uniform(-3, 3))


def make_speakers(n: int, rng: np.random.Generator) -> list[SpeakerProfile]:
    """``n`` random voices ``spk01..``, alternating male and female."""
    return [voice(f"spk{i + 1:02d}", ("male", "female")[i % 2], rng) for i in range(n)]


def prosody(emotion: str, intensity: float = 1.0) -> Prosody:
    """Mean prosody of a canonical emotion; ``intensity`` scales its distance from neutral."""
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; choose one of {', '.join(EMOTIONS)}")
    base, target = EMOTIONS["neutral"], EMOTIONS[emotion]
    return Prosody(*(b + intensity * (t - b) for b, t in zip(base, target)))


def synth_utterance(emotion: str, speaker: SpeakerProfile, rng: np.random.Generator, sr: int = 16000,
                    duration_s: float | None = None, *, intensity: float = 1.0) -> np.ndarray:
    """Mono float32 samples in [-1, 1] of ``speaker`` saying syllables in ``emotion``.

    0.1-0.3 s of background noise at -70 dBFS precede and follow the speech. With ``duration_s``
    None the length follows the speaking rate (8-12 syllables, about 2-5 s); otherwise the result
    is exactly ``round(duration_s * sr)`` samples (at least 0.5 s).
    """
    p = prosody(emotion, intensity)
    # Per-utterance draws around the emotion's means: no single feature value gives the label away.
    f0 = speaker.f0_base * p.f0 * np.exp(rng.normal(0, 0.06))
    range_st, syl = p.range_st * rng.uniform(0.7, 1.3), p.syl_s * rng.uniform(0.85, 1.15)
    level_db = speaker.level_db + p.level_db + rng.normal(0, 1.5)
    lead, tail = rng.uniform(0.1, 0.3, 2)
    if duration_s is not None:
        duration_s = max(float(duration_s), 0.5)
        lead, tail = min(lead, 0.2 * duration_s), min(tail, 0.2 * duration_s)
        speech_s = duration_s - lead - tail

    # Syllable plan: vowel [start, end) then a consonant gap that scales with the speaking rate.
    n_syl, starts, ends, t = rng.integers(8, 13), [], [], 0.0
    while (len(starts) < n_syl) if duration_s is None else (t + 0.05 < speech_s):
        starts.append(t)
        ends.append(t + syl * rng.uniform(0.7, 1.3))
        t = ends[-1] + syl * rng.uniform(0.3, 0.6)
    if duration_s is None:
        speech_s = ends[-1]
    n_sp = int(round(speech_s * sr))
    start_n = np.round(np.array(starts) * sr).astype(int)
    end_n = np.minimum(np.round(np.array(ends) * sr).astype(int), n_sp)
    k = len(starts)

    # Per sample: which syllable (or the gap after it), and where in it.
    idx_t = np.arange(n_sp)
    syl_of = np.searchsorted(start_n, idx_t, side="right") - 1
    in_vowel = idx_t < end_n[syl_of]
    ramp = np.clip(np.minimum(idx_t - start_n[syl_of], end_n[syl_of] - idx_t) / (0.015 * sr), 0, 1)
    stress = rng.uniform(0.6, 1.0, k)
    env = np.where(in_vowel, ramp * stress[syl_of], 0.0)

    # F0: pitch accents per syllable, linear declination/rise, tremor, and jitter held ~1 period.
    t_s = idx_t / sr
    centres = (np.array(starts) + np.array(ends)) / 2
    semitones = np.interp(t_s, centres, rng.uniform(-0.5, 0.5, k) * range_st)
    semitones += p.slope_st * (t_s / speech_s - 0.5)
    hop = max(sr // 150, 1)
    jitter = rng.standard_normal(n_sp // hop + 1)[idx_t // hop]
    tremor = np.sin(2 * np.pi * rng.uniform(5, 7) * t_s + rng.uniform(0, 2 * np.pi))
    f0_t = f0 * 2 ** (semitones / 12) * (1 + p.tremor * tremor) * (1 + p.jitter * jitter)

    # Rosenberg pulse per period; a pressed voice closes faster, which brightens the spectrum.
    phase = np.cumsum(f0_t / sr)
    period = phase.astype(int)
    frac = phase - period
    open_q = 0.75 - 0.35 * p.tense
    t_open = 0.6 * open_q
    flow = np.where(frac < t_open, 0.5 * (1 - np.cos(np.pi * frac / t_open)),
                    np.where(frac < open_q, np.cos(0.5 * np.pi * (frac - t_open) / (open_q - t_open)), 0.0))
    amp = 1 + p.shimmer * rng.standard_normal(period[-1] + 2)
    amp[1::2] *= 1 - 0.7 * p.creak
    # Lip radiation (first difference) plus a one-pole low-pass that darkens lax voices.
    source = lfilter([1.0, -1.0], [1.0, -0.6 * (1 - p.tense)], flow * amp[period])
    # Aspiration: noise strongest while the glottis is open, mixed by breathiness.
    noise = rng.standard_normal(n_sp) * (0.3 + flow)
    excitation = (source + 2.5 * p.breath * source.std() * noise / noise.std()) * env

    # Vocal tract: each vowel's formant cascade over the whole excitation, cross-faded per syllable
    # (40 ms smoothing stands in for coarticulation). Cheaper than time-varying filters.
    vowel_of_syl = rng.integers(0, len(_VOWELS), k)
    shift = speaker.formant_scale * rng.uniform(0.97, 1.03)
    speech = np.zeros(n_sp)
    for v in np.unique(vowel_of_syl):
        weight = uniform_filter1d((vowel_of_syl[syl_of] == v).astype(float), max(int(0.04 * sr), 1))
        speech += weight * sosfilt(_formant_sos(_VOWELS[v] * shift, _BANDWIDTHS * (1 + p.breath), sr), excitation)

    # Fricative bursts (first-differenced noise = bright hiss) ending some consonant gaps.
    next_start = np.append(start_n, n_sp)[syl_of + 1]
    fric = (~in_vowel) & (rng.random(k) < 0.5)[syl_of] & (next_start - idx_t < 0.06 * sr)
    speech += np.diff(rng.standard_normal(n_sp), prepend=0.0) * fric * 0.15 * speech.std()

    active = speech[env > 0.3]
    speech *= 10 ** ((_REF_DBFS + level_db) / 20) / max(np.sqrt(np.mean(active ** 2)) if active.size else 1.0, 1e-9)
    n_lead = int(round(lead * sr))
    n_total = int(round(duration_s * sr)) if duration_s is not None else n_lead + n_sp + int(round(tail * sr))
    out = rng.normal(0, 10 ** (_FLOOR_DBFS / 20), n_total)
    out[n_lead:n_lead + n_sp] += speech[:n_total - n_lead]
    peak = np.abs(out).max()
    return (out * (0.99 / peak if peak > 0.99 else 1.0)).astype(np.float32)


def _formant_sos(freqs: np.ndarray, bws: np.ndarray, sr: int) -> np.ndarray:
    """Cascade of unit-DC-gain two-pole resonators, one per formant below 0.45 * sr."""
    keep = freqs < 0.45 * sr
    r = np.exp(-np.pi * bws[keep] / sr)
    c = 2 * r * np.cos(2 * np.pi * freqs[keep] / sr)
    z = np.zeros_like(r)
    return np.stack([1 - c + r ** 2, z, z, np.ones_like(r), -c, r ** 2], axis=1)


SYNTH_SR = 48000  # voices of calls are made at this rate, then resampled (see utterance_at)


def utterance_at(emotion: str, speaker: SpeakerProfile, rng: np.random.Generator, sr: int, duration_s: float,
                  synth_sr: int) -> np.ndarray:
    """:func:`synth_utterance` of exactly ``round(max(duration_s, 0.5) * sr)`` samples, made at
    ``synth_sr`` and resampled when ``sr`` is lower: the glottal pulses are not band-limited, so
    synthesis at a telephone rate aliases their harmonics into a bright hiss that a model reads
    as tension (angry), where a recording would have been low-pass filtered first."""
    if sr >= synth_sr:
        return synth_utterance(emotion, speaker, rng, sr, duration_s)
    import soxr

    n = int(round(max(float(duration_s), 0.5) * sr))
    x = soxr.resample(synth_utterance(emotion, speaker, rng, synth_sr, n / sr), synth_sr, sr, quality="HQ")
    return np.clip(np.pad(x[:n], (0, max(0, n - x.size))), -1, 1).astype(np.float32)


def synth_call(segments: Sequence[tuple[str, float]], speaker: SpeakerProfile, rng: np.random.Generator,
               sr: int = 8000, channels: int = 1, gap_s: float = 1.5, *, agent: SpeakerProfile | None = None,
               return_spans: bool = False, synth_sr: int = SYNTH_SR):
    """A call: the customer (``speaker``) says each ``(emotion, seconds)`` segment in turn, and a
    neutral agent speaks in the gaps between them (gap lengths 0.5-1.5 x ``gap_s``).

    Returns float32 ``(n,)`` for ``channels=1`` (both voices mixed) or ``(n, 2)`` for ``channels=2``
    (agent left, customer right); with ``return_spans`` also a list of dicts
    ``{start_s, end_s, emotion, role}`` giving where each turn lies. Voices are made at
    ``synth_sr`` and resampled to ``sr`` (see :func:`utterance_at`).
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    if agent is None:
        agent = voice("agent", "female" if speaker.sex == "male" else "male", rng)
    tracks: list[list[np.ndarray]] = [[], []]  # agent, customer
    spans: list[dict] = []
    t = 0

    def put(role: int, x: np.ndarray, emotion: str) -> None:
        nonlocal t
        tracks[role].append(x)
        tracks[1 - role].append(np.zeros_like(x))
        spans.append({"start_s": t / sr, "end_s": (t + len(x)) / sr, "emotion": emotion,
                      "role": ("agent", "customer")[role]})
        t += len(x)

    for i, (emotion, seconds) in enumerate(segments):
        put(0, utterance_at("neutral", agent, rng, sr, rng.uniform(0.5, 1.5) * gap_s, synth_sr), "neutral")
        # Long turns are spoken as 2-4 s phrases: one contour over minutes would drift off the scale.
        n_left = int(round(seconds * sr))
        phrases = []
        while n_left > 0:
            n = n_left if n_left < 5 * sr else int(rng.uniform(2, 4) * sr)
            phrases.append(utterance_at(emotion, speaker, rng, sr, n / sr, synth_sr)[:n])
            n_left -= n
        put(1, np.concatenate(phrases), emotion)
    agent_x, customer_x = (np.concatenate(tr) if tr else np.zeros(0, np.float32) for tr in tracks)
    out = np.stack([agent_x, customer_x], axis=1) if channels == 2 else np.clip(agent_x + customer_x, -1, 1)
    return (out, spans) if return_spans else out


def seeded(seed: int, key: str) -> np.random.Generator:
    # Keyed by name, not by order: filtering emotions or speakers leaves every other file unchanged.
    return np.random.default_rng([seed, zlib.crc32(key.encode())])
