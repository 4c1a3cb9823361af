"""Feature statistics and standardisation: fitted on training rows only and stored with the
model (training), gathered per unit of calls and added up (scoring). ``normalise`` modes and the
group each standardises by are config values (``ser_ray.config.NORMALISE_GROUPS``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def _reduce_axes(X: np.ndarray, time_axis: int | None) -> tuple[int, ...]:
    """Axes to average over: rows, plus the time axis of 2-D features (stats per channel)."""
    if time_axis is None:
        return (0,)
    # a 1-D signal (waveform): one mean and std; a 2-D feature: one per channel
    return (0, 1) if X.ndim == 2 else (0, 1 + time_axis)


STD_FLOOR = 1e-6


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a population of feature rows: value count, sum and sum of
    squares per channel (float64, shaped to broadcast against one row).

    The one implementation of feature statistics: training fits them on rows at once
    (:meth:`of`); the scoring job gathers them per unit of calls and adds them up (``+``), so a
    population of any size gives the same mean and std as if all its rows were in memory.
    """

    count: float
    sum: np.ndarray
    sumsq: np.ndarray

    @classmethod
    def of(cls, X: np.ndarray, time_axis: int | None) -> "Moments":
        axes = _reduce_axes(X, time_axis)
        x = np.asarray(X, dtype=np.float64)
        count = float(np.prod([X.shape[a] for a in axes])) if X.size else 0.0
        return cls(count, x.sum(axis=axes, keepdims=True)[0], np.square(x).sum(axis=axes, keepdims=True)[0])

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (population) std, float32; a std below 1e-6 is raised to 1e-6."""
        if self.count <= 0:
            raise ValueError("no feature values to take statistics of")
        mean = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - np.square(mean), 0.0)
        return mean.astype(np.float32), np.maximum(np.sqrt(var), STD_FLOOR).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"count": np.asarray([self.count]), "sum": self.sum, "sumsq": self.sumsq}

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> "Moments":
        return cls(float(np.asarray(d["count"]).reshape(-1)[0]), np.asarray(d["sum"], np.float64),
                   np.asarray(d["sumsq"], np.float64))


def moments(X: np.ndarray, time_axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``X`` (rows first), shaped to broadcast against one row."""
    return Moments.of(X, time_axis).mean_std()


def standardise(X: np.ndarray, mean: np.ndarray, std: np.ndarray | float) -> np.ndarray:
    """``(X - mean) / std`` as float32: every standardisation of features goes through here."""
    return ((X - mean) / std).astype(np.float32, copy=False)


def group_standardise(X: np.ndarray, groups: np.ndarray, time_axis: int | None) -> np.ndarray:
    """Standardise each group's rows (a speaker, a corpus) by that group's own moments.

    Uses no labels, only the group's own features, so it is legal on test speakers too: the
    literature's "speaker normalisation". A group of one row is only centred. The scoring job
    does not use this on a call alone (see ``score``: a reference population of calls).
    """
    out = np.empty(X.shape, np.float32)
    for g in pd.unique(groups):
        rows = groups == g
        mean, std = moments(X[rows], time_axis)
        out[rows] = standardise(X[rows], mean, std if rows.sum() > 1 else 1.0)
    return out
