"""Call audio as contact centres store it: 8 kHz G.711 mu-law and A-law WAV, MP3, Ogg/Opus,
Ogg/Vorbis, FLAC, GSM 6.10 and stereo WAV are decoded (by libsndfile), their codec, rate and
channels recorded in prepare's manifest and the nightly calls table, and audio that no decoder
here reads is quarantined as ``unsupported_codec``."""

from __future__ import annotations

import io
import struct

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from ser_ray import audio


def _speechlike(sr: int, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A voiced tone with syllable-rate bursts and a little noise: energy where speech has it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    y = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 12))
    y = y * (0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t)) + 0.01 * rng.standard_normal(t.size)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


@pytest.mark.parametrize("codec, container", [
    ("mulaw", "wav"), ("alaw", "wav"), ("pcm16", "wav"), ("gsm610", "wav"), ("mp3", "mp3"),
    ("opus", "ogg"), ("vorbis", "ogg"), ("flac", "flac")])
def test_each_call_codec_decodes_and_is_named(codec, container):
    y = _speechlike(8000)
    d = audio.decode(audio.encode(y, 8000, codec, kbps=16))
    assert (d.format, d.codec, d.sample_rate, d.channels) == (container, codec, 8000, 1)
    z = audio.round_trip(y, 8000, codec, kbps=16)
    assert z.shape == y.shape
    # a lossy codec changes the samples but keeps the signal (GSM 6.10 only its envelope)
    floor = 0.2 if codec == "gsm610" else 0.8
    assert np.corrcoef(z, y)[0, 1] > floor, codec


def test_stereo_calls_keep_both_channels():
    y = _speechlike(8000)
    d = audio.decode(audio.encode(np.stack([y, 0.5 * y], 1), 8000, "mulaw"))
    assert d.channels == 2 and d.codec == "mulaw"
    assert np.allclose(d.samples[:, 1], 0.5 * d.samples[:, 0], atol=0.01)


@pytest.mark.parametrize("codec", ["mp3", "opus"])
@pytest.mark.parametrize("kbps", [8, 16])
def test_low_bitrate_encoders_meet_the_asked_bitrate(codec, kbps):
    sr, seconds = 8000, 6.0
    data = audio.encode(_speechlike(sr, seconds), sr, codec, kbps=kbps)
    got = len(data) * 8 / seconds / 1000
    assert 0.5 * kbps <= got <= 1.6 * kbps + 2, (codec, kbps, got)  # + container headers


def test_bad_codec_arguments_are_clear():
    with pytest.raises(ValueError, match="not one of"):
        audio.encode(np.zeros(800, np.float32), 8000, "g729")
    with pytest.raises(ValueError, match="opus encodes"):
        audio.encode(np.zeros(4410, np.float32), 44100, "opus")


def _g729_wav() -> bytes:
    """A WAV whose fmt chunk names G.729 (format tag 0x0133), which libsndfile cannot decode."""
    data = bytearray(audio.encode(_speechlike(8000, 0.5), 8000, "pcm16"))
    at = data.find(b"fmt ")
    data[at + 8:at + 10] = struct.pack("<H", 0x0133)
    return bytes(data)


def _speex_ogg() -> bytes:
    """An Ogg page whose stream header is Speex's."""
    body = b"Speex   1.2" + bytes(69)
    header = (b"OggS" + bytes([0, 2]) + bytes(8) + struct.pack("<I", 1) + bytes(8)
              + bytes([1, len(body)]))
    return header + body + bytes(200)


@pytest.mark.parametrize("make, what", [
    (_g729_wav, "format tag 0x0133"),
    (_speex_ogg, "Speex"),
    (lambda: b"\x00\x00\x00\x20ftypM4A " + bytes(400), "AAC"),
])
def test_unreadable_codecs_are_named_unsupported_codec(make, what):
    with pytest.raises(audio.AudioError) as err:
        audio.decode(make())
    assert err.value.reason == "unsupported_codec" and what in err.value.detail


def test_a_corrupt_file_of_a_known_codec_stays_a_decode_error():
    data = audio.encode(_speechlike(8000), 8000, "mulaw")
    with pytest.raises(audio.AudioError) as err:
        audio.decode(data[:60])
    assert err.value.reason == "decode_error"


