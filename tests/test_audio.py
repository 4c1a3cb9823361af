"""Decode and condition (ser_ray.audio): pure functions on tiny in-memory audio, no Ray."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import soundfile as sf

from ser_ray import audio
from ser_ray.audio import AudioError, Decoded, condition, decode, sniff_format, split_blocks
from ser_ray.config import AudioConfig


def tone(sr: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(samples: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def mono(y: np.ndarray, sr: int) -> Decoded:
    return Decoded(y.reshape(-1, 1).astype(np.float32), sr, "wav")


def dominant_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)])


def reason_of(data: bytes) -> str:
    with pytest.raises(AudioError) as exc:
        decode(data)
    assert str(exc.value).startswith(exc.value.reason + ": ")
    return exc.value.reason


CFG = AudioConfig()  # 16 kHz, no trim / normalise / window


# --- sniff_format -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, subtype, expected", [
    ("WAV", "PCM_16", "wav"),
    ("FLAC", "PCM_16", "flac"),
    ("OGG", "VORBIS", "ogg"),
    ("AIFF", "PCM_16", "aiff"),
])
def test_sniff_real_containers(fmt, subtype, expected):
    data = encode(tone(16000, 0.2), 16000, fmt, subtype)
    assert sniff_format(data[:16]) == expected


def test_sniff_mp3_written_by_libsndfile():
    if "MP3" not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write MP3")
    data = encode(tone(16000, 0.2), 16000, "MP3", "MPEG_LAYER_III")
    assert data[:3] != b"ID3"  # libsndfile writes a bare frame sync: the 0xFFE? branch is tested
    assert sniff_format(data[:16]) == "mp3"
    assert sniff_format(b"ID3\x04\x00" + bytes(11)) == "mp3"


@pytest.mark.parametrize("head, expected", [
    (b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00", "m4a"),
    (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", "m4a"),
    (b"RF64\xff\xff\xff\xffWAVEds64", "wav"),
    (b"FORM\x00\x00\x10\x00AIFCFVER", "aiff"),
    (b"RIFF\x24\x00\x00\x00AVI LIST", None),       # RIFF, but not WAVE
    (b"FORM\x00\x00\x10\x008SVXVHDR", None),       # IFF, but not AIFF
    (b"\xff\xf1\x50\x80\x00\x1f\xfc" + bytes(9), None),  # ADTS AAC: layer bits 00, not mp3
    (b"hello, world! this is text", None),
    (b"<?xml version='1.0'?>", None),
    (b"", None),
    (b"\xff", None),
])
def test_sniff_headers(head, expected):
    assert sniff_format(head) == expected


# --- decode -----------------------------------------------------------------------------------

def test_decode_stereo_48k_keeps_channels_and_rate():
    sr = 48000
    st = np.stack([tone(sr, 0.5, amp=0.5), tone(sr, 0.5, amp=0.25)], axis=1)
    d = decode(encode(st, sr))
    assert (d.format, d.sample_rate, d.channels) == ("wav", 48000, 2)
    assert d.samples.shape == (24000, 2) and d.samples.dtype == np.float32
    assert d.duration_s == pytest.approx(0.5)
    np.testing.assert_allclose(d.samples, st, atol=1e-4)  # channel order and levels kept


@pytest.mark.parametrize("fmt, subtype", [("FLAC", "PCM_24"), ("OGG", "VORBIS"),
                                          ("MP3", "MPEG_LAYER_III")])
def test_decode_other_containers(fmt, subtype):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile cannot write {fmt}")
    d = decode(encode(tone(44100, 0.5, freq=1000), 44100, fmt, subtype))
    assert d.format == fmt.lower() and d.sample_rate == 44100
    assert abs(d.duration_s - 0.5) < 0.06  # lossy codecs add/trim a few frames
    assert dominant_hz(d.samples[:, 0], 44100) == pytest.approx(1000, abs=5)


def test_aiff_bytes_under_a_wav_name_decode_as_aiff(tmp_path):
    path = tmp_path / "OAF_back_angry.wav"  # TESS ships AIFF data under .wav names
    sf.write(path, tone(24414, 0.3), 24414, format="AIFF", subtype="PCM_16")
    d = decode(path.read_bytes())
    assert d.format == "aiff" and d.sample_rate == 24414
    assert d.samples.shape == (round(24414 * 0.3), 1)


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_wav_is_decode_error(keep):
    data = encode(tone(16000, 0.5), 16000)
    cut = data[:int(len(data) * keep)]
    with pytest.raises(AudioError) as exc:
        decode(cut)
    assert exc.value.reason == "decode_error"
    assert "truncated" in exc.value.detail


def test_wav_cut_inside_header_and_riff_garbage_are_decode_errors():
    data = encode(tone(16000, 0.2), 16000)
    assert reason_of(data[:30]) == "decode_error"  # inside the fmt chunk
    assert reason_of(b"RIFF\x00\x10\x00\x00WAVE" + b"junk" * 50) == "decode_error"
    assert reason_of(b"fLaC" + b"\x00\x01" * 100) == "decode_error"


def test_streamed_wav_with_unpatched_size_still_decodes():
    """Recorders that never patch the data size write 0xFFFFFFFF: not a truncation."""
    data = bytearray(encode(tone(16000, 0.2), 16000))
    pos = data.index(b"data")
    data[pos + 4:pos + 8] = b"\xff\xff\xff\xff"
    d = decode(bytes(data))
    assert d.samples.shape[0] == 3200


def test_empty_text_and_m4a():
    assert reason_of(b"") == "empty"
    assert reason_of(b"path,label\n03-01-05.wav,angry\n") == "not_audio"
    assert reason_of(b"\x00\x00\x00\x20ftypM4A " + bytes(200)) == "unsupported_codec"


def test_wav_with_no_frames_is_empty():
    assert reason_of(encode(np.zeros(0, np.float32), 16000)) == "empty"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_samples_are_bad_samples(bad):
    y = tone(16000, 0.2)
    y[100:103] = bad
    data = encode(y, 16000, "WAV", "FLOAT")
    with pytest.raises(AudioError) as exc:
        decode(data)
    assert exc.value.reason == "bad_samples"
    assert exc.value.detail.startswith("3 ")


# --- condition: rate, channels, duration limits ----------------------------------------------

def test_condition_downmixes_by_averaging_channels():
    sr = 16000
    y = tone(sr, 0.5)
    d = Decoded(np.stack([y, np.zeros_like(y)], axis=1), sr, "wav")
    out = condition(d, CFG)
    assert out.ndim == 1 and out.dtype == np.float32
    np.testing.assert_allclose(out, y / 2, atol=1e-6)  # mean, not the first channel
    cancel = Decoded(np.stack([y, -y], axis=1), sr, "wav")
    assert np.abs(condition(cancel, CFG)).max() < 1e-6


@pytest.mark.parametrize("channels", [1, 2, 3, 6])
def test_downmix_equals_numpy_mean(channels):
    from ser_ray.audio import downmix

    x = np.random.default_rng(channels).uniform(-1, 1, (4001, channels)).astype(np.float32)
    out = downmix(x)
    assert out.shape == (4001,) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x.mean(axis=1, dtype=np.float32))


@pytest.mark.parametrize("sr_in", [48000, 96000, 8000, 22050])
def test_condition_resamples_length_and_pitch(sr_in):
    d = mono(tone(sr_in, 1.0, freq=1000), sr_in)
    out = condition(d, CFG)
    assert len(out) == 16000
    assert out.dtype == np.float32
    assert dominant_hz(out, 16000) == pytest.approx(1000, abs=2)
    assert np.abs(out[2000:-2000]).max() == pytest.approx(0.5, abs=0.02)


def test_condition_from_wav_bytes_48k_stereo_to_16k_mono():
    sr = 48000
    st = np.stack([tone(sr, 0.75, freq=500), tone(sr, 0.75, freq=500)], axis=1)
    out = condition(decode(encode(st, sr)), CFG)
    assert out.shape == (12000,)
    assert dominant_hz(out, 16000) == pytest.approx(500, abs=3)


def test_condition_other_target_rate():
    out = condition(mono(tone(48000, 0.5), 48000), AudioConfig(sample_rate=8000))
    assert len(out) == 4000


def test_too_short_and_too_long():
    with pytest.raises(AudioError) as exc:
        condition(mono(tone(16000, 0.05), 16000), CFG)  # min_duration_s = 0.1
    assert exc.value.reason == "too_short" and "min_duration_s" in exc.value.detail
    with pytest.raises(AudioError) as exc:
        condition(mono(tone(16000, 1.0), 16000), AudioConfig(max_duration_s=0.5))
    assert exc.value.reason == "too_long" and "max_duration_s" in exc.value.detail
    # the limits are on the decoded file, at its own rate, before any resampling
    assert len(condition(mono(tone(96000, 0.1), 96000), CFG)) == 1600
    with pytest.raises(AudioError, match="too_short"):
        condition(mono(tone(96000, 0.099), 96000), CFG)


# --- condition: trim, pre-emphasis, level -----------------------------------------------------

def test_trim_removes_leading_and_trailing_silence():
    sr = 16000
    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(sr // 2), tone(sr, 1.0), np.zeros(sr)]).astype(np.float32)
    y += rng.normal(0, 1e-5, len(y)).astype(np.float32)  # a -100 dB floor, not digital zero
    kept = condition(mono(y, sr), AudioConfig())
    trimmed = condition(mono(y, sr), AudioConfig(trim=True))
    assert len(kept) == len(y)
    assert 0.9 * sr <= len(trimmed) <= 1.3 * sr
    loud = np.flatnonzero(np.abs(trimmed) > 0.1)
    # librosa trims whole frames (2048 samples): at most a frame of silence is left at each end
    assert loud[0] < 2048 and len(trimmed) - loud[-1] < 2048


def test_trim_keeps_all_silent_audio():
    y = np.zeros(16000, np.float32)
    assert len(condition(mono(y, 16000), AudioConfig(trim=True))) == 16000


def test_pre_emphasis():
    y = np.ones(1600, np.float32) * 0.5
    out = condition(mono(y, 16000), AudioConfig(pre_emphasis=0.97))
    assert out[0] == pytest.approx(0.5)
    np.testing.assert_allclose(out[1:], 0.5 * 0.03, rtol=1e-4)


@pytest.mark.parametrize("amp", [0.01, 0.3, 0.9])
def test_normalise_peak(amp):
    out = condition(mono(tone(16000, 0.5, amp=amp), 16000), AudioConfig(normalise="peak"))
    assert np.abs(out).max() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("amp, target_db", [(0.01, -20.0), (0.9, -20.0), (0.05, -30.0)])
def test_normalise_rms(amp, target_db):
    out = condition(mono(tone(16000, 0.5, amp=amp), 16000),
                    AudioConfig(normalise="rms", rms_dbfs=target_db))
    rms_db = 20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
    assert rms_db == pytest.approx(target_db, abs=0.05)
    assert out.dtype == np.float32


def test_normalise_rms_clips_and_silence_is_untouched():
    y = np.zeros(1600, np.float32)
    y[0] = 1e-3  # rms tiny, peak big relative to it: scaling to -3 dBFS must clip to [-1, 1]
    out = audio.normalise(y, "rms", -3.0)
    assert np.abs(out).max() == 1.0
    z = np.zeros(100, np.float32)
    assert np.array_equal(audio.normalise(z, "rms"), z)
    assert np.array_equal(audio.normalise(z, "peak"), z)
    with pytest.raises(ValueError, match="none, peak or rms"):
        audio.normalise(z, "loudness")


# --- condition: window ------------------------------------------------------------------------

def ramp(sr: int, seconds: float) -> np.ndarray:
    return (np.arange(int(sr * seconds)) / (sr * seconds)).astype(np.float32)


def test_window_offset_and_duration():
    sr = 16000
    y = ramp(sr, 3.0)
    out = condition(mono(y, sr), AudioConfig(offset_s=0.5, duration_s=2.0))
    assert len(out) == 32000
    np.testing.assert_array_equal(out, y[8000:40000])


def test_window_offset_only_keeps_the_rest():
    y = ramp(16000, 1.0)
    out = condition(mono(y, 16000), AudioConfig(offset_s=0.25))
    np.testing.assert_array_equal(out, y[4000:])


def test_window_pads_with_zeros_or_crops_short_files():
    sr = 16000
    y = ramp(sr, 1.0) + 0.1
    padded = condition(mono(y, sr), AudioConfig(offset_s=0.5, duration_s=2.5))
    assert len(padded) == 40000
    np.testing.assert_array_equal(padded[:8000], y[8000:])
    assert not padded[8000:].any()
    short = condition(mono(y, sr), AudioConfig(offset_s=0.5, duration_s=2.5, pad=False))
    np.testing.assert_array_equal(short, y[8000:])
    beyond = condition(mono(y, sr), AudioConfig(offset_s=5.0, duration_s=1.0))
    assert len(beyond) == 16000 and not beyond.any()


def test_window_applies_at_the_target_rate():
    out = condition(mono(tone(48000, 3.0), 48000), AudioConfig(offset_s=0.5, duration_s=2.5))
    assert len(out) == 40000  # 2.5 s at 16 kHz, not at 48 kHz


# --- split_blocks -----------------------------------------------------------------------------

def blocks_of(seconds: float, block_s: float = 1.0, hop_s: float | None = None, sr: int = 100):
    y = (np.arange(int(round(seconds * sr))) + 1).astype(np.float32)  # no zero inside the signal
    return y, split_blocks(y, sr, block_s, hop_s)


def test_blocks_exact_multiple():
    y, bl = blocks_of(3.0)
    assert [s for s, _ in bl] == [0, 100, 200]
    assert all(len(b) == 100 for _, b in bl)
    np.testing.assert_array_equal(np.concatenate([b for _, b in bl]), y)


@pytest.mark.parametrize("seconds, n_blocks, pad", [
    (2.5, 3, 50),    # last part holds exactly half a block: kept, zero-padded
    (2.7, 3, 30),
    (2.49, 2, None),  # less than half a block: dropped
    (2.2, 2, None),
])
def test_blocks_last_partial_block(seconds, n_blocks, pad):
    y, bl = blocks_of(seconds)
    assert len(bl) == n_blocks
    assert all(len(b) == 100 for _, b in bl)
    if pad is not None:
        last = bl[-1][1]
        assert bl[-1][0] == 200
        np.testing.assert_array_equal(last[:100 - pad], y[200:])
        assert not last[100 - pad:].any()


def test_blocks_with_hop_overlap():
    y, bl = blocks_of(2.0, block_s=1.0, hop_s=0.5)
    assert [s for s, _ in bl] == [0, 50, 100]  # no block past the end once one reaches it
    for s, b in bl:
        np.testing.assert_array_equal(b, y[s:s + 100])
    _, bl = blocks_of(2.2, block_s=1.0, hop_s=0.5)
    assert [s for s, _ in bl] == [0, 50, 100, 150]  # 150..220 holds 0.7 block: padded
    assert not bl[-1][1][70:].any()


def test_blocks_with_hop_gap():
    _, bl = blocks_of(3.0, block_s=0.5, hop_s=1.0)
    assert [s for s, _ in bl] == [0, 100, 200]
    assert all(len(b) == 50 for _, b in bl)


@pytest.mark.parametrize("seconds", [0.3, 0.7, 0.0])
def test_short_signal_gives_one_padded_block(seconds):
    y, bl = blocks_of(seconds)
    assert len(bl) == 1
    start, b = bl[0]
    assert start == 0 and len(b) == 100
    np.testing.assert_array_equal(b[:len(y)], y)
    assert not b[len(y):].any()


def test_blocks_reject_non_positive_sizes():
    with pytest.raises(ValueError):
        split_blocks(np.ones(10, np.float32), 100, 0.0)
    with pytest.raises(ValueError):
        split_blocks(np.ones(10, np.float32), 100, 1.0, -0.5)


def test_blocks_at_16k_stft_preset():
    y = tone(16000, 3.2)
    bl = split_blocks(y, 16000, 1.0)
    assert [s for s, _ in bl] == [0, 16000, 32000]  # 0.2 s left over: dropped
    assert all(b.shape == (16000,) and b.dtype == np.float32 for _, b in bl)


def test_condition_config_is_not_mutated():
    cfg = AudioConfig(normalise="peak", trim=True, duration_s=1.0)
    before = dataclasses.asdict(cfg)
    condition(mono(tone(16000, 1.5), 16000), cfg)
    assert dataclasses.asdict(cfg) == before


# --- known gap (see report): truncation of non-WAV containers ----------------------------------

def test_truncated_aiff_is_decode_error():
    data = encode(tone(16000, 1.0), 16000, "AIFF", "PCM_16")
    assert reason_of(data[:len(data) // 2]) == "decode_error"


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(monkeypatch):
    """A FLAC of silence declaring 8 channels x 96 kHz x 60 s is ~50 KB on disk and 184 MB of
    float32 samples: the caps read the header, and libsndfile is never asked to decode it."""
    import io as _io

    from ser_ray import audio

    buf = _io.BytesIO()
    sf.write(buf, np.zeros((96000 * 60, 8), np.int16), 96000, format="FLAC")
    data = buf.getvalue()
    assert len(data) < 200_000
    monkeypatch.setattr(audio.sf, "read", lambda *a, **k: pytest.fail("decoded a bomb"))
    with pytest.raises(audio.AudioError) as e:
        audio.decode(data, max_decoded_bytes=64 * 2 ** 20)
    assert e.value.reason == "too_large" and "176 MB" in e.value.detail  # 184e6 bytes
    with pytest.raises(audio.AudioError) as e:
        audio.decode(data, max_duration_s=30, duration_cap="max_call_s")
    assert e.value.reason == "too_long" and "max_call_s=30" in e.value.detail


def test_decode_errors_name_no_object_address():
    from ser_ray import audio

    with pytest.raises(audio.AudioError) as e:
        audio.decode(b"fLaC" + bytes(200))
    assert e.value.reason == "decode_error" and " at 0x" not in e.value.detail
