"""Waveform augmentation steps: chains of named steps applied to mono float32 audio.

A step is a frozen dataclass (its config, with ``p`` = probability of applying it) registered by
name; a :class:`Chain` applies steps in order: ``chain(y, sr, rng) -> y`` on mono float32 audio.

Randomness is explicit. Every draw comes from the ``np.random.Generator`` passed in, and each
step gets its own child generator (``rng.spawn``), so changing one step's parameters never
shifts another step's draws. audiomentations (shift, stretch, pitch, gain) draws its parameters
from the global ``random`` module, so we draw the value ourselves and build the transform with


``min == max`` and ``p=1``: its own draw then returns our value exactly, and the global state it
consumes is saved and restored around the call. Its Gaussian noise uses numpy's global RNG for
the samples, so that step (and uniform noise) is written here with the Generator instead."""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from ser_ray.config import from_dict, to_dict
from ser_ray.learn.augment.noise import mix_at_snr, noise_bank
from ser_ray.registry import registrar

_STEPS: dict[str, type["Step"]] = {}


register_step = registrar(_STEPS, "augment step")  # class decorator: register_step(name)


def available_steps() -> list[str]:
    """Registered step names, sorted."""
    return sorted(_STEPS)


def step_class(name: str) -> type["Step"]:
    """The config class registered as step ``name`` (its docstring describes the step)."""
    if name not in _STEPS:
        raise ValueError(f"unknown augment step {name!r}; available: {available_steps()}")
    return _STEPS[name]


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
