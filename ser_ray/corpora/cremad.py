"""CREMA-D: ``AudioWAV/AAAA_SSS_EEE_LL.wav``; speaker sex lives in ``VideoDemographics.csv``."""

from __future__ import annotations

import csv
import io
import re

from ser_ray.corpora.base import Corpus, ReadText, Utterance, normalise_sex, register
from ser_ray.labels import normalise_label

_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_(ANG|DIS|FEA|HAP|NEU|SAD)_(LO|MD|HI|XX)$", re.IGNORECASE)
_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
DEMOGRAPHICS = "VideoDemographics.csv"


@register("cremad", "crema-d", "crema_d")
class CremaD(Corpus):
    pattern = "AAAA_SSS_EEE_LL.wav, e.g. AudioWAV/1001_DFA_ANG_XX.wav"

    def __init__(self) -> None:
        self._sex_by_actor: dict[str, str | None] | None = None  # loaded on first parse

    def parse(self, relpath: str, read_text: ReadText | None = None) -> Utterance:
        """Speaker, sentence, emotion and level from the name; sex from the demographics file."""
        _, stem = self.audio_stem(relpath)
        m = _NAME.match(stem)
        if not m:
            raise self.reject(relpath)
        actor, sentence, emotion, level = (g.upper() for g in m.groups())
        return Utterance(
            speaker=f"cremad:{actor}",
            sex=self._sex(actor, read_text),
            raw_label=emotion,
            label=normalise_label(emotion),
            extra={"sentence": sentence, "level": _LEVELS[level]},
        )

    def _sex(self, actor: str, read_text: ReadText | None) -> str | None:
        if read_text is None:
            return None
        if self._sex_by_actor is None:
            try:
                text = read_text(DEMOGRAPHICS)
            except FileNotFoundError:
                text = ""  # optional: without it sex is unknown, and gender16 drops these rows
            rows = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
            self._sex_by_actor = {
                (row.get("ActorID") or "").strip(): normalise_sex(row.get("Sex")) for row in rows
            }
        return self._sex_by_actor.get(actor)
