"""SAVEE: ``<SPK>_<code><NN>.wav`` (Kaggle) or ``<SPK>/<code><NN>.wav`` (original), four male speakers."""

from __future__ import annotations

import re

from ser_ray.corpora.base import Corpus, ReadText, Utterance, register
from ser_ray.labels import normalise_label

_SPEAKERS = frozenset({"DC", "JE", "JK", "KL"})
# Two-letter codes first so "sa01" is sadness, not a stray "s".
_NAME = re.compile(r"^(?:([A-Za-z]{2})_)?(sa|su|a|d|f|h|n)(\d{2})$", re.IGNORECASE)
_CODES = {"a": "anger", "d": "disgust", "f": "fear", "h": "happiness", "n": "neutral",
          "sa": "sadness", "su": "surprise"}


@register("savee")
class Savee(Corpus):
    pattern = "<SPK>_<code><NN>.wav or <SPK>/<code><NN>.wav, SPK in DC/JE/JK/KL, code in a/d/f/h/n/sa/su"

    def parse(self, relpath: str, read_text: ReadText | None = None) -> Utterance:
        """Speaker from the name prefix or the parent folder; emotion code and sentence number."""
        parts, stem = self.audio_stem(relpath)
        m = _NAME.match(stem)
        if not m:
            raise self.reject(relpath)
        prefix, code, number = m.groups()
        speaker = (prefix or (parts[-2] if len(parts) > 1 else "")).upper()
        if speaker not in _SPEAKERS:
            raise self.reject(relpath, f"no speaker code in the name or parent folder, got {speaker!r}")
        code = code.lower()
        return Utterance(
            speaker=f"savee:{speaker}",
            sex="male",
            raw_label=code,
            label=normalise_label(_CODES[code]),
            extra={"sentence": int(number)},
        )
