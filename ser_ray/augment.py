"""Waveform augmentation: chains of named steps, dataset variants, and a Ray Data stage.

A step is a frozen dataclass (its config, with ``p`` = probability of applying it) registered by
name; a :class:`Chain` applies steps in order: ``chain(y, sr, rng) -> y`` on mono float32 audio.

Randomness is explicit. Every draw comes from the ``np.random.Generator`` passed in, and each
step gets its own child generator (``rng.spawn``), so changing one step's parameters never
shifts another step's draws. audiomentations (shift, stretch, pitch, gain) draws its parameters
from the global ``random`` module, so we draw the value ourselves and build the transform with
``min == max`` and ``p=1``: its own draw then returns our value exactly, and the global state it
consumes is saved and restored around the call. Its Gaussian noise uses numpy's global RNG for
the samples, so that step (and uniform noise) is written here with the Generator instead.

The Ray stage (:func:`augmented_features`, :func:`noisy_features`) decodes each manifest row with
prepare's own path (``audio.decode`` + ``audio.condition`` with the prepare run's AudioConfig),
applies the chain per copy with a generator seeded by (seed, sha256(utterance_id), copy), splits
blocks and extracts features exactly as prepare does, and sorts its output, so a result depends
on the seed only, never on the number of workers. Augment the training split only: copies keep
``source_id``, so a split grouped by it keeps them on the side of their recording.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import types
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import pandas as pd

from ser_ray.registry import registrar
from ser_ray import audio, io
from ser_ray.config import AudioConfig, S3Config, from_dict, to_dict

# Manifest columns every output row carries over (the learning plane's meta contract).
KEEP_COLUMNS = ("utterance_id", "source_id", "speaker", "sex", "corpus", "label")
META_COLUMNS = (*KEEP_COLUMNS, "block_index", "start_s", "end_s", "augment", "copy")
ORIGINAL = "none"  # the `augment` value of un-augmented rows; their `copy` is -1


class AugmentError(RuntimeError):
    """A manifest row that cannot be augmented (its file changed or vanished since prepare)."""


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------

_STEPS: dict[str, type["Step"]] = {}


register_step = registrar(_STEPS, "augment step")  # class decorator: register_step(name)


def available_steps() -> list[str]:
    """Registered step names, sorted."""
    return sorted(_STEPS)


@dataclass(frozen=True)
class Step:
    """Base config: ``p`` is the probability that the step applies to a given copy."""

    name: ClassVar[str] = ""
    p: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"augment step {self.name}: p={self.p} must be in [0, 1]")
        self.validate()

    def validate(self) -> None:
        """Reject bad parameters with a message naming the step and field."""

    def apply(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract

    def _range(self, lo: str, hi: str) -> None:
        if getattr(self, lo) > getattr(self, hi):
            raise ValueError(f"augment step {self.name}: {lo}={getattr(self, lo)} > "
                             f"{hi}={getattr(self, hi)}; swap them")


@contextlib.contextmanager
def _keep_global_random():
    """Restore the ``random`` module's state after an audiomentations call draws from it."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def _peak(y: np.ndarray) -> float:
    return float(np.max(np.abs(y))) if y.size else 0.0


@register_step("uniform_noise")
@dataclass(frozen=True)
class UniformNoise(Step):
    """Add noise drawn uniformly from [-a, a]; a = ``amplitude`` x clip peak when ``relative``.

    Relative to the peak by default, so the noise sits at the same level below the speech in
    corpora recorded ~20 dB apart (METHODS "Lessons"); ``relative=False`` adds absolute noise.
    """

    amplitude: float = 0.035
    relative: bool = True

    def validate(self) -> None:
        if self.amplitude < 0:
            raise ValueError(f"augment step uniform_noise: amplitude={self.amplitude} must be >= 0")

    def apply(self, y, sr, rng):
        a = self.amplitude * (_peak(y) if self.relative else 1.0)
        return (y + rng.uniform(-a, a, size=y.shape)).astype(np.float32)


