"""Synthetic corpora named exactly as the real ones (``LAYOUTS``: RAVDESS, CREMA-D, TESS, SAVEE,
EmoDB, IEMOCAP), with their label files, so every corpus reader and the whole learning plane
can be run without the real data (which no licence lets ser-ray ship)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import soundfile as sf

from ser_ray.synth.voice import EMOTIONS, seeded, synth_utterance, voice


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
    voices = {sid: voice(sid, sex, seeded(seed, f"{layout}/{sid}")) for sid, sex in speakers}
    items = spec.plan(speakers, per_emotion, wanted, spec.codes)
    rows, durations = [], []
    for it in items:
        audio = synth_utterance(it.emotion, voices[it.speaker], seeded(seed, it.path), rate, intensity=it.intensity)
        path = root / it.path
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, rate, subtype="PCM_16", format="WAV")
        durations.append(len(audio) / rate)
        rows.append({"path": it.path, "speaker": f"{layout}:{it.speaker}", "sex": it.sex, "emotion": it.emotion})
    for rel, text in (spec.extras(items, durations) if spec.extras else {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return rows
