"""Who speaks when on a mono call, and which of its voices is the agent's.

A mono recording mixes the agent and the customer on one channel. :func:`call_voices` splits a
call's speech into pieces (``piece_s`` long, within VAD segments), embeds each with a speaker
encoder, and clusters the pieces into two voices (average-linkage agglomerative clustering on
cosine distance, after centring on the call's mean), or keeps one voice when the two clusters'
centroids are nearly the same voice (``same_voice``) or one of them holds less than ``min_share``
of the speech. Adjacent pieces of one voice merge into turns.

Which voice is the agent's is then decided against a bank of agent voices (:func:`decide`),
relatively, so no absolute similarity threshold is needed: the agent is the call's voice that
is the more like the bank. The bank is either

- ``enrolled``: a few seconds of each agent's voice (``--agents DIR``, :func:`enrol`), or
- ``recurring``: the voices of the other calls of the night. Agents take many calls and
  customers rarely more than one, so the agent's voice is the one whose ``neighbours`` most
  similar voices in *other* calls are the more similar (:func:`recurrence`).

A call with one voice is the customer's (``one_voice``): a call only an agent speaks in is not
told apart. With no bank (a night of fewer than ``neighbours + 1`` calls and no enrolled agents)
the voice heard first is the agent's (``first_speaker``: agents answer), with no confidence.

Speaker embeddings: the GE2E voice encoder of ``resemblyzer`` (256-d, trained on speaker
verification), whose weights ship inside its wheel: nothing is fetched at run time, and its file
is loaded with ``torch.load``'s default ``weights_only``. It reads 16 kHz audio. On EmoDB's
535 utterances it tells same-speaker pairs from different-speaker pairs with an AUC of 0.83
(whisper-base's best layer: 0.64; MFCC statistics: 0.68); emotion moves it, which is why the
agent decision compares voices rather than thresholds them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ser_ray import vad

SPEAKER_RATE = 16000
METHODS = ("enrolled", "recurring", "first_speaker", "one_voice", "failed")


@dataclass(frozen=True)
class DiarizeSettings:
    """How calls are split into voices (``ScoreConfig.diarize``)."""

    piece_s: float = 1.5        # speech is embedded in pieces of this length
    min_piece_s: float = 0.5    # shorter speech stretches are not embedded (their voice is the nearer turn's)
    same_voice: float = 0.95    # two clusters whose centroids are this similar are one voice
    min_share: float = 0.1      # ... as is a split whose smaller voice has less of the speech
    neighbours: int = 3         # recurring: a voice's this many most similar voices in other calls

    def __post_init__(self):
        if not (self.piece_s > 0 and 0 < self.min_piece_s <= self.piece_s):
            raise ValueError(f"diarize: need piece_s > 0 and 0 < min_piece_s <= piece_s, got "
                             f"{self.piece_s}, {self.min_piece_s}")
        if not (0 < self.same_voice <= 1 and 0 <= self.min_share < 0.5):
            raise ValueError(f"diarize: need 0 < same_voice <= 1 and 0 <= min_share < 0.5, got "
                             f"{self.same_voice}, {self.min_share}")
        if self.neighbours < 1:
            raise ValueError(f"diarize: neighbours={self.neighbours} must be >= 1")


def _quiet_import():
    with warnings.catch_warnings():  # resemblyzer -> webrtcvad imports pkg_resources, which warns
        warnings.simplefilter("ignore")
        from resemblyzer import VoiceEncoder
        from resemblyzer.audio import wav_to_mel_spectrogram
    return VoiceEncoder, wav_to_mel_spectrogram


class SpeakerEncoder:
    """resemblyzer's GE2E voice encoder on ``device``: 16 kHz pieces -> unit-length embeddings."""

    def __init__(self, device: str = "cpu"):
        VoiceEncoder, self._mel = _quiet_import()
        self.model = VoiceEncoder(device, verbose=False).eval()
        self.device = device

    def embed(self, pieces: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """16 kHz float pieces -> ``(n, 256)`` embeddings; pieces of one length batch together."""
        import torch

        out = np.zeros((len(pieces), 256), np.float32)
        mels = [self._mel(np.asarray(p, np.float32)) for p in pieces]
        by_len: dict[int, list[int]] = {}
        for i, m in enumerate(mels):
            by_len.setdefault(len(m), []).append(i)
        with torch.inference_mode():
            for idx in by_len.values():
                for k in range(0, len(idx), batch_size):
                    part = idx[k:k + batch_size]
                    x = torch.from_numpy(np.stack([mels[i] for i in part])).to(self.device)
                    out[part] = self.model(x).cpu().numpy()
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _two_voices(E: np.ndarray) -> np.ndarray:
    """Pieces' embeddings -> a 0/1 voice per piece (call-centred average-linkage clustering)."""
    from sklearn.cluster import AgglomerativeClustering

    X = E - E.mean(axis=0)
    flat = np.linalg.norm(X, axis=1) < 1e-9  # a piece exactly at the call's mean
    if flat.all():  # every piece the same: one voice
        return np.zeros(len(E), int)
    X[flat] = 1e-9 * E[flat]
    return AgglomerativeClustering(n_clusters=2, metric="cosine", linkage="average").fit_predict(_unit(X))


def _merge(pieces: list[tuple[float, float]], voice: Sequence[int]) -> list[list]:
    """Pieces in time order with a voice each -> turns ``[start, end, voice]`` (adjacent pieces of
    one voice merged)."""
    turns: list[list] = []
    for (s, e), v in sorted(zip(pieces, (int(v) for v in voice))):
        if turns and turns[-1][2] == v and s - turns[-1][1] < 1e-6:
            turns[-1][1] = max(turns[-1][1], e)
        else:
            turns.append([float(s), float(e), v])
    return turns


def call_voices(y: np.ndarray, sr: int, speech: Sequence[tuple[float, float]], encoder: SpeakerEncoder,
                settings: DiarizeSettings = DiarizeSettings()) -> dict[str, Any]:
    """One call's mono signal and speech segments -> its voices, JSON-ready::

        {"turns": [[start_s, end_s, voice], ...], "centroids": [[256 floats], ...],
         "speech_s": [seconds per voice], "first": voice heard first, "separation": float | None}

    ``separation`` is 1 - the cosine of the two voices' centroids (None with one voice)."""
    from ser_ray import audio

    pieces = vad.windows(speech, settings.piece_s, None, settings.min_piece_s)
    if not pieces:
        return {"turns": [], "centroids": [], "speech_s": [], "first": None, "separation": None}
    y16 = audio.resample(np.asarray(y, np.float32), sr, SPEAKER_RATE) if sr != SPEAKER_RATE else y
    E = encoder.embed([y16[round(s * SPEAKER_RATE):round(e * SPEAKER_RATE)] for s, e in pieces])
    length = np.array([e - s for s, e in pieces])
    voice = np.zeros(len(pieces), int)
    separation = None
    if len(pieces) >= 2 and (split := _two_voices(E)).any():
        C = _unit(np.stack([E[split == k].mean(axis=0) for k in (0, 1)]))
        share = min(length[split == k].sum() for k in (0, 1)) / length.sum()
        if float(C[0] @ C[1]) < settings.same_voice and share >= settings.min_share:
            voice, separation = split, 1.0 - float(C[0] @ C[1])
    turns = _merge(pieces, voice)
    first = turns[0][2]
    if first != 0:  # voice 0 is the one heard first
        voice, turns = 1 - voice, [[s, e, 1 - v] for s, e, v in turns]
        first = 0
    k = int(voice.max()) + 1
    centroids = _unit(np.stack([E[voice == v].mean(axis=0) for v in range(k)]))
    # seconds from the turns: a segment's last piece may overlap the one before it
    return {"turns": turns, "centroids": centroids.round(6).tolist(),
            "speech_s": [float(sum(e - s for s, e, w in turns if w == v)) for v in range(k)],
            "first": first, "separation": separation}


def recurrence(voices: np.ndarray, call_of: np.ndarray, neighbours: int) -> np.ndarray:
    """Every voice of the night (``(n, d)`` unit vectors; ``call_of`` its call) -> the mean
    cosine of its ``neighbours`` most similar voices in other calls (-inf where fewer exist).
    An agent's voice recurs in many calls, so its score is high; a customer's is not."""
    n = len(voices)
    out = np.full(n, -np.inf)
    if n - 1 < neighbours:
        return out
    V = _unit(voices - voices.mean(axis=0))  # centred on the night: what sets voices apart
    for a in range(0, n, 2048):
        S = V[a:a + 2048] @ V.T
        S[call_of[a:a + 2048, None] == call_of[None, :]] = -np.inf
        top = -np.sort(-S, axis=1)[:, :neighbours]  # -inf where a voice has too few others
        out[a:a + 2048] = top.mean(axis=1)
    return out


def decide(found: dict[str, Any], score: Sequence[float] | None, method: str) -> dict[str, Any]:
    """One call's voices and each voice's likeness to the agent bank (``score``, None: no bank)
    -> ``{"agent": voice | None, "method", "confidence"}``. ``method`` names the bank
    (``enrolled`` or ``recurring``)."""
    k = len(found["centroids"])
    if k == 1:
        return {"agent": None, "method": "one_voice", "confidence": None}
    if score is None or not all(math.isfinite(s) for s in score):
        return {"agent": found["first"], "method": "first_speaker", "confidence": None}
    agent = int(np.argmax(score))
    return {"agent": agent, "method": method,
            "confidence": float(min(max(abs(score[0] - score[1]), 0.0), 1.0))}


def customer_turns(found: dict[str, Any], agent: int | None) -> list[tuple[float, float]]:
    """The customer's turns: every turn not of the ``agent`` voice."""
    return [(s, e) for s, e, v in found["turns"] if v != agent]


def enrolled_scores(centroids: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Each voice's cosine to its most similar enrolled agent voice."""
    return (_unit(np.asarray(centroids)) @ _unit(np.asarray(bank)).T).max(axis=1)


def enrol(clips: dict[str, tuple[np.ndarray, int]], encoder: SpeakerEncoder,
          settings: DiarizeSettings = DiarizeSettings()) -> tuple[list[str], np.ndarray]:
    """``{agent: (mono signal, rate)}`` -> (agent names, ``(n, 256)`` voice prints): each the
    mean embedding of its clip's speech pieces (the energy VAD finds the speech)."""
    from ser_ray import audio

    names, prints = [], []
    for name, (y, sr) in sorted(clips.items()):
        y16 = audio.resample(np.asarray(y, np.float32), sr, SPEAKER_RATE)
        speech = vad.detect(y16, SPEAKER_RATE, "energy") or [(0.0, len(y16) / SPEAKER_RATE)]
        pieces = vad.windows(speech, settings.piece_s, None, settings.min_piece_s)
        if not pieces:
            raise ValueError(f"agents: {name} holds less than {settings.min_piece_s} s of speech")
        E = encoder.embed([y16[round(s * SPEAKER_RATE):round(e * SPEAKER_RATE)] for s, e in pieces])
        names.append(name)
        prints.append(_unit(E.mean(axis=0)))
    return names, np.stack(prints)