@register_step("gaussian_noise")
@dataclass(frozen=True)
class GaussianNoise(Step):
    """Add Gaussian noise whose standard deviation is drawn uniformly in [min, max] amplitude.

    Same parameters as audiomentations.AddGaussianNoise; ``relative=True`` scales by the clip
    peak, which with (0, 0.035) is the widely copied ``0.035 * U(0,1) * max(y) * N(0,1)`` recipe.
    """

    min_amplitude: float = 0.001
    max_amplitude: float = 0.015
    relative: bool = False

    def validate(self) -> None:
        if self.min_amplitude < 0:
            raise ValueError(f"augment step gaussian_noise: min_amplitude={self.min_amplitude} "
                             f"must be >= 0")
        self._range("min_amplitude", "max_amplitude")

    def apply(self, y, sr, rng):
        std = rng.uniform(self.min_amplitude, self.max_amplitude)
        std *= _peak(y) if self.relative else 1.0
        return (y + std * rng.standard_normal(y.shape)).astype(np.float32)


@register_step("shift")
@dataclass(frozen=True)
class Shift(Step):
    """Shift in time by a fraction of the length drawn in [min_shift, max_shift] (audiomentations).

    ``rollover=True`` is ``np.roll``; False fills the vacated part with zeros. ``fade_s`` > 0
    fades in/out at the seam (0 or >= 0.00025 s); 0 reproduces the literature's plain roll.
    """

    min_shift: float = -0.5
    max_shift: float = 0.5
    rollover: bool = True
    fade_s: float = 0.0

    def validate(self) -> None:
        if not -1.0 <= self.min_shift <= 1.0 or not -1.0 <= self.max_shift <= 1.0:
            raise ValueError(f"augment step shift: min_shift/max_shift are fractions of the "
                             f"length in [-1, 1], got {self.min_shift}, {self.max_shift}")
        self._range("min_shift", "max_shift")
        if self.fade_s != 0 and self.fade_s < 0.00025:
            raise ValueError(f"augment step shift: fade_s={self.fade_s} must be 0 or >= 0.00025")

    def apply(self, y, sr, rng):
        from audiomentations import Shift as _Shift

        f = float(rng.uniform(self.min_shift, self.max_shift))
        t = _Shift(min_shift=f, max_shift=f, shift_unit="fraction", rollover=self.rollover,
                   fade_duration=self.fade_s, p=1.0)
        with _keep_global_random():
            return t(y, sr)


@register_step("stretch")
@dataclass(frozen=True)
class Stretch(Step):
    """Time-stretch by a rate drawn in [min_rate, max_rate], pitch unchanged (audiomentations).

    rate > 1 speeds up. ``keep_length=True`` (default) crops or zero-pads back to the input
    length, so fixed-size features keep their shape; False returns ~len(y) / rate samples.
    """

    min_rate: float = 0.8
    max_rate: float = 1.25
    keep_length: bool = True
    method: str = "signalsmith_stretch"  # or "librosa_phase_vocoder"

    def validate(self) -> None:
        if self.min_rate < 0.1 or self.max_rate > 10:
            raise ValueError(f"augment step stretch: rates must lie in [0.1, 10], got "
                             f"{self.min_rate}, {self.max_rate}")
        self._range("min_rate", "max_rate")
        _check_method("stretch", self.method)

    def apply(self, y, sr, rng):
        from audiomentations import TimeStretch

        r = float(rng.uniform(self.min_rate, self.max_rate))
        t = TimeStretch(min_rate=r, max_rate=r, leave_length_unchanged=self.keep_length,
                        method=self.method, p=1.0)
        with _keep_global_random():
            return t(y, sr).astype(np.float32, copy=False)


@register_step("pitch")
@dataclass(frozen=True)
class Pitch(Step):
    """Shift pitch by semitones drawn in [min, max]; length and tempo kept (audiomentations)."""

    min_semitones: float = -4.0
    max_semitones: float = 4.0
    method: str = "signalsmith_stretch"  # or "librosa_phase_vocoder"

    def validate(self) -> None:
        if self.min_semitones < -24 or self.max_semitones > 24:
            raise ValueError(f"augment step pitch: semitones must lie in [-24, 24], got "
                             f"{self.min_semitones}, {self.max_semitones}")
        self._range("min_semitones", "max_semitones")
        _check_method("pitch", self.method)

    def apply(self, y, sr, rng):
        from audiomentations import PitchShift

        s = float(rng.uniform(self.min_semitones, self.max_semitones))
        t = PitchShift(min_semitones=s, max_semitones=s, method=self.method, p=1.0)
        with _keep_global_random():
            return t(y, sr).astype(np.float32, copy=False)


