"""Personal data out of the night's transcripts (#29, part 5): each entity, written and spoken,
becomes its placeholder before a transcript leaves the task that made it."""

from __future__ import annotations

import pytest

from ser_ray.redact import Redactor, redact

CASES = [
    # (entity, written, spoken)
    ("CARD", "my card is 4556 7375 8689 9855 thanks",
     "my card is four five five six seven three seven five eight six eight nine nine eight "
     "five five thanks"),
    ("PHONE", "call me on +44 20 7946 0958 please",
     "call me on oh two oh seven nine four six oh nine five eight please"),
    ("EMAIL", "write to john.smith@example.com please",
     "write to john dot smith at example dot com please"),
    ("IBAN", "the IBAN is DE89 3704 0044 0532 0130 00 please", None),
    ("DATE", "I was born on 12.03.1985 please", "I was born on the 12th of March 1985 please"),
    ("NUMBER", "my order number is 883412 please", "my order number is eight eight three four "
                                                     "one two please"),
]


@pytest.mark.parametrize("entity, written, spoken", CASES)
def test_each_entity_written_and_spoken_becomes_its_placeholder(entity, written, spoken):
    for text in (written, spoken):
        if text is None:
            continue
        out, counts = redact(text)
        assert f"[{entity}]" in out and counts == {entity: 1}, (text, out)
        assert out.endswith("please") or out.endswith("thanks")
        assert not any(c.isdigit() for c in out), out


def test_german_digits_double_digits_and_several_entities():
    out, counts = redact("meine Nummer ist null eins sieben sechs zwei drei vier fünf sechs "
                         "sieben acht, Karte 4111 1111 1111 1111")
    assert out == "meine Nummer ist [PHONE], Karte [CARD]" and counts == {"PHONE": 1, "CARD": 1}
    assert redact("double five double seven three four one two")[0] == "[PHONE]"


def test_ordinary_speech_is_left_alone():
    for text in ("oh no, I said one thing and then two more", "ich bin seit drei Tagen krank",
                 "room 12 at half past four", "Ein Tag wie jeder andere", "", None):
        assert redact(text) == (text, {})


def test_checks_decide_not_just_patterns():
    out, counts = redact("the card 4556 7375 8689 9856 is wrong")  # fails the Luhn check
    assert "[CARD]" not in out and sum(counts.values()) == 1  # still redacted, as a number
    out, counts = redact("IBAN DE89 3704 0044 0532 0130 01 typo")  # bad check digits
    assert "[IBAN]" not in out
    assert redact("my pin is 4321", Redactor(max_digits=4))[0] == "my pin is 4321"
    assert redact("my pin is 4321", Redactor(max_digits=3))[0] == "my pin is [NUMBER]"


def test_the_stage_redacts_inside_the_task(tmp_path, monkeypatch):
    """transcribe_group with a stand-in Whisper that says personal data: the rows it returns
    hold placeholders and counts; with redact off they hold the words."""
    import numpy as np
    import soundfile as sf

    from ser_ray.config import TranscribeConfig
    from ser_ray.score import transcripts
    from ser_ray.score.transcripts import TranscriptJob, redaction_record, transcribe_group

    class Said:
        def transcribe(self, clips):
            return [("card four five five six seven three seven five eight six eight nine "
                     "nine eight five five, mail a@b.com", "en") for _ in clips]

    monkeypatch.setattr(transcripts, "transcriber", lambda *a, **k: Said())
    call = tmp_path / "c.wav"
    sf.write(call, 0.1 * np.random.default_rng(0).standard_normal(32000), 16000)
    from test_transcribe import _settings

    settings = _settings(max_bytes=2 ** 30, max_call_s=3600.0)
    job = [TranscriptJob("c", str(call), "mono", ((0.0, 1.0),))]
    rows = transcribe_group(job, TranscribeConfig(model="m"), settings)
    assert rows[0]["text"] == "card [CARD], mail [EMAIL]" and rows[0]["redactions"] == 2
    assert rows[0]["_entities"] == {"CARD": 1, "EMAIL": 1}
    plain = transcribe_group(job, TranscribeConfig(model="m", redact=False), settings)
    assert "a@b.com" in plain[0]["text"] and plain[0]["redactions"] == 0
    rec = redaction_record(TranscribeConfig(model="m"), {"CARD": 1})
    assert rec["on"] and rec["entities"] == {"CARD": 1} and "phonenumbers" in rec["libraries"]
    assert redaction_record(TranscribeConfig(model="m", redact=False), {}) == {"on": False}
