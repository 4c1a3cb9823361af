"""The read side of scoring: a unit's calls -> call rows and, per readable call, its conditioned
signal and analysis windows over speech (read, decode, pick the channel, resample, VAD)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ser_ray import vad
from ser_ray.schema import NO_SPEECH, error_detail, internal_error
from ser_ray.score.tables import SUMMARY_FLOATS
from ser_ray.score.backlog import Call, Unit
from ser_ray.score.settings import WorkerSettings
from ser_ray.storage import NotAFile, OutsideRoot, Storage, TooLarge




class CallReader:
    """The CPU side of scoring: a unit's calls -> call rows and, per readable call, its
    conditioned signal and analysis windows over speech (read, decode, channel, resample, VAD).

    ``settings``: the run's :class:`~ser_ray.score.settings.WorkerSettings`; ``sample_rate`` the rate the model
    reads (the transcripts stage reads at Whisper's 16 kHz with the same code).
    """

    def __init__(self, settings: WorkerSettings, sample_rate: int | None = None):
        self.s = settings
        self.sr = int(sample_rate or settings.sample_rate)
        self.labels = list(settings.labels)
        self.storage = Storage(settings.s3)
        self._detector = None

    @property
    def detector(self) -> vad.Detector:
        if self._detector is None:
            self._detector = vad.get_detector(**self.s.vad)
        return self._detector

    @property
    def vad_sr(self) -> int:
        # silero takes 8 or 16 kHz; the energy detector any rate, so it reads the model-rate signal.
        return self.s.vad_sample_rate if self.detector.name == "silero" else self.sr

    def row(self, call: Call) -> dict[str, Any]:
        return {"call_id": call.call_id, "uri": call.uri, "size_bytes": call.size,
                "status": None, "reason": None, "duration_s": None, "sample_rate": None,
                "channels": None, "format": None, "codec": None, "channel": None,
                "customer_speech_s": None, "agent_speech_s": None, "diarization": None,
                "diarization_confidence": None, "diarization_reason": None, "n_segments": 0,
                **{f"share_{lab}": None for lab in self.labels}, **{k: None for k in SUMMARY_FLOATS},
                "normalised_by": None, "model_id": self.s.model_id,
                "model_hash": self.s.model_hash, "run_id": self.s.run_id}

    def load(self, call: Call, row: dict[str, Any]) -> np.ndarray | None:
        """Read, decode and condition one call -> mono float32 at ``self.sr``, or None with
        ``row["status"]`` / ``row["reason"]`` saying why not."""
        from ser_ray import audio

        def fail(status: str, reason: str) -> None:
            row["status"], row["reason"] = status, reason

        if os.environ.get("SER_RAY_CRASH_ON_CALL") == call.call_id:  # fault injection (tests)
            os._exit(70)

        try:
            data = self.storage.read_bytes(call.uri, max_bytes=self.s.max_bytes, root=call.root)
        except TooLarge as exc:
            return fail("too_large", str(exc))
        except (NotAFile, OutsideRoot) as exc:
            return fail(exc.reason, str(exc))
        except Exception as exc:  # missing, permission denied, network: the reason says which
            return fail("unreadable", error_detail(exc))
        row["size_bytes"] = len(data)
        try:
            decoded = audio.decode(data, self.s.max_call_s, self.s.max_decoded_bytes,
                                   "max_call_s")
        except audio.AudioError as exc:
            return fail(exc.reason, exc.detail)
        del data
        row.update(duration_s=decoded.duration_s, sample_rate=decoded.sample_rate,
                   channels=decoded.channels, format=decoded.format, codec=decoded.codec)
        if decoded.duration_s > self.s.max_call_s:
            return fail("too_long", f"{decoded.duration_s:.0f} s > max_call_s={self.s.max_call_s:.0f}")
        y, row["channel"] = pick_channel(decoded.samples, self.s.customer_channel,
                                         self.s.stereo_channel)
        return audio.resample(y, decoded.sample_rate, self.sr)

    def read(self, unit: Unit) -> tuple[list[dict[str, Any]], dict[int, tuple]]:
        """A unit's calls -> (call rows, {call position: (signal, window spans)}); a call without
        windows has its status set in its row already.

        A ``voices`` unit (``score.voices``) -> (call rows, {call position: (signal, speech
        segments)}) for the calls to diarise (downmixed: ``channel`` mono) only. A call with a
        role in ``unit.roles`` has windows over its customer's turns only, and says so in its row."""
        from ser_ray import audio

        rows = [self.row(c) for c in unit.calls]
        signals: list[np.ndarray | None] = []
        for call, row in zip(unit.calls, rows):
            try:
                signals.append(self.load(call, row))
            except Exception as exc:  # a bug: keep the call, say what broke, go on
                internal_error(row, exc)
                signals.append(None)
        live = [i for i, y in enumerate(signals) if y is not None]
        roles = {} if unit.phase == "voices" else (unit.roles or {})
        given = {i: role for i in live
                 if (role := roles.get(rows[i]["call_id"])) and rows[i]["channel"] == "mono"}
        # A call whose customer turns the voices pass found needs no VAD again.
        need = [i for i in live if given.get(i, {}).get("customer") is None]
        vad_input = [signals[i] if self.vad_sr == self.sr else audio.resample(signals[i], self.sr, self.vad_sr)
                     for i in need]
        found = dict(zip(need, detect_speech(vad_input, self.vad_sr, self.detector))) if need else {}
        calls: dict[int, tuple] = {}
        if unit.phase == "voices":
            return rows, {i: (signals[i], found[i]) for i in live
                          if self.s.diarising and rows[i]["channel"] == "mono"}
        for i in live:
            try:
                speech = apply_role(given[i], found.get(i), rows[i]) if i in given else found[i]
                spans = self._spans(speech, rows[i])
                if spans:
                    calls[i] = (signals[i], spans)
            except Exception as exc:
                internal_error(rows[i], exc)
        return rows, calls

    def _spans(self, speech: list[tuple[float, float]], row: dict[str, Any]) -> list[tuple[float, float]]:
        """One call's analysis windows over speech, or none with the row marked ``no_speech``."""
        spans = vad.windows(speech, self.s.window_s, self.s.hop_s, self.s.min_window_s)
        if not spans:
            talk = sum(e - s for s, e in speech)
            row["status"] = NO_SPEECH
            row["reason"] = ("no speech found" if not speech else
                             f"{talk:.2f} s of speech, in stretches shorter than min_window_s="
                             f"{self.s.min_window_s}")
            row["speech_s"] = 0.0
        return spans


def pick_channel(samples: np.ndarray, which: str, stereo: str = "right") -> tuple[np.ndarray, str]:
    """(frames, channels) -> (mono signal, channel used). A mono file is used as it is;
    ``which`` mono or diarize downmixes a stereo one, auto takes its ``stereo`` channel."""
    from ser_ray import audio

    which = stereo if which == "auto" else which
    if samples.ndim == 1 or samples.shape[1] == 1 or which in ("mono", "diarize"):
        return audio.downmix(samples).astype(np.float32, copy=False), "mono"
    return np.ascontiguousarray(samples[:, 0 if which == "left" else 1]), which


def apply_role(role: dict[str, Any], speech: list[tuple[float, float]] | None,
               row: dict[str, Any]) -> list[tuple[float, float]]:
    """A diarised call's role (``score.voices.assign``) -> the speech to score (the customer's
    turns; all of it where diarisation failed), with the row's diarisation columns filled."""
    row.update(customer_speech_s=role.get("customer_speech_s"), agent_speech_s=role.get("agent_speech_s"),
               diarization=role["method"], diarization_confidence=role.get("confidence"),
               diarization_reason=role.get("reason"))
    turns = role.get("customer")
    return speech if turns is None else [(float(s), float(e)) for s, e in turns]


def detect_speech(signals: list[np.ndarray], sr: int, detector: vad.Detector) -> list[list[tuple[float, float]]]:
    """Speech segments of each signal; one batched pass where the detector supports it."""
    return detector.many(signals, sr)