@register_step("gain")
@dataclass(frozen=True)
class Gain(Step):
    """Multiply by a gain drawn in [min_db, max_db] dB (audiomentations); may leave [-1, 1]."""

    min_db: float = -12.0
    max_db: float = 12.0

    def validate(self) -> None:
        self._range("min_db", "max_db")

    def apply(self, y, sr, rng):
        from audiomentations import Gain as _Gain

        g = float(rng.uniform(self.min_db, self.max_db))
        with _keep_global_random():
            return _Gain(min_gain_db=g, max_gain_db=g, p=1.0)(y, sr).astype(np.float32,
                                                                            copy=False)


@register_step("background_noise")
@dataclass(frozen=True)
class BackgroundNoise(Step):
    """Mix a recording from a noise bank at an SNR, then peak-normalise (see :func:`mix_at_snr`).

    ``noise``: files and/or folders (local or s3://) of recordings, read at the audio's rate.
    The SNR is drawn from ``snr_db`` when it is given, else uniformly in [min_snr_db, max_snr_db].
    """

    noise: tuple[str, ...] = ()
    snr_db: tuple[float, ...] = (15.0, 20.0, 40.0)
    min_snr_db: float | None = None
    max_snr_db: float | None = None
    normalise: bool = True

    def validate(self) -> None:
        if not self.noise:
            raise ValueError("augment step background_noise: give noise= a folder or a list of "
                             "noise recordings (in cv, train and tune, noise_dir is the default)")
        if not self.snr_db and (self.min_snr_db is None or self.max_snr_db is None):
            raise ValueError("augment step background_noise: give snr_db=[...] or both "
                             "min_snr_db and max_snr_db")
        if not self.snr_db:
            self._range("min_snr_db", "max_snr_db")

    def apply(self, y, sr, rng):
        bank = noise_bank(tuple(self.noise), sr)
        if self.snr_db:
            snr = float(self.snr_db[int(rng.integers(len(self.snr_db)))])
        else:
            snr = float(rng.uniform(self.min_snr_db, self.max_snr_db))
        noise = bank[int(rng.integers(len(bank)))]
        return mix_at_snr(y, noise, snr, rng, normalise=self.normalise)


def _check_method(step: str, method: str) -> None:
    choices = ("signalsmith_stretch", "librosa_phase_vocoder")
    if method not in choices:
        raise ValueError(f"augment step {step}: method={method!r} is not one of {list(choices)}")


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
    storage = io.Storage(s3)
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


# --------------------------------------------------------------------------------------------
# Chains
# --------------------------------------------------------------------------------------------

def make_step(name: str, **params: Any) -> Step:
    """Build the step registered as ``name`` (YAML values are coerced to the field types)."""
    if name not in _STEPS:
        raise ValueError(f"unknown augment step {name!r}; available: {available_steps()}")
    return from_dict(_STEPS[name], params, f"augment step {name}")


