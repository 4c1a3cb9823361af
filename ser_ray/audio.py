"""Decode and condition audio: pure functions from bytes to mono float32 windows.

Every failure raises :class:`AudioError` with a stable ``reason`` (see ``schema.REASONS``) so the
pipeline can quarantine the file and go on.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from ser_ray.config import AudioConfig
from ser_ray.schema import AUDIO_EXTENSIONS  # noqa: F401  (re-exported for callers)


class AudioError(Exception):
    """A file that cannot be used; ``reason`` is one of ``schema.REASONS``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sniff_format(head: bytes) -> str | None:
    """Container of a file from its first bytes, ignoring the extension (TESS ships AIFF as .wav)."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b".snd":
        return "au"
    if head[:4] == b"caff":
        return "caf"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
                              and head[1] & 0x06 != 0):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "m4a"
    return None


# Per container: byte order of chunk sizes, the audio chunk's id, and sizes that mean "unknown".
_CHUNKED = {"wav": ("<I", b"data", (0, 0xFFFFFFFF)),  # streaming recorders never patch these
            "aiff": (">I", b"SSND", ())}


def _truncation(data: bytes, fmt: str) -> str | None:
    """Describe a WAV/AIFF file whose audio chunk is shorter than its header declares."""
    if fmt == "wav" and data[:4] != b"RIFF":  # RF64/RIFX keep their sizes elsewhere
        return None
    order, target, unknown = _CHUNKED[fmt]
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack(order, data[pos + 4:pos + 8])[0]
        if cid == target:
            have = len(data) - pos - 8
            if size not in unknown and have < size:
                return f"header declares {size} bytes of audio, file holds {have}"
            return None
        pos += 8 + size + (size & 1)
    return f"no {target.decode()} chunk before end of file"


@dataclass(frozen=True)
class Decoded:
    """A decoded file: ``samples`` is (frames, channels) float32 at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int
    format: str
    codec: str = ""  # how the samples are coded in the container: see :func:`codec_name`

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / float(self.sample_rate)


