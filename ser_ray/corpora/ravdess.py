"""RAVDESS: ``Actor_XX/MM-VV-EE-II-SS-RR-AA.wav``, every field a two-digit code."""

from __future__ import annotations

import re

from ser_ray.corpora.base import Corpus, ReadText, Utterance, register

_NAME = re.compile(r"^(0[1-3])-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(0[1-9]|1\d|2[0-4])$")
# Emotion codes in the order of the RAVDESS documentation; 01 is neutral.
_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
_MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}


@register("ravdess")
class Ravdess(Corpus):
    pattern = "MM-VV-EE-II-SS-RR-AA.wav with two-digit codes, e.g. Actor_01/03-01-05-01-02-01-01.wav"

    def parse(self, relpath: str, read_text: ReadText | None = None) -> Utterance:
        """Speaker, sex (odd actor male), emotion and the other codes from the file name."""
        _, stem = self.audio_stem(relpath)
        m = _NAME.match(stem)
        if not m:
            raise self.reject(relpath)
        modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
        return Utterance(
            speaker=f"ravdess:{actor}",
            sex="male" if int(actor) % 2 else "female",
            raw_label=emotion,
            label=_EMOTIONS[int(emotion) - 1],
            extra={
                "modality": _MODALITIES[modality],
                # Songs are kept: the literature's merged8 set trains on speech and song alike.
                "vocal_channel": "speech" if channel == "01" else "song",
                "intensity": "normal" if intensity == "01" else "strong",
                "statement": int(statement),
                "repetition": int(repetition),
            },
        )