@dataclass(frozen=True)
class Chain:
    """Steps applied in order. ``label`` overrides the generated :attr:`name`."""

    steps: tuple[Step, ...]
    label: str | None = None

    def __post_init__(self):
        if not self.steps:
            raise ValueError("augment chain: no steps; use variant 'none' for un-augmented data")

    @classmethod
    def from_config(cls, config: Sequence[dict[str, Any]], *, name: str | None = None) -> "Chain":
        """``[{"name": "pitch", "min_semitones": -2, ...}, ...]`` -> Chain (e.g. from YAML)."""
        if isinstance(config, dict) or not isinstance(config, (list, tuple)):
            raise ValueError(f"augment chain: expected a list of steps like "
                             f"[{{name: pitch, p: 0.5}}], got {config!r}")
        steps = []
        for i, entry in enumerate(config):
            if not isinstance(entry, dict) or "name" not in entry:
                raise ValueError(f"augment chain step {i}: expected a mapping with a 'name' key "
                                 f"(one of {available_steps()}), got {entry!r}")
            params = {k: v for k, v in entry.items() if k != "name"}
            steps.append(make_step(entry["name"], **params))
        return cls(tuple(steps), name)

    def to_config(self) -> list[dict[str, Any]]:
        """Plain, YAML-safe config; ``Chain.from_config(c.to_config()) == c``."""
        return [{"name": s.name, **to_dict(s)} for s in self.steps]

    @property
    def name(self) -> str:
        """Stable id for meta's ``augment`` column: step names + a hash of the full config."""
        if self.label:
            return self.label
        digest = hashlib.sha1(json.dumps(self.to_config(), sort_keys=True).encode()).hexdigest()
        return "+".join(s.name for s in self.steps) + "-" + digest[:8]

    def __call__(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        """Mono float32 (n,) at ``sr`` Hz -> augmented float32 (m,); m == n unless stretch
        has ``keep_length=False``."""
        y = np.asarray(y, dtype=np.float32)
        for step, r in zip(self.steps, rng.spawn(len(self.steps))):
            if r.random() < step.p:
                y = np.asarray(step.apply(y, sr, r), dtype=np.float32)
        return y


# The METHODS.md chain (noise, shift, stretch, pitch, gain): used when a config names no steps.
# Noise always; the rest each on half the copies, so copies differ in kind, not only in degree.
DEFAULT_CHAIN: tuple[dict[str, Any], ...] = (
    {"name": "uniform_noise", "amplitude": 0.035},
    {"name": "shift", "min_shift": -0.2, "max_shift": 0.2, "p": 0.5},
    {"name": "stretch", "min_rate": 0.8, "max_rate": 1.25, "p": 0.5},
    {"name": "pitch", "min_semitones": -2.0, "max_semitones": 2.0, "p": 0.5},
    {"name": "gain", "min_db": -6.0, "max_db": 6.0, "p": 0.5},
)


def row_rng(seed: int, utterance_id: str, copy: int) -> np.random.Generator:
    """The generator for one (seed, utterance, copy): stable across processes and machines."""
    h = int.from_bytes(hashlib.sha256(utterance_id.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), h, int(copy)])


# --------------------------------------------------------------------------------------------
# Dataset variants
# --------------------------------------------------------------------------------------------

Rows = tuple[Any, pd.DataFrame]  # (X: ndarray (n, ...) or list of n arrays, meta with n rows)


def _mark_original(rows: Rows) -> Rows:
    x, meta = rows
    meta = meta.copy()
    if "augment" not in meta:
        meta["augment"] = ORIGINAL
    if "copy" not in meta:
        meta["copy"] = -1
    return x, meta


def _concat(a: Rows, b: Rows) -> Rows:
    (xa, ma), (xb, mb) = a, b
    if (isinstance(xa, np.ndarray) and isinstance(xb, np.ndarray)
            and xa.shape[1:] == xb.shape[1:]):
        x = np.concatenate([xa, xb])
    else:
        x = list(xa) + list(xb)
    return x, pd.concat([ma, mb], ignore_index=True)


def _need(variant: str, augmented: Rows | None) -> Rows:
    if augmented is None:
        raise ValueError(f"variant {variant!r} needs augmented rows: run augmented_features on "
                         f"the training split first, or choose variant 'none'")
    return augmented


VARIANTS: dict[str, Callable[[Rows, Rows | None], Rows]] = {
    "none": lambda orig, aug: _mark_original(orig),
    "augmented": lambda orig, aug: _need("augmented", aug),
    "merged": lambda orig, aug: _concat(_mark_original(orig), _need("merged", aug)),
}


def select_variant(variant: str, original: Rows, augmented: Rows | None = None) -> Rows:
    """(X, meta) of a dataset variant: ``none`` (originals), ``augmented`` (copies only) or
    ``merged`` (originals then copies). Originals get ``augment="none"`` and ``copy=-1``.

    Pass training-split rows only; test rows are never augmented.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown augmentation variant {variant!r}; choose one of "
                         f"{sorted(VARIANTS)}")
    return VARIANTS[variant](original, augmented)


# --------------------------------------------------------------------------------------------
# Ray Data stage
# --------------------------------------------------------------------------------------------

def _tar_member(uri: str) -> tuple[str, str] | None:
    """``shard.tar#member`` -> (shard, member); None for a plain path or object."""
    shard, sep, member = uri.partition("#")
    return (shard, member) if sep and io.is_tar(shard) else None


