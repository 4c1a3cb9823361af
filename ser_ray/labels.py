"""Canonical emotion labels, the label sets the literature uses, and free-text label normalisation.

Every corpus maps its own codes to one canonical label; a :class:`LabelSet` then maps canonical
labels to the classes of one experiment. A label outside the chosen set maps to ``None`` so the
caller can drop it *and count it*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CANONICAL_LABELS: tuple[str, ...] = (
    "neutral", "calm", "happy", "sad", "angry", "fearful",
    "disgust", "surprised", "boredom", "excited", "frustrated",
)

SEXES = ("female", "male")

# The label of a scored window whose calibrated top probability is below the model's "not sure"
# threshold (models/calibration.py); never a class a model is trained on.
UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class LabelSet:
    """Classes of one experiment and how canonical labels map onto them.

    ``mapping`` is canonical label -> label in this set; canonical labels missing from it are
    outside the set. With ``needs_sex`` the mapped label is prefixed with the speaker's sex
    (``"female_angry"``), so ``mapping`` holds the label before the prefix.
    """

    name: str
    labels: tuple[str, ...]
    mapping: dict[str, str] = field(hash=False)
    needs_sex: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.mapping) - set(CANONICAL_LABELS)
        if unknown:
            raise ValueError(f"label set {self.name!r} maps non-canonical labels {sorted(unknown)}")

    def apply(self, canonical_label: str | None, sex: str | None) -> str | None:
        """Label in this set for a canonical label (and sex), or None when it falls outside."""
        label = self.mapping.get(canonical_label) if canonical_label is not None else None
        if label is None:
            return None
        if self.needs_sex:
            if sex not in SEXES:
                return None
            label = f"{sex}_{label}"
        return label


def _identity(name: str, labels: tuple[str, ...]) -> LabelSet:
    return LabelSet(name, labels, {label: label for label in labels})


_MERGED8 = ("angry", "calm", "disgust", "fearful", "happy", "neutral", "sad", "surprised")

LABEL_SETS: dict[str, LabelSet] = {
    ls.name: ls
    for ls in (
        _identity("ravdess8", ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")),
        _identity("merged8", _MERGED8),
        _identity("ekman7", ("calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")),
        # IEMOCAP's usual 4-class setup folds "excited" into "happy" to get enough happy samples.
        LabelSet("iemocap4", ("angry", "happy", "sad", "neutral"),
                 {"angry": "angry", "happy": "happy", "excited": "happy", "sad": "sad", "neutral": "neutral"}),
        _identity("iemocap4-aesn", ("angry", "excited", "sad", "neutral")),
        LabelSet("gender16", tuple(f"{sex}_{label}" for sex in SEXES for label in _MERGED8),
                 {label: label for label in _MERGED8}, needs_sex=True),
        _identity("all", CANONICAL_LABELS),
    )
}


def get_label_set(name: str) -> LabelSet:
    """The label set registered under ``name``; ValueError naming the valid choices otherwise."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(
            f"unknown label set {name!r}; choose one of {', '.join(sorted(LABEL_SETS))}"
        ) from None


# Words and abbreviations seen in corpora and user manifests. Single-letter codes are left to the
# corpus modules on purpose: SAVEE's "a" is anger while EmoDB's "A" (Angst) is fear.
_ALIASES: dict[str, tuple[str, ...]] = {
    "neutral": ("neu", "neutral", "neutrality"),
    "calm": ("cal", "calm", "calmness"),
    "happy": ("hap", "happy", "happiness", "joy", "joyful", "freude"),
    "sad": ("sad", "sa", "sadness", "trauer"),
    "angry": ("ang", "anger", "angry", "wut", "aerger", "ärger"),
    "fearful": ("fea", "fear", "fearful", "afraid", "angst"),
    "disgust": ("dis", "disgust", "disgusted", "ekel"),
    "surprised": ("sur", "su", "surprise", "surprised", "ps", "pleasant_surprise", "pleasant_surprised"),
    "boredom": ("bor", "boredom", "bored", "langeweile"),
    "excited": ("exc", "excited", "excitement"),
    "frustrated": ("fru", "frustrated", "frustration"),
}
_LOOKUP = {alias: canonical for canonical, aliases in _ALIASES.items() for alias in aliases}


def normalise_label(raw: str | None) -> str | None:
    """Canonical label for a corpus or free-text label (case-insensitive), None if unknown.

    IEMOCAP's "xxx" (no agreement) and "oth" (other) deliberately map to None.
    """
    if raw is None:
        return None
    key = str(raw).strip().lower().replace("-", "_").replace(" ", "_")
    return _LOOKUP.get(key)
