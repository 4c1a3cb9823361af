"""Synthetic emotional speech for demos and tests: a source-filter voice whose prosody carries emotion.

No real corpus ships with ser-ray (licences forbid it), so demos and tests run on audio made here
and written under the real corpora's naming schemes (see CORPORA.md). The voice is a Rosenberg
glottal pulse train with jitter, shimmer and aspiration noise, shaped by vowel formants that change
every syllable. Emotion lives only in prosody and voice quality (pitch level, range and contour,
speaking rate, loudness, breathiness, tension, tremor, creak), drawn afresh for every utterance, so
a classifier can learn it from MFCC / pitch / energy features but not from a single constant.
This is NOT speech: numbers measured on it say nothing about real corpora.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import soundfile as sf
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


def _voice(speaker_id: str, sex: str, rng: np.random.Generator) -> SpeakerProfile:
    female = sex == "female"
    return SpeakerProfile(speaker_id, sex, rng.uniform(175, 240) if female else rng.uniform(95, 140),
                          rng.uniform(1.12, 1.22) if female else rng.uniform(0.95, 1.05), rng.uniform(-3, 3))


def make_speakers(n: int, rng: np.random.Generator) -> list[SpeakerProfile]:
    """``n`` random voices ``spk01..``, alternating male and female."""
    return [_voice(f"spk{i + 1:02d}", ("male", "female")[i % 2], rng) for i in range(n)]


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


_SYNTH_SR = 48000  # voices of calls are made at this rate, then resampled (see _utterance_at)


def _utterance_at(emotion: str, speaker: SpeakerProfile, rng: np.random.Generator, sr: int, duration_s: float,
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
               return_spans: bool = False, synth_sr: int = _SYNTH_SR):
    """A call: the customer (``speaker``) says each ``(emotion, seconds)`` segment in turn, and a
    neutral agent speaks in the gaps between them (gap lengths 0.5-1.5 x ``gap_s``).

    Returns float32 ``(n,)`` for ``channels=1`` (both voices mixed) or ``(n, 2)`` for ``channels=2``
    (agent left, customer right); with ``return_spans`` also a list of dicts
    ``{start_s, end_s, emotion, role}`` giving where each turn lies. Voices are made at
    ``synth_sr`` and resampled to ``sr`` (see :func:`_utterance_at`).
    """
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    if agent is None:
        agent = _voice("agent", "female" if speaker.sex == "male" else "male", rng)
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
        put(0, _utterance_at("neutral", agent, rng, sr, rng.uniform(0.5, 1.5) * gap_s, synth_sr), "neutral")
        # Long turns are spoken as 2-4 s phrases: one contour over minutes would drift off the scale.
        n_left = int(round(seconds * sr))
        phrases = []
        while n_left > 0:
            n = n_left if n_left < 5 * sr else int(rng.uniform(2, 4) * sr)
            phrases.append(_utterance_at(emotion, speaker, rng, sr, n / sr, synth_sr)[:n])
            n_left -= n
        put(1, np.concatenate(phrases), emotion)
    agent_x, customer_x = (np.concatenate(tr) if tr else np.zeros(0, np.float32) for tr in tracks)
    out = np.stack([agent_x, customer_x], axis=1) if channels == 2 else np.clip(agent_x + customer_x, -1, 1)
    return (out, spans) if return_spans else out


# --- corpus layouts ---------------------------------------------------------------------------

class _Item(NamedTuple):
    path: str
    speaker: str  # native id as the corpus writes it ("01", "DC", "Ses01F")
    sex: str
    emotion: str  # canonical
    intensity: float = 1.0


@dataclass(frozen=True)
class _Layout:
    sr: int
    n_speakers: int
    speakers: Sequence[tuple[str, str]]  # every (native id, sex) in corpus order
    codes: dict[str, str]                # canonical emotion -> code in the names
    max_per_emotion: int
    plan: Callable[[Sequence[tuple[str, str]], int, list[str], dict[str, str]], list[_Item]]
    extras: Callable[[list[_Item], list[float]], dict[str, str]] | None = None


def _ravdess(speakers, per, emotions, codes):
    items = []
    for actor, sex in speakers:
        for emo in emotions:
            # RAVDESS has no strong-intensity neutral, so neutral has 4 takes where others have 8.
            takes = [(i, s, r) for r in (1, 2) for s in (1, 2) for i in (1, 2) if not (emo == "neutral" and i == 2)]
            items += [_Item(f"Actor_{actor}/03-01-{codes[emo]}-{i:02d}-{s:02d}-{r:02d}-{actor}.wav", actor, sex,
                            emo, 1.0 if i == 1 else 1.4) for i, s, r in takes[:per]]
    return items


_CREMAD_SENTENCES = ("IEO", "DFA", "IOM", "ITH", "ITS", "IWL", "IWW", "MTI", "TAI", "TIE", "TSI", "WSI")


def _cremad(speakers, per, emotions, codes):
    # Only IEO was recorded at graded levels; HI stands for them (with exaggerated prosody).
    return [_Item(f"AudioWAV/{a}_{s}_{codes[e]}_{'HI' if s == 'IEO' and e != 'neutral' else 'XX'}.wav", a, sex, e,
                  1.4 if s == "IEO" and e != "neutral" else 1.0)
            for a, sex in speakers for e in emotions for s in _CREMAD_SENTENCES[:per]]


def _cremad_extras(items, durations):
    actors = dict.fromkeys((it.speaker, it.sex) for it in items)
    rows = [f"{a},{20 + int(a) % 40},{sex.title()},Caucasian,Not Hispanic" for a, sex in actors]
    return {"VideoDemographics.csv": "\n".join(["ActorID,Age,Sex,Race,Ethnicity", *rows]) + "\n"}


_TESS_WORDS = ("back", "bar", "base", "bath", "bean", "beg", "bite", "boat", "bone", "book",
               "bought", "burn", "cab", "calm", "came", "cause", "chain", "chair", "chalk", "chat")


def _tess(speakers, per, emotions, codes):
    return [_Item(f"{s}_{codes[e]}/{s}_{w}_{codes[e]}.wav", s, sex, e)
            for s, sex in speakers for e in emotions for w in _TESS_WORDS[:per]]


def _savee(speakers, per, emotions, codes):
    return [_Item(f"{s}_{codes[e]}{n:02d}.wav", s, sex, e)
            for s, sex in speakers for e in emotions for n in range(1, per + 1)]


_EMODB_TEXTS = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")


def _emodb(speakers, per, emotions, codes):
    return [_Item(f"wav/{s}{t}{codes[e]}a.wav", s, sex, e)
            for s, sex in speakers for e in emotions for t in _EMODB_TEXTS[:per]]


def _iemocap(speakers, per, emotions, codes):
    items, counters = [], {}
    for spk, sex in speakers:
        session = int(spk[3:5])
        # Two dialogs a session, as in the corpus: one improvised, one scripted; both actors in each.
        dialogs = (f"Ses{session:02d}F_impro01", f"Ses{session:02d}M_script01_1")
        for e in emotions:
            for j in range(per):
                d = dialogs[j % 2]
                n = counters[d, sex] = counters.get((d, sex), -1) + 1
                utt = f"{d}_{sex[0].upper()}{n:03d}"
                items.append(_Item(f"Session{session}/sentences/wav/{d}/{utt}.wav", spk, sex, e))
    return items


_IEMOCAP_VAD = {"neutral": (3.0, 2.5, 2.5), "happy": (4.0, 3.5, 3.0), "excited": (4.0, 4.0, 3.5),
                "angry": (1.5, 4.0, 4.0), "sad": (2.0, 2.0, 2.0), "frustrated": (2.0, 3.5, 3.5),
                "surprised": (3.5, 4.0, 3.0), "fearful": (2.0, 3.5, 2.0), "disgust": (2.0, 3.0, 3.0)}


def _iemocap_extras(items, durations):
    files: dict[str, list[str]] = {}
    clock: dict[str, float] = {}
    for it, dur in zip(items, durations):
        session, _, _, dialog, name = it.path.split("/")
        key = f"{session}/dialog/EmoEvaluation/{dialog}.txt"
        start = clock.get(key, 1.0)
        clock[key] = start + dur + 0.5
        code, (v, a, d) = _IEMOCAP_CODES[it.emotion], _IEMOCAP_VAD[it.emotion]
        # Evaluator lines follow each turn in the real files; parsers must skip them.
        files.setdefault(key, ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n"]).append(
            f"[{start:.4f} - {start + dur:.4f}]\t{name[:-4]}\t{code}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n"
            f"C-E1:\t{it.emotion.title()};\t()\nA-E1:\tval {v:.0f}; act {a:.0f}; dom  {d:.0f};\t()\n")
    return {k: "\n".join(v) for k, v in files.items()}


_IEMOCAP_CODES = {"neutral": "neu", "happy": "hap", "excited": "exc", "angry": "ang", "sad": "sad",
                  "frustrated": "fru", "surprised": "sur", "fearful": "fea", "disgust": "dis"}
_EMODB_MALE = {"03", "10", "11", "12", "15"}

LAYOUTS: dict[str, _Layout] = {
    "ravdess": _Layout(48000, 4, [(f"{a:02d}", "male" if a % 2 else "female") for a in range(1, 25)],
                       dict(zip(EMOTIONS, ("01", "02", "03", "04", "05", "06", "07", "08"))), 8, _ravdess),
    "cremad": _Layout(16000, 4, [(str(a), "male" if a % 2 else "female") for a in range(1001, 1092)],
                      {"neutral": "NEU", "happy": "HAP", "sad": "SAD", "angry": "ANG", "fearful": "FEA",
                       "disgust": "DIS"}, len(_CREMAD_SENTENCES), _cremad, _cremad_extras),
    "tess": _Layout(24414, 2, [("OAF", "female"), ("YAF", "female")],
                    {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry", "fearful": "fear",
                     "disgust": "disgust", "surprised": "ps"}, len(_TESS_WORDS), _tess),
    "savee": _Layout(44100, 4, [(s, "male") for s in ("DC", "JE", "JK", "KL")],
                     {"neutral": "n", "happy": "h", "sad": "sa", "angry": "a", "fearful": "f", "disgust": "d",
                      "surprised": "su"}, 15, _savee),
    "emodb": _Layout(16000, 4, [(s, "male" if s in _EMODB_MALE else "female")
                                for s in ("03", "08", "10", "09", "11", "13", "12", "14", "15", "16")],
                     {"neutral": "N", "happy": "F", "sad": "T", "angry": "W", "fearful": "A", "disgust": "E",
                      "boredom": "L"}, len(_EMODB_TEXTS), _emodb),
    # IEMOCAP counts speakers two per session (one female, one male actor).
    "iemocap": _Layout(16000, 4, [(f"Ses{s:02d}{x}", sex) for s in range(1, 6) for x, sex in (("F", "female"),
                                                                                              ("M", "male"))],
                       _IEMOCAP_CODES, 50, _iemocap, _iemocap_extras),
}


def _seeded(seed: int, key: str) -> np.random.Generator:
    # Keyed by name, not by order: filtering emotions or speakers leaves every other file unchanged.
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def synthesize_corpus(layout: str, output_dir: str | Path, *, n_speakers: int | None = None,
                      per_emotion: int = 2, emotions: Sequence[str] | None = None, sr: int | None = None,
                      seed: int = 0) -> list[dict]:
    """Write a synthetic corpus named exactly as ``layout`` (a key of :data:`LAYOUTS`) under
    ``output_dir``: 16-bit PCM WAVs at the corpus's native rate (or ``sr``), plus its label files
    (CREMA-D ``VideoDemographics.csv``, IEMOCAP ``EmoEvaluation/*.txt``).

    ``per_emotion`` files per speaker and emotion; ``emotions`` keeps only those canonical labels
    (labels the corpus lacks are ignored). IEMOCAP ``n_speakers`` must be even (two per session);
    TESS has two speakers. The same arguments give byte-identical files. Returns one row per WAV:
    ``{path (relative, '/'-separated), speaker ("<layout>:<id>"), sex, emotion}``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    unknown = sorted(set(emotions or ()) - set(EMOTIONS))
    if unknown:
        raise ValueError(f"unknown emotions {unknown}; canonical labels are {', '.join(EMOTIONS)}")
    wanted = [e for e in spec.codes if emotions is None or e in emotions]
    if not wanted:
        raise ValueError(f"none of {list(emotions or ())} occurs in {layout}; it has {', '.join(spec.codes)}")
    n = spec.n_speakers if n_speakers is None else n_speakers
    if not 1 <= n <= len(spec.speakers) or (layout == "iemocap" and n % 2):
        raise ValueError(f"{layout} takes n_speakers from 1 to {len(spec.speakers)}"
                         f"{' (even: two per session)' if layout == 'iemocap' else ''}, got {n}")
    if not 1 <= per_emotion <= spec.max_per_emotion:
        raise ValueError(f"{layout} takes per_emotion from 1 to {spec.max_per_emotion}, got {per_emotion}")

    rate, root = sr or spec.sr, Path(output_dir)
    speakers = spec.speakers[:n]
    voices = {sid: _voice(sid, sex, _seeded(seed, f"{layout}/{sid}")) for sid, sex in speakers}
    items = spec.plan(speakers, per_emotion, wanted, spec.codes)
    rows, durations = [], []
    for it in items:
        audio = synth_utterance(it.emotion, voices[it.speaker], _seeded(seed, it.path), rate, intensity=it.intensity)
        path = root / it.path
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, rate, subtype="PCM_16", format="WAV")
        durations.append(len(audio) / rate)
        rows.append({"path": it.path, "speaker": f"{layout}:{it.speaker}", "sex": it.sex, "emotion": it.emotion})
    for rel, text in (spec.extras(items, durations) if spec.extras else {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return rows


# --- a backlog of recorded calls, for the scoring job ------------------------------------------

BACKLOG_DATE = "2026-11-22"
BACKLOG_QUEUES = ("billing", "support", "sales")
# Agents are a small fixed pool, as in a real team: the metadata's agent is the voice in the call.
BACKLOG_AGENTS = (("alice", "female"), ("bruno", "male"), ("chen", "male"), ("dara", "female"))
BACKLOG_BAD_KINDS = ("empty", "truncated", "not_audio", "silent")
_TURN_S = (5.0, 25.0)   # customer turn lengths
_AGENT_GAP_S = 2.5      # agent turns between customer turns last 0.5-1.5 x this
_NOT_AUDIO = (b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n"
              b"<body><h1>Forbidden</h1><p>The recording export link has expired.</p></body></html>\n")


def _split_bounded(total: float, m: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """``m`` random lengths summing to ``total``, each in [lo, hi] (clipped when that is infeasible)."""
    w = rng.uniform(0.5, 1.5, m)
    x = total * w / w.sum()
    for _ in range(2 * m + 1):  # clip, then spread what clipping moved over the parts still free
        x = np.clip(x, lo, hi)
        diff = total - x.sum()
        free = (x < hi) if diff > 0 else (x > lo)
        if abs(diff) < 1e-9 or not free.any():
            break
        x[free] += diff / free.sum()
    return x


def _plan_turns(mood: str, total_s: float, rng: np.random.Generator) -> list[tuple[str, float]]:
    """Customer ``(emotion, seconds)`` turns for a call of about ``total_s``: 70-80 % of the
    customer's time in ``mood``, the rest neutral (opening with a neutral turn), and room left for
    agent turns (at most 1.5 x ``_AGENT_GAP_S`` each) plus a closing agent turn of 0.5 s or more."""
    lo, hi = _TURN_S
    per_turn_agent = 1.5 * _AGENT_GAP_S
    k = max(2, int(round((total_s - 0.5) / ((lo + hi) / 2 + per_turn_agent))))
    customer_s = total_s - 0.5 - k * per_turn_agent
    neutral_s = rng.uniform(0.2, 0.3) * customer_s
    k_neutral = min(max(1, int(round(k * neutral_s / customer_s))), k - 1)
    neutral = _split_bounded(neutral_s, k_neutral, rng, lo, hi)
    moody = _split_bounded(customer_s - neutral_s, k - k_neutral, rng, lo, hi)
    rest = [("neutral", s) for s in neutral[1:]] + [(mood, s) for s in moody]
    return [("neutral", float(neutral[0]))] + [(e, float(s)) for e, s in (rest[i] for i in rng.permutation(len(rest)))]


def _backlog_call(mood: str, caller: SpeakerProfile, agent: SpeakerProfile, total_s: float, channels: int,
                  sr: int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One call of exactly ``round(total_s * sr)`` samples: planned turns, then the agent closes."""
    audio, spans = synth_call(_plan_turns(mood, total_s, rng), caller, rng, sr, channels, _AGENT_GAP_S,
                              agent=agent, return_spans=True)
    n_target, n = int(round(total_s * sr)), len(audio)
    if n_target - n >= int(0.5 * sr):
        closing = _utterance_at("neutral", agent, rng, sr, (n_target - n) / sr, _SYNTH_SR)
        tail = np.stack([closing, np.zeros_like(closing)], axis=1) if channels == 2 else closing
        spans.append({"start_s": n / sr, "end_s": n_target / sr, "emotion": "neutral", "role": "agent"})
        audio = np.concatenate([audio, tail])
    elif n_target > n:  # too short for an utterance: line noise-free dead air
        audio = np.concatenate([audio, np.zeros((n_target - n,) + audio.shape[1:], np.float32)])
    else:  # only when turn bounds could not be met (very short calls): the recording cuts off
        audio = audio[:n_target]
        spans = [dict(s, end_s=min(s["end_s"], n_target / sr)) for s in spans if s["start_s"] < n_target / sr]
    return audio, spans


def synthesize_backlog(output_dir: str | Path, *, n_calls: int = 8, seed: int = 0,
                       minutes: tuple[float, float] = (1.0, 3.0), sr: int = 8000, stereo_share: float = 0.5,
                       moods: Sequence[str] = ("angry", "sad", "calm", "neutral"), bad: bool = True,
                       speaker_prefix: str = "caller", layout: str = "flat", metadata: bool = True):
    """Write a synthetic backlog of recorded contact-centre calls under ``output_dir``.

    ``n_calls`` good calls, 16-bit PCM WAV at ``sr``: call ``i`` has mood ``moods[i % len(moods)]``
    (70-80 % of the customer's speech in it, the rest neutral; customer turns 5-25 s, a neutral
    agent between them), a length drawn uniformly from ``minutes``, and its own caller voice
    ``<speaker_prefix>NNN`` (sexes alternating; never make_speakers' ``spk..`` ids). A share
    ``stereo_share`` of them (rounded) are 2-channel, agent left and customer right; the rest are
    mono mixes. With ``bad``, four more files: ``empty`` (0 bytes), ``truncated`` (WAV header
    claims more audio than the file holds), ``not_audio`` (an HTML page named .wav) and ``silent``
    (60 s stereo: 10 s digital zero, then -80 dBFS noise).

    ``layout="flat"`` writes ``<call_id>.wav``; ``"dated"`` writes
    ``2026-11-22/<queue>/<call_id>.wav``. Beside ``output_dir`` (never inside it, so a scoring
    run over the folder sees only recordings) it writes ``<name>-truth.csv`` (the returned table)
    and, with ``metadata``, ``<name>-metadata.csv``: call_id, started_at (ISO, on 2026-11-22),
    agent, queue, for every call plus one call that has no recording.

    Returns a DataFrame, one row per written file: call_id, path (relative to ``output_dir``,
    '/'-separated), kind (the mood, or the bad kind), channels, duration_s, sr (channels and sr
    <NA> for empty and not_audio; truncated gives the seconds actually present), speaker,
    negative (the mood's urgency weight > 0; <NA> for bad files) and spans (JSON list of
    ``{start_s, end_s, emotion, role}`` turns; None for bad files). The same seed gives the same
    bytes.
    """
    import io
    import json

    import pandas as pd

    from ser_ray.urgency import DEFAULT_WEIGHTS

    unknown = sorted(set(moods) - set(EMOTIONS))
    if not moods or unknown:
        raise ValueError(f"moods must be canonical emotions ({', '.join(EMOTIONS)}); got {list(moods)}")
    if layout not in ("flat", "dated"):
        raise ValueError(f"layout must be 'flat' or 'dated', got {layout!r}")
    lo_min, hi_min = minutes
    if not 0.25 <= lo_min <= hi_min:
        raise ValueError(f"minutes must be (low, high) with 0.25 <= low <= high, got {minutes}")
    if not 0.0 <= stereo_share <= 1.0:
        raise ValueError(f"stereo_share must lie in [0, 1], got {stereo_share}")
    if n_calls < 0 or sr < 4000:
        raise ValueError(f"need n_calls >= 0 and sr >= 4000 Hz, got n_calls={n_calls}, sr={sr}")
    if speaker_prefix.lower().startswith("spk"):
        raise ValueError(f"speaker_prefix {speaker_prefix!r} would look like make_speakers' spk.. ids; "
                         "backlog callers must be other speakers than a synthetic training corpus")

    root = Path(output_dir)
    name = root.resolve().name
    kinds = [moods[i % len(moods)] for i in range(n_calls)] + (list(BACKLOG_BAD_KINDS) if bad else [])
    call_ids = [f"call-{i + 1:04d}" for i in range(len(kinds) + 1)]  # the last one has no recording

    # The plan for the whole backlog comes from one stream; each call's audio from its own.
    plan = _seeded(seed, "backlog/plan")
    stereo = np.zeros(n_calls, bool)
    stereo[plan.permutation(n_calls)[:int(round(stereo_share * n_calls))]] = True
    starts = np.sort(plan.uniform(8 * 3600, 18 * 3600, len(call_ids)).astype(int))
    agent_of = plan.integers(0, len(BACKLOG_AGENTS), len(call_ids))
    queue_of = plan.integers(0, len(BACKLOG_QUEUES), len(call_ids))
    agents = [_voice(f"agent-{a}", sex, _seeded(seed, f"backlog/agent/{a}")) for a, sex in BACKLOG_AGENTS]

    def where(i: int) -> str:
        return (f"{call_ids[i]}.wav" if layout == "flat"
                else f"{BACKLOG_DATE}/{BACKLOG_QUEUES[queue_of[i]]}/{call_ids[i]}.wav")

    rows = []
    for i, kind in enumerate(kinds):
        rel, rng = where(i), _seeded(seed, f"backlog/{call_ids[i]}")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        row = {"call_id": call_ids[i], "path": rel, "kind": kind, "channels": None, "duration_s": None,
               "sr": None, "speaker": None, "negative": None, "spans": None}
        if i < n_calls or kind == "truncated":
            speaker = f"{speaker_prefix}{i + 1:03d}"
            caller = _voice(speaker, ("female", "male")[i % 2], _seeded(seed, f"backlog/{speaker}"))
            agent = agents[agent_of[i]]
            row["speaker"] = speaker
        if i < n_calls:
            channels = 2 if stereo[i] else 1
            total_s = rng.uniform(lo_min, hi_min) * 60
            audio, spans = _backlog_call(kind, caller, agent, total_s, channels, sr, rng)
            sf.write(path, audio, sr, subtype="PCM_16", format="WAV")
            row.update(channels=channels, duration_s=len(audio) / sr, sr=sr, negative=DEFAULT_WEIGHTS[kind] > 0,
                       spans=json.dumps([dict(s, start_s=round(s["start_s"], 6), end_s=round(s["end_s"], 6))
                                         for s in spans]))
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "not_audio":
            path.write_bytes(_NOT_AUDIO)
        elif kind == "truncated":  # an upload cut off at 60 %: the header still declares all of it
            audio = synth_call([("neutral", 12.0), ("angry", 15.0)], caller, rng, sr, 1, _AGENT_GAP_S, agent=agent)
            buf = io.BytesIO()
            sf.write(buf, audio, sr, subtype="PCM_16", format="WAV")
            data = buf.getvalue()
            body = data.find(b"data") + 8
            cut = body + ((len(data) - body) * 3 // 5) // 2 * 2
            path.write_bytes(data[:cut])
            row.update(channels=1, duration_s=(cut - body) / 2 / sr, sr=sr)
        elif kind == "silent":  # a line that connected but carried nothing: dead air, then faint hiss
            n, n_zero = 60 * sr, 10 * sr
            audio = np.zeros((n, 2), np.float32)
            audio[n_zero:] = rng.normal(0, 10 ** (-80 / 20), (n - n_zero, 2))
            sf.write(path, audio, sr, subtype="PCM_16", format="WAV")
            row.update(channels=2, duration_s=n / sr, sr=sr)
        rows.append(row)

    table = pd.DataFrame(rows, columns=["call_id", "path", "kind", "channels", "duration_s", "sr", "speaker",
                                        "negative", "spans"])
    table = table.astype({"channels": "Int64", "sr": "Int64", "duration_s": "float64", "negative": "boolean"})
    table.to_csv(root.parent / f"{name}-truth.csv", index=False)
    if metadata:
        pd.DataFrame({
            "call_id": call_ids,
            "started_at": [f"{BACKLOG_DATE}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in starts],
            "agent": [BACKLOG_AGENTS[a][0] for a in agent_of],
            "queue": [BACKLOG_QUEUES[q] for q in queue_of],
        }).to_csv(root.parent / f"{name}-metadata.csv", index=False)
    return table