def read_sources(storage: io.Storage, uris: Sequence[str], max_bytes: int | None = None
                 ) -> dict[str, bytes]:
    """Bytes of each uri; tar members are read by streaming each shard once."""
    out: dict[str, bytes] = {}
    shards: dict[str, set[str]] = {}
    for uri in uris:
        tm = _tar_member(uri)
        if tm:
            shards.setdefault(tm[0], set()).add(tm[1])
            continue
        try:
            out[uri] = storage.read_bytes(uri, max_bytes)
        except Exception as exc:
            raise AugmentError(f"augment: cannot read {uri} ({type(exc).__name__}: {exc}); "
                               f"prepare accepted it, so it moved or changed since: rerun "
                               f"prepare or drop the row") from None
    for shard, members in sorted(shards.items()):
        with storage.open_stream(shard) as stream:
            for name, data, err in io.tar_members(stream, max_bytes):
                if name in members and data is not None and not err:
                    out[f"{shard}#{name}"] = data
        missing = sorted(m for m in members if f"{shard}#{m}" not in out)
        if missing:
            raise AugmentError(f"augment: {shard} has no readable member(s) {missing[:5]}; "
                               f"rerun prepare or drop those rows")
    return out


class AugmentWorker:
    """Ray Data callable class: builds storage, extractor and chains once per actor.

    ``jobs``: one dict per output variant of each row: ``chain`` (config list), ``label``,
    ``copy`` (written to meta), ``rng_copy`` (the copy index the generator is seeded with) and
    optional ``extra`` columns.
    """

    def __init__(self, audio_cfg: dict, extractor: dict, jobs: list[dict], seed: int, s3: dict):
        from ser_ray.features import get_extractor
        from ser_ray.warmup import warm_up

        self.audio_cfg = from_dict(AudioConfig, audio_cfg)
        ext = dict(extractor)
        self.extractor = get_extractor(ext.pop("name"), **ext)
        warm_up([self.extractor])  # compile librosa's numba kernels one process at a time
        self.storage = io.Storage(from_dict(S3Config, s3))
        self.jobs = [(Chain.from_config(j["chain"], name=j.get("label")), j) for j in jobs]
        self.seed = seed
        self.max_bytes = int(self.audio_cfg.max_file_mb * 2**20)
        # prepare's block splitting + extraction reads only these attributes (every copy is
        # extracted on its own here, an encoder included: nothing is deferred).
        self._prep = types.SimpleNamespace(cfg=types.SimpleNamespace(audio=self.audio_cfg),
                                           extractors={self.extractor.name: self.extractor},
                                           batched=())

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from ser_ray.prepare import UnitProcessor

        sr = self.audio_cfg.sample_rate
        data = read_sources(self.storage, list(batch["uri"]), self.max_bytes)
        out: list[dict] = []
        for row in batch.to_dict("records"):
            uri, utt = row["uri"], row["utterance_id"]
            try:
                y = audio.condition(audio.decode(data[uri]), self.audio_cfg)
            except audio.AudioError as exc:
                raise AugmentError(f"augment: {uri} ({utt}) no longer decodes: {exc}; prepare "
                                   f"accepted it, so the file changed: rerun prepare") from None
            keep = {k: row[k] for k in KEEP_COLUMNS}
            for chain, job in self.jobs:
                y2 = chain(y, sr, row_rng(self.seed, utt, job["rng_copy"]))
                try:
                    blocks = UnitProcessor._features(self._prep, y2)[self.extractor.name]
                except audio.AudioError as exc:
                    raise AugmentError(f"augment: {uri} ({utt}) copy {job['copy']} of "
                                       f"{chain.name}: {exc}") from None
                for i, (start, end, arr) in enumerate(blocks):
                    out.append({**keep, "block_index": i, "start_s": start, "end_s": end,
                                "augment": chain.name, "copy": job["copy"],
                                **job.get("extra", {}),
                                "values": arr.astype(np.float32).tobytes(),
                                "shape": list(arr.shape)})
        return pd.DataFrame(out)