# "Error opening <_io.BytesIO object at 0x7f..>": an address says nothing about the file.
_ADDRESS = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _declared(data: bytes) -> tuple[float, int] | None:
    """(seconds, decoded bytes as float32) that a file's header declares, without decoding it;
    None when the header does not say."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:
        return None
    if info.frames <= 0 or info.samplerate <= 0 or info.frames >= 2 ** 62:
        return None
    return info.frames / info.samplerate, info.frames * max(info.channels, 1) * 4


def check_declared(data: bytes, max_duration_s: float | None = None,
                   max_decoded_bytes: int | None = None,
                   duration_cap: str = "audio.max_duration_s") -> None:
    """Refuse a file whose header declares more than the caps, before decoding it: a 46 KB
    FLAC can declare 8 channels x 96 kHz x 60 s (184 MB of samples). ``too_long`` /
    ``too_large``."""
    declared = _declared(data)
    if declared is None:
        return
    seconds, size = declared
    if max_duration_s is not None and seconds > max_duration_s:
        raise AudioError("too_long", f"header declares {seconds:.0f} s > "
                                     f"{duration_cap}={max_duration_s:.0f}")
    if max_decoded_bytes is not None and size > max_decoded_bytes:
        raise AudioError("too_large", f"header declares {size / 2 ** 20:.0f} MB of decoded "
                                      f"audio (frames x channels x 4 bytes) > cap of "
                                      f"{max_decoded_bytes / 2 ** 20:.0f} MB (max_decoded_mb)")


def decode(data: bytes, max_duration_s: float | None = None,
           max_decoded_bytes: int | None = None,
           duration_cap: str = "audio.max_duration_s") -> Decoded:
    """Decode audio bytes of any container libsndfile reads (wav, flac, ogg, aiff, mp3, ...).

    With caps, the header is checked first (:func:`check_declared`): a decompression bomb is
    refused before a byte of it is decoded."""
    if len(data) == 0:
        raise AudioError("empty", "file has 0 bytes")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise AudioError("not_audio", f"first bytes {data[:12]!r} match no audio container")
    if fmt == "m4a":
        raise AudioError("unsupported_codec",
                         "m4a/mp4 audio (AAC) needs an ffmpeg-based decoder, which is not "
                         "installed; convert to wav, flac, mp3 or ogg/opus first")
    if fmt in _CHUNKED:
        problem = _truncation(data, fmt)
        if problem:
            raise AudioError("decode_error", f"truncated {fmt}: {problem}")
    check_declared(data, max_duration_s, max_decoded_bytes, duration_cap)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr, subtype = f.samplerate, f.subtype
            if f.seekable():
                samples = f.read(dtype="float32", always_2d=True)
            else:  # GSM 6.10 in WAV, for one: read until the stream ends
                parts = [np.zeros((0, f.channels), np.float32)]
                while len(parts[-1]) or len(parts) == 1:
                    parts.append(f.read(1 << 16, dtype="float32", always_2d=True))
                samples = np.concatenate(parts)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        unknown = unsupported_codec(data, fmt)
        if unknown:
            raise AudioError("unsupported_codec", unknown) from None
        raise AudioError("decode_error", f"{fmt}: {_ADDRESS.sub('the file', str(exc))}") from None
    if samples.shape[0] == 0:
        raise AudioError("empty", f"{fmt} container holds no audio frames")
    if not np.isfinite(samples).all():
        raise AudioError("bad_samples", f"{int((~np.isfinite(samples)).sum())} NaN/inf samples")
    return Decoded(samples, int(sr), fmt, codec_name(fmt, subtype))


# libsndfile's subtype -> the codec name the manifest and the calls table record.
_CODEC_NAMES = {"PCM_16": "pcm16", "PCM_24": "pcm24", "PCM_32": "pcm32", "PCM_U8": "pcm8u",
                "PCM_S8": "pcm8", "FLOAT": "float32", "DOUBLE": "float64", "ULAW": "mulaw",
                "ALAW": "alaw", "MPEG_LAYER_I": "mp1", "MPEG_LAYER_II": "mp2",
                "MPEG_LAYER_III": "mp3", "OPUS": "opus", "VORBIS": "vorbis",
                "GSM610": "gsm610", "IMA_ADPCM": "ima_adpcm", "MS_ADPCM": "ms_adpcm",
                "G721_32": "g721", "G723_24": "g723_24", "G723_40": "g723_40"}


def codec_name(fmt: str, subtype: str) -> str:
    """The codec of a decoded file: ``mulaw``, ``alaw``, ``pcm16``, ``mp3``, ``opus``, ``vorbis``,
    ``flac``, ... (FLAC's subtype is only its bit depth, so a FLAC file's codec is ``flac``)."""
    if fmt == "flac":
        return "flac"
    return _CODEC_NAMES.get(subtype, subtype.lower())


# WAV format tags libsndfile decodes (PCM, ADPCMs, float, G.711, GSM, G.721/723, MPEG,
# extensible); any other tag is a codec it has no decoder for.
_WAV_TAGS = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0x0040, 0x0014, 0x0050,
             0x0055, 0xFFFE}
_OGG_STREAMS = (b"\x01vorbis", b"OpusHead", b"\x7fFLAC")


def unsupported_codec(data: bytes, fmt: str) -> str | None:
    """Why a file that failed to decode did: a codec libsndfile has no decoder for (a WAV
    format tag such as G.729 or TrueSpeech, an Ogg stream of Speex); None when the codec is one
    it reads, so the failure is corruption."""
    if fmt == "wav" and data[:4] == b"RIFF":
        pos = 12
        while pos + 10 <= len(data):
            cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if cid == b"fmt ":
                tag = struct.unpack("<H", data[pos + 8:pos + 10])[0]
                if tag not in _WAV_TAGS:
                    return (f"WAV audio coded with format tag 0x{tag:04x}, which libsndfile "
                            f"cannot decode; convert it to PCM, mu-law/A-law, flac or mp3")
                return None
            pos += 8 + size + (size & 1)
    if fmt == "ogg":
        page = data[:4096]
        if not any(s in page for s in _OGG_STREAMS):
            what = "Speex" if b"Speex   " in page else "an unknown codec"
            return (f"Ogg stream of {what}, which libsndfile cannot decode (it reads Vorbis, "
                    f"Opus and FLAC); convert it to opus or flac")
    return None


# Codecs :func:`encode` writes: name -> (libsndfile format, subtype).
ENCODERS = {"pcm16": ("WAV", "PCM_16"), "mulaw": ("WAV", "ULAW"), "alaw": ("WAV", "ALAW"),
            "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
            "opus": ("OGG", "OPUS"), "vorbis": ("OGG", "VORBIS"), "gsm610": ("WAV", "GSM610")}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def _compression_level(codec: str, sr: int, kbps: float) -> float:
    """libsndfile's compression level (0 best .. 1 smallest) for about ``kbps`` kbit/s.

    It maps the level linearly onto the encoder's bitrate range: Opus ~6-260 kbit/s at any
    rate; LAME's MP3 from 8 kbit/s up to ~64 (8 kHz) or ~160 (16 kHz) kbit/s, rounded to the
    bitrates MPEG allows. Measured in ``tests/test_call_audio.py``."""
    top = 260.0 if codec == "opus" else (64.0 if sr <= 11025 else 160.0 if sr <= 24000 else 320.0)
    bottom = 6.0 if codec == "opus" else 8.0
    # libsndfile refuses LAME's level 1.0 ("Error set compression level"); 0.99 is its 8 kbit/s
    return float(np.clip((top - kbps) / (top - bottom), 0.0, 1.0 if codec == "opus" else 0.99))


def encode(y: np.ndarray, sr: int, codec: str, kbps: float | None = None) -> bytes:
    """Mono or (frames, channels) float audio -> the bytes of a file in ``codec`` (one of
    :data:`ENCODERS`), through libsndfile's own encoders (G.711 tables, LAME, libopus, ...).

    ``kbps`` sets the bitrate of ``mp3``/``opus``/``vorbis`` (about; the encoders round it).
    Opus takes 8, 12, 16, 24 or 48 kHz only."""
    if codec not in ENCODERS:
        raise ValueError(f"codec {codec!r} is not one of {sorted(ENCODERS)}")
    if codec == "opus" and sr not in OPUS_RATES:
        raise ValueError(f"opus encodes {list(OPUS_RATES)} Hz audio, not {sr} Hz; resample first")
    fmt, subtype = ENCODERS[codec]
    level = None
    if kbps is not None and codec in ("mp3", "opus", "vorbis"):
        level = _compression_level(codec, sr, float(kbps))
    buf = io.BytesIO()
    y = np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0)
    sf.write(buf, y, int(sr), format=fmt, subtype=subtype, compression_level=level,
             bitrate_mode="CONSTANT" if codec == "mp3" and level is not None else None)
    return buf.getvalue()


def _lag(out: np.ndarray, y: np.ndarray, most: int) -> int:
    """The delay (0..``most`` samples) at which ``out`` best matches ``y`` (cross-correlation
    over the first 2 s)."""
    from scipy.signal import correlate

    ref = y[:min(len(y), 32000)].astype(np.float64)
    seg = out[:len(ref) + most].astype(np.float64)
    if not np.any(ref):
        return 0
    return int(np.argmax(correlate(seg, ref, mode="valid", method="fft")[:most + 1]))


def round_trip(y: np.ndarray, sr: int, codec: str, kbps: float | None = None) -> np.ndarray:
    """``y`` through ``codec`` and back: mono float32 of the same length (an MP3 encoder's
    padding is cut, a short result zero-padded)."""
    d = decode(encode(y, sr, codec, kbps))
    out = resample(downmix(d.samples), d.sample_rate, sr)
    n = len(y)
    if codec == "mp3" and len(out) > n:  # LAME/mpg123 delay: up to ~1,100 samples at the start
        out = out[_lag(out, y, len(out) - n):]
    return fit_length(out, n)


def downmix(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) mono by averaging channels.

    Equal to ``samples.mean(axis=1, dtype=float32)`` (which also sums the channels in order),
    summed column by column: numpy's reduction over a short inner axis costs 10x as much.
    """
    if samples.ndim != 2:
        return samples
    if samples.shape[1] == 1:
        return np.ascontiguousarray(samples[:, 0], dtype=np.float32)
    out = samples[:, 0].astype(np.float32)
    for ch in range(1, samples.shape[1]):
        out += samples[:, ch]
    out /= np.float32(samples.shape[1])
    return out


