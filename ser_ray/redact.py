"""Personal data out of transcripts: card numbers, phone numbers, e-mail addresses, IBANs, dates
(of birth among them) and long digit runs, written or spoken, become typed placeholders.

Spoken digits ("four five five six ...", "vier fünf", "oh", "double seven") are read as digits
first, so a card number said aloud is found like a written one; the placeholder replaces the
words. The checks are maintained libraries: ``python-stdnum`` (the Luhn check of card numbers,
IBAN validation) and Google's ``phonenumbers`` (phone numbers in text, per region); patterns only
find the candidates. Entities, in the order they are looked for:

- ``[IBAN]``: two capitals, two check digits, groups of four (spaces allowed), a valid IBAN;
- ``[EMAIL]``: ``name@host.tld``, or spoken: ``name at host dot com``;
- ``[CARD]``: 13-19 digits in a run (spaces, dashes allowed) that pass the Luhn check;
- ``[PHONE]``: what ``phonenumbers`` matches as a possible number in the configured regions,
  of 7 digits or more;
- ``[DATE]``: a full date (``12.03.1985``, ``1985-03-12``, ``12 March 1985``, ``March 12,
  1985``), dates of birth among them;
- ``[NUMBER]``: any remaining run of more than ``max_digits`` digits.

:func:`redact` returns the text and the counts per entity; the text it was given is never logged.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

NUMBER_WORDS = {
    # English
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
    # German
    "null": "0", "eins": "1", "ein": "1", "zwei": "2", "zwo": "2", "drei": "3", "vier": "4",
    "fünf": "5", "fuenf": "5", "sechs": "6", "sieben": "7", "acht": "8", "neun": "9",
}
REPEATS = {"double": 2, "triple": 3, "doppel": 2}
_MONTHS = ("january|february|march|april|may|june|july|august|september|october|november|"
           "december|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|januar|februar|märz|"
           "maerz|juni|juli|oktober|dezember")


@dataclass(frozen=True)
class Redactor:
    """``max_digits``: a digit run longer than this is a ``[NUMBER]``; ``regions``: where phone
    numbers are parsed as local (ISO codes; an international +NN number is found anywhere)."""

    max_digits: int = 4
    regions: tuple[str, ...] = ("US", "GB", "DE")

    def __call__(self, text: str | None) -> tuple[str | None, Counter]:
        return redact(text, self)


class _Spoken:
    """``text`` with spoken digits written as digits, and where each character came from."""

    def __init__(self, text: str):
        out: list[str] = []
        origin: list[tuple[int, int]] = []  # for each character of ``out``: its source span
        pos = 0
        tokens = list(re.finditer(r"[^\W\d_]+", text))
        k = 0
        while k < len(tokens):
            m = tokens[k]
            word = m.group(0).lower()
            repeat = REPEATS.get(word)
            nxt = tokens[k + 1] if k + 1 < len(tokens) else None
            if repeat and nxt is not None and nxt.group(0).lower() in NUMBER_WORDS \
                    and text[m.end():nxt.start()].strip() == "":
                digit = NUMBER_WORDS[nxt.group(0).lower()]
                self._copy(text, pos, m.start(), out, origin)
                for _ in range(repeat):
                    out.append(digit)
                    origin.append((m.start(), nxt.end()))
                pos = nxt.end()
                k += 2
                continue
            if word in NUMBER_WORDS and (word not in ("o", "oh", "ein") or self._in_run(
                    tokens, k, text)):
                self._copy(text, pos, m.start(), out, origin)
                out.append(NUMBER_WORDS[word])
                origin.append((m.start(), m.end()))
                pos = m.end()
            k += 1
        self._copy(text, pos, len(text), out, origin)
        self.text = "".join(out)
        self.origin = origin

    @staticmethod
    def _in_run(tokens, k, text) -> bool:
        """'oh', 'o' and 'ein' count as digits only next to another spoken digit."""
        for j in (k - 1, k + 1):
            if 0 <= j < len(tokens) and tokens[j].group(0).lower() in NUMBER_WORDS and \
                    tokens[j].group(0).lower() not in ("o", "oh", "ein"):
                return True
        return False

    @staticmethod
    def _copy(text, a, b, out, origin):
        for i in range(a, b):
            out.append(text[i])
            origin.append((i, i + 1))

    def source(self, a: int, b: int) -> tuple[int, int]:
        """The span of the original text that characters a..b of :attr:`text` came from."""
        return self.origin[a][0], self.origin[b - 1][1]


def _luhn(digits: str) -> bool:
    from stdnum import luhn

    return luhn.is_valid(digits)


def _iban(candidate: str) -> bool:
    from stdnum import iban

    return iban.is_valid(candidate)


_PATTERNS = [
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b"),
     lambda s: _iban(re.sub(r"\s", "", s))),
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), None),
    ("EMAIL", re.compile(r"\b\w+(?:\s+dot\s+\w+)*\s+(?:at|ät)\s+\w+(?:\s+dot\s+\w+)+\b", re.I),
     None),
    ("CARD", re.compile(r"(?<!\d)\d(?:[ \-,.]*\d){12,18}(?!\d)"),
     lambda s: _luhn(re.sub(r"\D", "", s))),
    ("DATE", re.compile(r"\b\d{1,2}[./-]\d{1,2}[./-](?:\d{4}|\d{2})\b|\b\d{4}-\d{2}-\d{2}\b"),
     None),
    ("DATE", re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th|\.)?\s+(?:of\s+)?(?:{_MONTHS})\.?,?\s+\d{{4}}\b"
                        rf"|\b(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b", re.I),
     None),
]


def _phones(text: str, regions: tuple[str, ...]) -> list[tuple[int, int]]:
    import phonenumbers

    found: list[tuple[int, int]] = []
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region,
                                                 leniency=phonenumbers.Leniency.POSSIBLE):
            found.append((m.start, m.end))
    return found


def redact(text: str | None, redactor: Redactor | None = None) -> tuple[str | None, Counter]:
    """``text`` with every entity found replaced by its placeholder -> (text, counts by entity)."""
    counts: Counter = Counter()
    if not text:
        return text, counts
    r = redactor or Redactor()
    spoken = _Spoken(text)
    work = spoken.text
    taken: list[tuple[int, int, str]] = []  # spans of ``work``

    def free(a: int, b: int) -> bool:
        return all(b <= x or a >= y for x, y, _ in taken)

    for name, pattern, check in _PATTERNS:
        for m in pattern.finditer(work):
            if free(m.start(), m.end()) and (check is None or check(m.group(0))):
                taken.append((m.start(), m.end(), name))
    for a, b in _phones(work, r.regions):
        if free(a, b) and sum(c.isdigit() for c in work[a:b]) >= 7:
            taken.append((a, b, "PHONE"))
    for m in re.finditer(r"(?<!\d)\d(?:[ \-]?\d)*(?!\d)", work):
        if sum(c.isdigit() for c in m.group(0)) > r.max_digits and free(m.start(), m.end()):
            taken.append((m.start(), m.end(), "NUMBER"))
    out = text
    for a, b, name in sorted(taken, reverse=True):  # right to left: earlier offsets stay put
        sa, sb = spoken.source(a, b)
        out = out[:sa] + f"[{name}]" + out[sb:]
        counts[name] += 1
    return out, counts