def _run(rows: pd.DataFrame, jobs: list[dict], audio_cfg: AudioConfig, extractor, seed: int,
         storage: io.Storage | None, num_workers: int | None,
         extra_columns: tuple[str, ...] = ()) -> tuple[list[np.ndarray], pd.DataFrame]:
    import ray
    from ray.data import ActorPoolStrategy

    from ser_ray.features import extractor_config
    from ser_ray.runtime import init_ray

    missing = [c for c in ("uri", *KEEP_COLUMNS) if c not in rows.columns]
    if missing:
        raise ValueError(f"augment: manifest rows lack column(s) {missing}; pass rows of the "
                         f"prepare run's manifest/ table")
    if seed < 0:
        raise ValueError(f"augment: seed={seed} must be >= 0")
    columns = [*META_COLUMNS, *extra_columns]
    if rows.empty:
        return [], pd.DataFrame(columns=columns)
    # Check the chains here, where a bad config fails fast, not inside an actor.
    for j in jobs:
        Chain.from_config(j["chain"])
    items = rows[["uri", *KEEP_COLUMNS]]
    items = items.astype(object).where(items.notna(), None)
    init_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = max(1, min(num_workers or cpus, len(items)))
    ds = ray.data.from_items(items.to_dict("records"),
                             override_num_blocks=min(len(items), 4 * workers))
    s3 = to_dict((storage or io.Storage()).s3cfg)
    try:
        out = ds.map_batches(
            AugmentWorker, batch_format="pandas", batch_size=None,
            fn_constructor_kwargs={"audio_cfg": to_dict(audio_cfg),
                                   "extractor": extractor_config(extractor), "jobs": jobs,
                                   "seed": int(seed), "s3": s3},
            compute=ActorPoolStrategy(size=workers), num_cpus=1).to_pandas()
    except Exception as exc:
        # Ray wraps a worker's error in its own; surface ours (it names the file) as itself.
        found = re.search(r"AugmentError: (augment: [^\n]*)", str(exc))
        if found:
            raise AugmentError(found.group(1)) from exc
        raise
    out = out.sort_values(["utterance_id", "block_index", "augment", "copy"],
                          kind="stable").reset_index(drop=True)
    xs = [np.frombuffer(v, dtype=np.float32).reshape([int(d) for d in s]).copy()
          for v, s in zip(out["values"], out["shape"])]
    meta = out[columns].copy()
    meta["block_index"] = meta["block_index"].astype(np.int32)
    meta["copy"] = meta["copy"].astype(np.int64)
    return xs, meta


def augmented_features(manifest_rows: pd.DataFrame, *, audio_cfg: AudioConfig, extractor,
                       chain: Chain | Sequence[dict], copies: int = 1, seed: int = 0,
                       storage: io.Storage | None = None, num_workers: int | None = None,
                       ) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Features of ``copies`` augmented copies of each manifest row, on a Ray actor pool.

    ``manifest_rows``: rows of prepare's manifest (uri, utterance_id, source_id, speaker, sex,
    corpus, label); ``audio_cfg``: the prepare run's AudioConfig, so copies are conditioned and
    split into blocks exactly like the originals. Returns (X, meta): X[i] is the float32 feature
    of meta row i; meta has :data:`META_COLUMNS` (``augment`` = chain name, ``copy`` = 0..copies-1)
    sorted by utterance_id, block_index, copy. Raises :class:`AugmentError` naming the uri of a
    file that no longer reads or decodes. Call it on training rows only.
    """
    if copies < 1:
        raise ValueError(f"augment: copies={copies} must be >= 1")
    chain = chain if isinstance(chain, Chain) else Chain.from_config(chain)
    jobs = [{"chain": chain.to_config(), "label": chain.name, "copy": k, "rng_copy": k}
            for k in range(copies)]
    return _run(manifest_rows, jobs, audio_cfg, extractor, seed, storage, num_workers)


def noisy_features(manifest_rows: pd.DataFrame, *, audio_cfg: AudioConfig, extractor,
                   noise: str | Sequence[str], snr_db: float | Sequence[float] = (15, 20, 40),
                   seed: int = 0, storage: io.Storage | None = None,
                   num_workers: int | None = None) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Noisy test sets: each row mixed with a noise-bank recording at each SNR in ``snr_db``.

    Same output as :func:`augmented_features` plus an ``snr_db`` column; ``augment`` is
    ``noise-snr<SNR>dB`` and ``copy`` 0. One utterance gets the same noise clip and offset at
    every SNR, so levels differ only in lambda.
    """
    snrs = [float(snr_db)] if isinstance(snr_db, (int, float)) else [float(s) for s in snr_db]
    if not snrs:
        raise ValueError("noisy_features: give at least one snr_db")
    noise_t = (noise,) if isinstance(noise, str) else tuple(noise)
    jobs = [{"chain": [{"name": "background_noise", "noise": list(noise_t), "snr_db": [s]}],
             "label": f"noise-snr{s:g}dB", "copy": 0, "rng_copy": 0, "extra": {"snr_db": s}}
            for s in snrs]
    return _run(manifest_rows, jobs, audio_cfg, extractor, seed, storage, num_workers,
                extra_columns=("snr_db",))
