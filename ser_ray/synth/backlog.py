"""A synthetic night of contact-centre calls: stereo or mono recordings of a caller and an agent
taking turns, with moods that rise and fall, a metadata table, and a few bad files (empty,
truncated, not audio, silent) that a night must quarantine rather than lose."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from ser_ray.synth.voice import (EMOTIONS, SYNTH_SR, SpeakerProfile, seeded, synth_call,
                                 utterance_at, voice)


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
        closing = utterance_at("neutral", agent, rng, sr, (n_target - n) / sr, SYNTH_SR)
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
    plan = seeded(seed, "backlog/plan")
    stereo = np.zeros(n_calls, bool)
    stereo[plan.permutation(n_calls)[:int(round(stereo_share * n_calls))]] = True
    starts = np.sort(plan.uniform(8 * 3600, 18 * 3600, len(call_ids)).astype(int))
    agent_of = plan.integers(0, len(BACKLOG_AGENTS), len(call_ids))
    queue_of = plan.integers(0, len(BACKLOG_QUEUES), len(call_ids))
    agents = [voice(f"agent-{a}", sex, seeded(seed, f"backlog/agent/{a}")) for a, sex in BACKLOG_AGENTS]

    def where(i: int) -> str:
        return (f"{call_ids[i]}.wav" if layout == "flat"
                else f"{BACKLOG_DATE}/{BACKLOG_QUEUES[queue_of[i]]}/{call_ids[i]}.wav")

    rows = []
    for i, kind in enumerate(kinds):
        rel, rng = where(i), seeded(seed, f"backlog/{call_ids[i]}")
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        row = {"call_id": call_ids[i], "path": rel, "kind": kind, "channels": None, "duration_s": None,
               "sr": None, "speaker": None, "negative": None, "spans": None}
        if i < n_calls or kind == "truncated":
            speaker = f"{speaker_prefix}{i + 1:03d}"
            caller = voice(speaker, ("female", "male")[i % 2], seeded(seed, f"backlog/{speaker}"))
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