def resample(y: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """High-quality resampling with soxr; a no-op at the target rate."""
    if sr == target_sr:
        return y
    return soxr.resample(y, sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def trim(y: np.ndarray, top_db: float) -> np.ndarray:
    """Strip leading and trailing silence quieter than ``top_db`` below the peak."""
    import librosa

    out, _ = librosa.effects.trim(y, top_db=top_db)
    return out if out.size else y


def normalise(y: np.ndarray, mode: str, rms_dbfs: float = -20.0) -> np.ndarray:
    """Per-utterance level normalisation: ``peak`` to [-1, 1] or ``rms`` to ``rms_dbfs``."""
    if mode == "none":
        return y
    if mode == "peak":
        peak = float(np.max(np.abs(y)))
        return y / peak if peak > 0 else y
    if mode == "rms":
        rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
        if rms == 0:
            return y
        out = y * (10 ** (rms_dbfs / 20) / rms)
        return np.clip(out, -1.0, 1.0).astype(np.float32)
    raise ValueError(f"audio.normalise={mode!r}: choose none, peak or rms")


def fit_length(y: np.ndarray, n: int) -> np.ndarray:
    """``y`` cut or zero-padded at the end to ``n`` samples, float32: a signal back from a
    codec or a resampler at its original length."""
    return (y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))).astype(np.float32)


