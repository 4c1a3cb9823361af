"""What every corpus module provides: file name -> :class:`Utterance`, plus the registry by name.

Paths handed to a corpus are '/'-separated and relative to the corpus root the user gave, which may
sit above or below the owner's layout (Kaggle re-uploads add parent folders and change case), so
corpora decide from the file name and the nearest folders, never from the full path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

from ser_ray import schema

ReadText = Callable[[str], str]

AUDIO_EXTENSIONS = frozenset(schema.AUDIO_EXTENSIONS)

# Files that ship with corpora (or archive tools) but are never audio inputs.
_DOC_EXTENSIONS = frozenset({
    ".txt", ".csv", ".tsv", ".pdf", ".md", ".rst", ".html", ".htm", ".json", ".xml",
    ".xls", ".xlsx", ".doc", ".docx", ".rtf",
    ".avi", ".mp4", ".flv", ".mov", ".mkv",  # video of audio-visual corpora
})
_DOC_PREFIXES = ("readme", "licence", "license", "copying")
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class Utterance:
    """What a file's name (and its corpus's label files) say about one recording."""

    speaker: str               # corpus-qualified, e.g. "ravdess:12", "iemocap:Ses01M"
    sex: str | None            # "female" | "male" | None
    raw_label: str             # as the corpus writes it ("05", "ANG", "ps", "W", "exc")
    label: str | None          # canonical label; None when the corpus label has none (IEMOCAP xxx)
    extra: dict = field(default_factory=dict, hash=False)  # JSON-serialisable corpus fields


class UnrecognisedName(ValueError):
    """A path does not follow the naming scheme of the corpus it was read as."""


def split_path(relpath: str) -> list[str]:
    """Non-empty components of a '/'-separated path (backslashes from Windows zips accepted)."""
    return [p for p in relpath.replace("\\", "/").split("/") if p not in ("", ".")]


def stem_ext(name: str) -> tuple[str, str]:
    """``("03a01Fa", ".wav")`` for ``"03a01Fa.WAV"``: the extension is lower-cased."""
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext.lower()) if dot and stem else (name, "")


def is_audio_name(relpath: str) -> bool:
    """Has an audio extension and is not an archive artefact such as macOS ``._x.wav``."""
    parts = split_path(relpath)
    return bool(parts) and stem_ext(parts[-1])[1] in AUDIO_EXTENSIONS and not is_distribution_junk(parts)


def is_distribution_junk(parts: list[str]) -> bool:
    """Docs, video, and zip/OS artefacts (``__MACOSX/``, ``._name``, ``.DS_Store``)."""
    if not parts:
        return True
    name = parts[-1].lower()
    return (
        "__MACOSX" in parts
        or name.startswith("._")
        or name in _JUNK_NAMES
        or name.startswith(_DOC_PREFIXES)
        or stem_ext(name)[1] in _DOC_EXTENSIONS
    )


def normalise_sex(raw: object) -> str | None:
    """``"female"`` / ``"male"`` from F/M/female/male/woman/man (any case), else None."""
    value = str(raw).strip().lower() if raw is not None else ""
    if value in ("f", "female", "woman"):
        return "female"
    if value in ("m", "male", "man"):
        return "male"
    return None


class Corpus:
    """One corpus's naming scheme. Subclasses set ``name`` and ``pattern`` and implement ``parse``."""

    name: ClassVar[str]
    pattern: ClassVar[str]  # shown in UnrecognisedName messages

    def parse(self, relpath: str, read_text: ReadText | None = None) -> Utterance:
        """Utterance for an audio file at ``relpath`` (relative to the corpus root).

        ``read_text(relpath)`` reads another file under the same root (raises FileNotFoundError
        when absent). Raises :class:`UnrecognisedName` when the name does not follow ``pattern``.
        """
        raise NotImplementedError

    def matches(self, relpath: str) -> bool:
        """Whether the name follows this corpus's scheme (used by auto-detection)."""
        try:
            self.parse(relpath)
        except UnrecognisedName:
            return False
        return True

    def is_metadata(self, relpath: str) -> bool:
        """Part of the distribution but not an audio input (docs, label files, video, ...)."""
        return is_distribution_junk(split_path(relpath))

    def reject(self, relpath: str, why: str = "") -> UnrecognisedName:
        """The error to raise for a name outside the scheme; says what was expected."""
        reason = f" ({why})" if why else ""
        return UnrecognisedName(
            f"{relpath!r} is not a {self.name} file name{reason}; expected {self.pattern}. "
            f"Check that the corpus name is right or give a manifest instead."
        )

    def audio_stem(self, relpath: str) -> tuple[list[str], str]:
        """Path components and file stem of an audio path; rejects other extensions."""
        parts = split_path(relpath)
        if not is_audio_name(relpath):
            raise self.reject(relpath, "not an audio file name")
        return parts, stem_ext(parts[-1])[0]


CORPORA: dict[str, type[Corpus]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *aliases: str) -> Callable[[type[Corpus]], type[Corpus]]:
    """Class decorator: make a corpus selectable by ``name`` (and ``aliases``)."""

    def wrap(cls: type[Corpus]) -> type[Corpus]:
        cls.name = name
        CORPORA[name] = cls
        for alias in (name, *aliases):
            _ALIASES[alias] = name
        return cls

    return wrap


def get_corpus(name: str) -> Corpus:
    """A fresh instance of the corpus registered as ``name`` (label-file caches are per instance,
    so use one instance per corpus root)."""
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(sorted(_ALIASES))}")
    return CORPORA[key]()