def _write_calls(folder, stem_codecs):
    folder.mkdir(parents=True, exist_ok=True)
    for stem, codec in stem_codecs.items():
        y = _speechlike(8000, 3.0, seed=len(stem))
        ext = {"mp3": "mp3", "opus": "ogg", "flac": "flac"}.get(codec, "wav")
        (folder / f"{stem}.{ext}").write_bytes(audio.encode(y, 8000, codec, kbps=16))


@pytest.mark.usefixtures("ray_session")
def test_prepare_records_rate_codec_and_channels(tmp_path):
    from ser_ray.synth import synthesize_corpus
    from cli_helpers import ser_ray_cli

    corpus = tmp_path / "corpus"
    rows = synthesize_corpus("ravdess", corpus, n_speakers=1, per_emotion=1,
                             emotions=["neutral", "angry"], seed=1)
    codecs = ["mulaw", "alaw", "mp3", "opus", "flac"]
    stems = ["03-01-05-02-01-01-01", "03-01-05-02-01-02-01", "03-01-05-02-02-01-01",
             "03-01-05-02-02-02-01", "03-01-05-01-02-02-01"]  # angry takes the corpus lacks
    y, sr = sf.read(corpus / rows[1]["path"], dtype="float32")
    y8 = audio.resample(y, sr, 8000)
    made = {}
    for stem, codec in zip(stems, codecs):  # re-stored as calls store them
        ext = {"mp3": ".mp3", "opus": ".ogg", "flac": ".flac"}.get(codec, ".wav")
        path = corpus / "Actor_01" / (stem + ext)
        path.write_bytes(audio.encode(y8, 8000, codec, kbps=16))
        made[path.name] = codec
    (corpus / "Actor_01" / "03-01-01-01-02-02-01.wav").write_bytes(_g729_wav())
    out = tmp_path / "prepared"
    ser_ray_cli("prepare", "--input", str(corpus), "--corpus", "ravdess", "--features", "mfcc",
                "--output", str(out), "--no-progress")
    manifest = pq.read_table(out / "manifest").to_pandas()
    by_name = {u.rsplit("/", 1)[-1]: r for u, r in zip(manifest["uri"], manifest.to_dict("records"))}
    for name, codec in made.items():
        row = by_name[name]
        assert (row["codec"], row["sample_rate"], row["channels"]) == (codec, 8000, 1), name
    assert {by_name[r["path"].rsplit("/", 1)[-1]]["codec"] for r in rows} == {"pcm16"}
    quarantine = pq.read_table(out / "quarantine").to_pandas()
    assert quarantine["reason"].tolist() == ["unsupported_codec"]
    assert "0x0133" in quarantine["detail"].item()


@pytest.mark.usefixtures("ray_session")
def test_score_records_each_calls_codec_and_quarantines_what_it_cannot_read(score_model,
                                                                           tmp_path):
    from ser_ray.config import ScoreConfig, load
    from ser_ray.score import read_calls, run_score

    folder = tmp_path / "calls"
    stems = {"c-mulaw": "mulaw", "c-alaw": "alaw", "c-mp3": "mp3", "c-opus": "opus",
             "c-flac": "flac"}
    _write_calls(folder, stems)
    (folder / "c-g729.wav").write_bytes(_g729_wav())
    y = _speechlike(8000, 3.0)
    (folder / "c-stereo.wav").write_bytes(audio.encode(np.stack([0.2 * y, y], 1), 8000, "alaw"))
    cfg = load(ScoreConfig, None, model=str(score_model), inputs=[str(folder)],
               output=str(tmp_path / "out"), run_date="2026-12-01", customer_channel="right")
    run_score(cfg, progress=False)
    calls = read_calls(tmp_path / "out").set_index("call_id")
    assert len(calls) == 7
    for stem, codec in stems.items():
        assert calls.loc[stem, "codec"] == codec and calls.loc[stem, "sample_rate"] == 8000
        assert calls.loc[stem, "status"] in ("scored", "no_speech"), calls.loc[stem].to_dict()
    assert calls.loc["c-stereo", ["codec", "channels", "channel"]].tolist() == ["alaw", 2, "right"]
    assert calls.loc["c-g729", "status"] == "unsupported_codec"
    assert "0x0133" in calls.loc["c-g729", "reason"]
