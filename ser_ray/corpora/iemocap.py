"""IEMOCAP: ``SessionN/sentences/wav/<dialog>/<utt>.wav``, labelled in
``SessionN/dialog/EmoEvaluation/<dialog>.txt``. Ten speakers: five sessions x two sexes."""

from __future__ import annotations

import re

from ser_ray.corpora.base import Corpus, ReadText, UnrecognisedName, Utterance, register, split_path
from ser_ray.labels import normalise_label

_SESSION = re.compile(r"^session(\d+)$", re.IGNORECASE)
# Ses01F_impro01_M013, Ses01F_script01_1_F000: the last field's letter is the speaker's sex.
_UTT = re.compile(r"^Ses\d{2}[FM]_\w+_[FM][^_]*$", re.IGNORECASE)
# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]"
_LINE = re.compile(
    r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\]"
)
_Labels = dict[str, tuple[str, dict]]  # utterance -> (category, extra fields)


def parse_label_file(text: str) -> _Labels:
    """Utterance -> (category, {start_s, end_s, valence, arousal, dominance}) of one EmoEvaluation
    file; annotator lines (``C-E1: ...``) and headers are skipped."""
    labels: _Labels = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            start, end, utt, cat, v, a, d = m.groups()
            labels[utt] = (cat, {"start_s": float(start), "end_s": float(end),
                                 "valence": float(v), "arousal": float(a), "dominance": float(d)})
    return labels


@register("iemocap")
class Iemocap(Corpus):
    pattern = "SessionN/sentences/wav/<dialog>/<utt>.wav under a root that contains SessionN"

    def __init__(self) -> None:
        # Label file path -> parsed labels (None when missing); one file serves a whole dialog.
        self._labels: dict[str, _Labels | None] = {}

    def _locate(self, relpath: str) -> tuple[list[str], int, str, str]:
        """(path parts, index of SessionN, dialog, utterance) or UnrecognisedName."""
        parts, utt = self.audio_stem(relpath)
        low = [p.lower() for p in parts]
        i = len(parts) - 5  # .../SessionN/sentences/wav/<dialog>/<utt>.wav
        if i < 0 or not _SESSION.match(parts[i]) or low[i + 1 : i + 3] != ["sentences", "wav"]:
            raise self.reject(relpath)
        if not _UTT.match(utt):
            raise self.reject(relpath, f"utterance {utt!r} is not like Ses01F_impro01_M013")
        return parts, i, parts[i + 3], utt

    def matches(self, relpath: str) -> bool:
        """Layout and utterance name only: labels need ``read_text``."""
        try:
            self._locate(relpath)
        except UnrecognisedName:
            return False
        return True

    def parse(self, relpath: str, read_text: ReadText | None = None) -> Utterance:
        """Utterance with its category and V/A/D from the dialog's EmoEvaluation file."""
        parts, i, dialog, utt = self._locate(relpath)
        if read_text is None:
            raise ValueError("IEMOCAP labels live in separate files: parse() needs read_text")
        label_path = "/".join([*parts[: i + 1], "dialog", "EmoEvaluation", f"{dialog}.txt"])
        if label_path not in self._labels:
            try:
                self._labels[label_path] = parse_label_file(read_text(label_path))
            except FileNotFoundError:
                self._labels[label_path] = None
        labels = self._labels[label_path]
        if labels is None:
            raise UnrecognisedName(
                f"{relpath!r}: label file {label_path!r} not found; give the IEMOCAP root that "
                f"holds SessionN/dialog/EmoEvaluation next to SessionN/sentences/wav"
            )
        if utt not in labels:
            raise UnrecognisedName(f"{relpath!r}: no line for {utt!r} in {label_path!r}")
        cat, fields = labels[utt]
        sex_letter = utt.rsplit("_", 1)[1][0].upper()
        session = int(_SESSION.match(parts[i]).group(1))
        return Utterance(
            speaker=f"iemocap:Ses{session:02d}{sex_letter}",
            sex="female" if sex_letter == "F" else "male",
            raw_label=cat,
            label=normalise_label(cat),  # xxx (no agreement) and oth -> None
            extra={"session": session, "dialog": dialog,
                   "improvised": "_impro" in dialog.lower(), **fields},
        )

    def is_metadata(self, relpath: str) -> bool:
        """Everything outside ``sentences/wav`` (label files, transcripts, motion capture, video,
        whole-dialog wavs) is part of the release but not an input."""
        low = [p.lower() for p in split_path(relpath)]
        in_sentences = any(low[j : j + 2] == ["sentences", "wav"] for j in range(len(low) - 1))
        return super().is_metadata(relpath) or not in_sentences
