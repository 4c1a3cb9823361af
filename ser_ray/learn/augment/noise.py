"""Noise to mix in: :func:`mix_at_snr` (at a signal-to-noise ratio measured on the clean signal),
a bank of noise recordings read once per process (:func:`noise_bank`), and :func:`babble`, which
makes crowd noise from speech recordings."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from ser_ray import audio
from ser_ray.config import S3Config
from ser_ray.schema import error_detail
from ser_ray.storage import Storage, is_tar, tar_members


class AugmentError(RuntimeError):
    """A manifest row that cannot be augmented (its file changed or vanished since prepare)."""


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator,
               *, normalise: bool = True) -> np.ndarray:
    """``clean + lambda * noise`` at ``snr_db`` dB SNR; float32 (n,) like ``clean``.

    The noise is looped (when shorter) or cropped (when longer) to ``len(clean)`` from a random
    offset drawn from ``rng``; lambda = sqrt(P_clean / (P_noise * 10^(snr/10))) with P the mean
    power over the whole clip. ``normalise`` then divides by the peak so the result lies in
    [-1, 1] (which leaves the SNR unchanged). A silent clip is returned unchanged (no SNR exists).
    """
    clean = np.asarray(clean, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if clean.ndim != 1 or noise.ndim != 1:
        raise ValueError(f"mix_at_snr: expected mono 1-D arrays, got {clean.shape}, {noise.shape}")
    if noise.size == 0:
        raise ValueError("mix_at_snr: the noise recording is empty")
    n = clean.size
    if noise.size >= n:
        start = int(rng.integers(noise.size - n + 1))
        seg = noise[start:start + n]
    else:  # loop from a random phase
        start = int(rng.integers(noise.size))
        seg = np.take(noise, np.arange(start, start + n) % noise.size)
    p_clean = float(np.mean(np.square(clean, dtype=np.float64))) if n else 0.0
    p_noise = float(np.mean(np.square(seg, dtype=np.float64))) if n else 0.0
    if p_clean == 0.0:
        return clean.copy()
    if p_noise == 0.0:
        raise ValueError("mix_at_snr: the noise segment is silent; remove that recording from "
                         "the noise bank")
    lam = np.sqrt(p_clean / (p_noise * 10.0 ** (snr_db / 10.0)))
    mixed = clean.astype(np.float64) + lam * seg
    if normalise:
        peak = float(np.max(np.abs(mixed)))
        mixed = mixed / peak if peak > 0 else mixed
    return mixed.astype(np.float32)


@lru_cache(maxsize=8)
def noise_bank(sources: tuple[str, ...], sr: int, s3: S3Config | None = None
               ) -> tuple[np.ndarray, ...]:
    """Noise recordings under ``sources`` (files or folders) as mono float32 at ``sr``, sorted.

    Cached per process, so a Ray actor reads its bank once.
    """
    storage = Storage(s3)
    uris: list[str] = []
    for src in sources:
        if storage.exists_dir(src):
            uris += [u for u in storage.walk(src) if u.lower().endswith(audio.AUDIO_EXTENSIONS)]
        elif storage.exists(src):
            uris.append(src)
        else:
            raise FileNotFoundError(f"background_noise: {src!r} is no file or folder; check "
                                    f"the path")
    if not uris:
        raise ValueError(f"background_noise: no audio files under {list(sources)}")
    out = []
    for uri in sorted(uris):
        try:
            d = audio.decode(storage.read_bytes(uri))
        except audio.AudioError as exc:
            raise ValueError(f"background_noise: cannot decode {uri}: {exc}; remove it from "
                             f"the noise bank") from None
        y = audio.resample(audio.downmix(d.samples), d.sample_rate, sr)
        if not np.any(y):
            raise ValueError(f"background_noise: {uri} is silent; remove it from the noise bank")
        out.append(y.astype(np.float32, copy=False))
    return tuple(out)


def babble(sources: Sequence[str], output_dir: str, *, files: int = 4, voices: int = 8,
           seconds: float = 10.0, sr: int = 16000, seed: int = 0) -> list[str]:
    """A babble noise bank: ``files`` WAVs of ``seconds``, each the sum of ``voices``
    recordings drawn from ``sources`` (files or folders), every voice at the same RMS and
    looped to length, peak-normalised to 0.9. Speech mixed this way is unintelligible: a
    crowd, not a talker. Returns the paths written."""
    import soundfile as sf
    from pathlib import Path

    if files < 1 or voices < 1 or seconds <= 0:
        raise ValueError("babble: files and voices must be >= 1 and seconds > 0")
    bank = noise_bank(tuple(sources), sr)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        mix = np.zeros(n, np.float64)
        for i in rng.choice(len(bank), size=voices, replace=len(bank) < voices):
            y = bank[int(i)].astype(np.float64)
            start = int(rng.integers(y.size))
            y = np.take(y, np.arange(start, start + n) % y.size)
            mix += y / max(float(np.sqrt(np.mean(y ** 2))), 1e-9)
        path = out_dir / f"babble-{k:02d}.wav"
        sf.write(path, (0.9 * mix / np.abs(mix).max()).astype(np.float32), sr)
        paths.append(str(path))
    return paths


def tar_member(uri: str) -> tuple[str, str] | None:
    """``shard.tar#member`` -> (shard, member); None for a plain path or object."""
    shard, sep, member = uri.partition("#")
    return (shard, member) if sep and is_tar(shard) else None


def read_sources(storage: Storage, uris: Sequence[str], max_bytes: int | None = None
                 ) -> dict[str, bytes]:
    """Bytes of each uri; tar members are read by streaming each shard once."""
    out: dict[str, bytes] = {}
    shards: dict[str, set[str]] = {}
    for uri in uris:
        tm = tar_member(uri)
        if tm:
            shards.setdefault(tm[0], set()).add(tm[1])
            continue
        try:
            out[uri] = storage.read_bytes(uri, max_bytes)
        except Exception as exc:
            raise AugmentError(f"augment: cannot read {uri} ({error_detail(exc)}); "
                               f"prepare accepted it, so it moved or changed since: rerun "
                               f"prepare or drop the row") from None
    for shard, members in sorted(shards.items()):
        with storage.open_stream(shard) as stream:
            for name, data, err in tar_members(stream, max_bytes):
                if name in members and data is not None and not err:
                    out[f"{shard}#{name}"] = data
        missing = sorted(m for m in members if f"{shard}#{m}" not in out)
        if missing:
            raise AugmentError(f"augment: {shard} has no readable member(s) {missing[:5]}; "
                               f"rerun prepare or drop those rows")
    return out