def window(y: np.ndarray, sr: int, offset_s: float, duration_s: float | None,
           pad: bool = True) -> np.ndarray:
    """Crop ``duration_s`` from ``offset_s`` (zero-padded to the full length when ``pad``)."""
    start = min(int(round(offset_s * sr)), len(y))
    if duration_s is None:
        return y[start:]
    n = int(round(duration_s * sr))
    out = y[start:start + n]
    if pad and len(out) < n:
        out = np.pad(out, (0, n - len(out)))
    return out


def split_blocks(y: np.ndarray, sr: int, block_s: float,
                 hop_s: float | None = None) -> list[tuple[int, np.ndarray]]:
    """Split into fixed-length blocks -> [(start_sample, block)].

    The last partial block is zero-padded when it holds at least half a block, and dropped
    otherwise; a signal shorter than one block always yields one padded block, so every
    utterance has at least one.
    """
    n = int(round(block_s * sr))
    hop = int(round((hop_s or block_s) * sr))
    if n <= 0 or hop <= 0:
        raise ValueError(f"block_s={block_s} and hop_s={hop_s} must be positive")
    blocks = []
    for start in range(0, max(len(y), 1), hop):
        block = y[start:start + n]
        if len(block) < n:
            if blocks and len(block) < n // 2:
                break
            block = np.pad(block, (0, n - len(block)))
        blocks.append((start, block))
        if start + n >= len(y):
            break
    return blocks


def pre_emphasise(y: np.ndarray, coef: float) -> np.ndarray:
    """First-order pre-emphasis ``y[n] - coef * y[n-1]`` (the first sample kept); 0 is a no-op."""
    if not coef or y.size < 2:
        return y
    return np.append(y[:1], y[1:] - coef * y[:-1]).astype(np.float32)


def condition(decoded: Decoded, cfg: AudioConfig) -> np.ndarray:
    """Decoded file -> mono float32 at ``cfg.sample_rate``, trimmed/normalised as configured.

    Windowing (offset/duration) is applied here too; block splitting is left to the caller
    because extractors may ask for their own block length.
    """
    if decoded.duration_s < cfg.min_duration_s:
        raise AudioError("too_short", f"{decoded.duration_s:.3f} s < audio.min_duration_s="
                                      f"{cfg.min_duration_s}")
    if decoded.duration_s > cfg.max_duration_s:
        raise AudioError("too_long", f"{decoded.duration_s:.1f} s > audio.max_duration_s="
                                     f"{cfg.max_duration_s}")
    y = resample(downmix(decoded.samples), decoded.sample_rate, cfg.sample_rate)
    if cfg.trim:
        y = trim(y, cfg.trim_top_db)
    y = pre_emphasise(y, cfg.pre_emphasis)
    y = normalise(y, cfg.normalise, cfg.rms_dbfs)
    return window(y, cfg.sample_rate, cfg.offset_s, cfg.duration_s, cfg.pad).astype(
        np.float32, copy=False)
