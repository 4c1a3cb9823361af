"""Extractor registry and the base config every feature extractor shares.

An extractor is a frozen dataclass (its config) with a pure ``__call__(y, sr) -> np.ndarray``.
Implementations are chosen by registered name, never by if/elif, and a run writes
``extractor_config(e)`` next to its outputs so the features can be recomputed exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np

from ser_ray.ranges import check_ranges
from ser_ray.registry import registrar

_REGISTRY: dict[str, type["Extractor"]] = {}

E = TypeVar("E", bound=type["Extractor"])


@dataclass(frozen=True)
class Extractor:
    """Base config: subclasses add their parameters and implement :meth:`compute`."""

    name: ClassVar[str] = ""
    # False for extractors that need weights from the user (the install-time warm-up skips them)
    warm_at_install: ClassVar[bool] = True
    # Split audio into blocks of this many seconds before extraction; the pipeline does the
    # splitting (one output row per block); the extractor only sees one block. None = whole clip.
    block_s: float | None = None
    # Rate the frame/hop sizes are expressed at; input at another rate is rejected, not resampled.
    sample_rate: int = 16000

    @property
    def expected_sr(self) -> int | None:
        """Sample rate the input must have, or None when the extractor copes with any rate."""
        return self.sample_rate

    def min_samples(self, sr: int) -> int:
        """Shortest input, in samples at ``sr``, that yields a meaningful output."""
        return 1

    def load(self) -> None:
        """Load what the extractor computes with (pretrained weights) now rather than on its
        first clip; a no-op for extractors without weights."""

    def compute(self, y: np.ndarray, sr: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, y: np.ndarray, sr: int) -> np.ndarray:
        """Validate mono float audio ``y`` at ``sr`` Hz; returns it as float32."""
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(
                f"{self.name}: expected mono 1-D audio, got shape {y.shape}; downmix first"
            )
        if not np.issubdtype(y.dtype, np.floating):
            raise ValueError(f"{self.name}: expected float audio in [-1, 1], got dtype {y.dtype}")
        if self.expected_sr is not None and sr != self.expected_sr:
            raise ValueError(
                f"{self.name}: input is {sr} Hz but the config expects {self.expected_sr} Hz; "
                f"resample the audio first or set sample_rate={sr}"
            )
        need = self.min_samples(sr)
        if len(y) < need:
            raise ValueError(
                f"{self.name}: input has {len(y)} samples ({len(y) / sr:.4f} s) but needs at least "
                f"{need} ({need / sr:.4f} s); drop or pad such clips"
            )
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{self.name}: input contains NaN or inf samples")
        return y.astype(np.float32, copy=False)

    def _finite(self, out, n: int) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{self.name}: produced non-finite values for a {n}-sample input")
        return out

    def __call__(self, y: np.ndarray, sr: int) -> np.ndarray:
        """Validate mono float audio ``y`` at ``sr`` Hz and return the finite float32 feature."""
        y = self.check(y, sr)
        return self._finite(self.compute(y, sr), len(y))

    def compute_many(self, ys: list[np.ndarray], sr: int) -> list[np.ndarray]:
        """Several clips at once; extractors that batch (a neural encoder) override this."""
        return [self.compute(y, sr) for y in ys]

    def many(self, ys, sr: int) -> list[np.ndarray]:
        """``[self(y, sr) for y in ys]``, computed in batches where the extractor can."""
        ys = [self.check(y, sr) for y in ys]
        return [self._finite(o, len(y)) for o, y in zip(self.compute_many(ys, sr), ys)]


def _check_choice(owner: str, field: str, value, choices) -> None:
    """Reject a config value outside ``choices`` with a message listing them."""
    if value not in choices:
        raise ValueError(f"{owner}: {field}={value!r} is not one of {list(choices)}")


register = registrar(_REGISTRY, "extractor")  # class decorator: register(name)


def available() -> list[str]:
    """Registered extractor names, sorted."""
    return sorted(_REGISTRY)


def extractor_doc(name: str) -> str:
    """The docstring of extractor ``name``'s config class (what it computes, its shape)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown extractor {name!r}; available: {available()}")
    return _REGISTRY[name].__doc__ or ""


def get_extractor(name: str, **overrides) -> Extractor:
    """Build the extractor registered as ``name`` with config fields replaced by ``overrides``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown extractor {name!r}; available: {available()}")
    cls = _REGISTRY[name]
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"extractor {name!r} has no field(s) {unknown}; valid fields: {fields}")
    extractor = cls(**overrides)
    check_ranges(extractor)  # n_mfcc=0, hop_length=0, ...: fail here, before any audio
    return extractor


def extractor_config(e: Extractor) -> dict:
    """Resolved config of ``e`` as a plain dict, with its registered name under ``"name"``."""
    return {"name": e.name, **dataclasses.asdict(e)}
