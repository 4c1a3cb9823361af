"""Corpus naming schemes, selectable by name, and detection of a corpus from a file listing.

Importing the corpus modules registers them (``@register`` in each module).
"""

from __future__ import annotations

from typing import Iterable

from ser_ray.corpora import cremad, emodb, iemocap, ravdess, savee, tess  # noqa: F401  (registers)
from ser_ray.corpora.base import (  # noqa: F401
    CORPORA,
    Corpus,
    UnrecognisedName,
    Utterance,
    get_corpus,
    is_audio_name,
    register,
)
from ser_ray.corpora.manifest import load_manifest, utterance_from_fields  # noqa: F401

MIN_SHARE = 0.5


def detect_corpus(relpaths: Iterable[str]) -> str:
    """Name of the corpus whose scheme matches the largest share of audio-looking paths.

    Raises ValueError with every corpus's share when no corpus reaches ``MIN_SHARE``.
    """
    audio = [p for p in relpaths if is_audio_name(p)]
    if not audio:
        raise ValueError("cannot detect the corpus: the listing has no audio files")
    corpora = {name: cls() for name, cls in CORPORA.items()}
    scores = {name: sum(map(corpus.matches, audio)) / len(audio) for name, corpus in corpora.items()}
    best = max(scores, key=scores.get)
    if scores[best] < MIN_SHARE:
        shown = ", ".join(f"{name} {share:.0%}" for name, share in scores.items())
        raise ValueError(
            f"cannot detect the corpus of {len(audio)} audio files (share of names each scheme "
            f"accepts: {shown}); name the corpus or give a manifest (path,label columns)"
        )
    return best
