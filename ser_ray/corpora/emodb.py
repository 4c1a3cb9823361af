"""Berlin EmoDB: ``wav/SSTTTEV.wav``, e.g. ``03a01Fa.wav`` (speaker, text, emotion, version)."""

from __future__ import annotations

import re

from ser_ray.corpora.base import Corpus, ReadText, Utterance, register, split_path
from ser_ray.labels import normalise_label

_NAME = re.compile(r"^(\d{2})([ab]\d{2})([WLEAFTN])([a-z])$", re.IGNORECASE)
# German initials: Wut, Langeweile, Ekel, Angst, Freude, Trauer, Neutral.
_CODES = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness",
          "T": "sadness", "N": "neutral"}
_MALE = frozenset({"03", "10", "11", "12", "15"})
_FEMALE = frozenset({"08", "09", "13", "14", "16"})
# Phonetic label folders of the download; erkennung.txt/erklaerung.txt are caught by extension.
_LABEL_DIRS = frozenset({"lablaut", "labsilb", "silb"})


@register("emodb")
class EmoDB(Corpus):
    pattern = "SSTTTEV.wav, e.g. wav/03a01Fa.wav (speaker 03, text a01, emotion F, version a)"

    def parse(self, relpath: str, read_text: ReadText | None = None) -> Utterance:
        """Speaker, sex, text code and emotion from the file name."""
        _, stem = self.audio_stem(relpath)
        m = _NAME.match(stem)
        if not m or m.group(1) not in _MALE | _FEMALE:
            raise self.reject(relpath)
        speaker, text, code, version = m.groups()
        code = code.upper()  # position, not case, identifies the field: lower-cased copies parse
        return Utterance(
            speaker=f"emodb:{speaker}",
            sex="male" if speaker in _MALE else "female",
            raw_label=code,
            label=normalise_label(_CODES[code]),
            extra={"text": text.lower(), "version": version.lower()},
        )

    def is_metadata(self, relpath: str) -> bool:
        parts = split_path(relpath)
        return super().is_metadata(relpath) or any(p.lower() in _LABEL_DIRS for p in parts[:-1])
