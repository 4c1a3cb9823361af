"""Mono calls: score the customer, not the agent (``customer_channel: diarize | auto``).

A night that diarises runs a ``voices`` pass before scoring. Every unit's calls to diarise (all
of them with ``diarize``; the mono ones with ``auto``, whose stereo calls use
``stereo_channel``) are read and split into voices by the scoring actors
(``speakers.call_voices``), and each unit stages ``voices.json``, which marks it done for this
pass (a rerun resumes). The driver then decides, call by call, which voice is the agent's
(:func:`assign`): against the enrolled agents (``--agents DIR``), or against the voices of the
night's other calls (an agent's voice recurs). The scoring units then carry each call's role:
its windows cover the customer's turns only, and its row says ``customer_speech_s``,
``agent_speech_s``, ``diarization`` (the rule that decided), ``diarization_confidence`` and, when
diarisation failed (the call is then scored on the whole downmix), ``diarization_reason``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from typing import Any, Iterable

import numpy as np

from ser_ray.config import ScoreConfig
from ser_ray.console import logger
from ser_ray.score.backlog import Unit
from ser_ray.storage import Storage

log = logger("score")


def load_agents(cfg: ScoreConfig, storage: Storage) -> tuple[list[str], np.ndarray] | None:
    """``--agents DIR`` -> (agent names, voice prints), or None without it. An agent is a file
    directly in DIR (named by its stem) or a folder in it (named by the folder; its files
    joined). Every file must decode; a folder without recordings is an error."""
    if not cfg.agents:
        return None
    from ser_ray import audio, speakers
    from ser_ray.schema import AUDIO_EXTENSIONS
    from ser_ray.storage import relpath

    root = cfg.agents.rstrip("/")
    clips: dict[str, list[np.ndarray]] = {}
    for uri in storage.walk(root):
        rel = relpath(root, uri)
        if not rel.lower().endswith(tuple(AUDIO_EXTENSIONS)):
            continue
        parts = rel.split("/")
        name = parts[0] if len(parts) > 1 else parts[0].rsplit(".", 1)[0]
        try:
            decoded = audio.decode(storage.read_bytes(uri, max_bytes=256 * 2 ** 20), 600.0)
        except Exception as exc:
            raise ValueError(f"agents: {uri} is not a recording ser-ray can read ({exc})") from None
        y = audio.resample(audio.downmix(decoded.samples).astype(np.float32), decoded.sample_rate,
                           speakers.SPEAKER_RATE)
        clips.setdefault(name, []).append(y)
    if not clips:
        raise ValueError(f"agents: no recordings in {cfg.agents} (one file, or one folder of "
                         f"files, per agent; extensions {sorted(AUDIO_EXTENSIONS)})")
    settings = speakers.DiarizeSettings(**cfg.diarize)
    return speakers.enrol({n: (np.concatenate(ys), speakers.SPEAKER_RATE) for n, ys in clips.items()},
                          speakers.SpeakerEncoder("cpu"), settings)


@dataclasses.dataclass
class Voices:
    """What the voices pass found, call by call (``call_id`` -> ``speakers.call_voices``'s dict,
    or ``{"failed": reason}``), as units finish."""

    calls: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    units: int = 0

    def add(self, stats: dict[str, Any]) -> None:
        self.units += 1
        for entry in stats.get("voices", ()):
            self.calls[entry["call_id"]] = entry


def voice_scores(voices: Voices, bank: np.ndarray | None, neighbours: int
                 ) -> tuple[dict[str, list[float]], str | None]:
    """Each diarised call's voices -> how like an agent each is, and the rule: ``enrolled``
    (cosine to the nearest enrolled agent) or ``recurring`` (``speakers.recurrence`` over the
    night's voices; None when the night has too few calls for it)."""
    from ser_ray import speakers

    ids = [c for c, e in voices.calls.items() if len(e.get("centroids") or ()) == 2]
    if not ids:
        return {}, None
    if bank is not None:
        V = np.array([v for c in ids for v in voices.calls[c]["centroids"]], np.float32)
        s = speakers.enrolled_scores(V, bank)
        return {c: s[2 * k:2 * k + 2].tolist() for k, c in enumerate(ids)}, "enrolled"
    # Every voice of the night counts as a neighbour, one-voice calls' too.
    every = [(c, v) for c, e in voices.calls.items() for v in e.get("centroids") or ()]
    call_of = {c: k for k, c in enumerate(voices.calls)}
    all_v = np.array([v for _, v in every], np.float32)
    rec = speakers.recurrence(all_v, np.array([call_of[c] for c, _ in every]), neighbours)
    at, out = 0, {}
    for c, e in voices.calls.items():
        n = len(e.get("centroids") or ())
        if n == 2:
            out[c] = rec[at:at + 2].tolist()
        at += n
    if not np.isfinite(rec).any():
        return out, None
    return out, "recurring"


def assign(voices: Voices, bank: np.ndarray | None, neighbours: int
           ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The voices pass's findings -> (call id -> role for :class:`~ser_ray.score.backlog.Unit`
    ``roles``, what the run record says)."""
    from ser_ray import speakers

    scores, rule = voice_scores(voices, bank, neighbours)
    roles: dict[str, dict[str, Any]] = {}
    for call_id, found in voices.calls.items():
        if "failed" in found:
            roles[call_id] = {"method": "failed", "reason": found["failed"], "customer": None}
            continue
        if not found["centroids"]:  # no speech long enough to embed: scored as found
            roles[call_id] = {"method": "failed", "customer": None,
                              "reason": "no speech long enough to tell voices apart"}
            continue
        decided = speakers.decide(found, scores.get(call_id) if rule else None, rule or "")
        agent = decided["agent"]
        speech = found["speech_s"]
        roles[call_id] = {
            "method": decided["method"], "confidence": decided["confidence"],
            "customer": speakers.customer_turns(found, agent),
            "customer_speech_s": float(sum(s for v, s in enumerate(speech) if v != agent)),
            "agent_speech_s": float(speech[agent]) if agent is not None else 0.0}
    methods = Counter(r["method"] for r in roles.values())
    sure = [r["confidence"] for r in roles.values() if r.get("confidence") is not None]
    record = {"calls": len(roles), "methods": dict(methods),
              "confidence_median": float(np.median(sure)) if sure else None,
              "bank": "enrolled" if bank is not None else ("recurring" if rule else None),
              "agents_enrolled": int(len(bank)) if bank is not None else 0}
    return roles, record


def roles_key(roles: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(roles, sort_keys=True).encode()).hexdigest()[:12]


def with_roles(units: Iterable[Unit], roles: dict[str, dict[str, Any]]) -> Iterable[Unit]:
    """The night's units for scoring, each with its calls' roles. A unit's id gains a hash of
    them, so rows staged under other decisions (a rerun whose night decided otherwise) are not
    taken for these."""
    for unit in units:
        mine = {c.call_id: roles[c.call_id] for c in unit.calls if c.call_id in roles}
        if mine:
            unit = dataclasses.replace(unit, unit_id=f"{unit.unit_id}-v{roles_key(mine)[:8]}",
                                       roles=mine)
        yield unit
