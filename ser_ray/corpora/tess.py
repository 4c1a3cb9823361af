"""TESS: ``<OAF|YAF>_<emotion>/<OAF|YAF>_<word>_<emotion>.wav``, two female speakers."""

from __future__ import annotations

from ser_ray.corpora.base import Corpus, ReadText, Utterance, register
from ser_ray.labels import normalise_label

# One file in the distribution is named "OA_..." instead of "OAF_...".
_SPEAKERS = {"OAF": "OAF", "OA": "OAF", "YAF": "YAF"}
# TESS's seven emotions as canonical labels; anything else is not a TESS name.
_EMOTIONS = frozenset({"angry", "disgust", "fearful", "happy", "neutral", "surprised", "sad"})


@register("tess")
class Tess(Corpus):
    pattern = "<OAF|YAF>_<word>_<emotion>.wav, e.g. OAF_angry/OAF_back_angry.wav"

    def parse(self, relpath: str, read_text: ReadText | None = None) -> Utterance:
        """Speaker (older/younger actress), word and emotion from the file name alone: the
        folder names vary between uploads (``OAF_Pleasant_surprise``, Kaggle parents)."""
        _, stem = self.audio_stem(relpath)
        fields = stem.split("_")
        speaker = _SPEAKERS.get(fields[0].upper())
        if len(fields) < 3 or speaker is None:
            raise self.reject(relpath)
        raw = fields[-1]
        label = normalise_label(raw)  # "ps" (pleasant surprise) -> surprised
        if label not in _EMOTIONS:
            raise self.reject(relpath, f"unknown emotion {raw!r}")
        return Utterance(
            speaker=f"tess:{speaker}",
            sex="female",
            raw_label=raw,
            label=label,
            extra={"word": "_".join(fields[1:-1])},
        )
