"""Class-imbalance handling chosen by name: SMOTE, random oversampling, class weights.

Only ever call these on the TRAIN split of a fold (imbalanced-learn: "samplers are only applied
during fit"); callers split first with :mod:`ser_ray.learn.splits`, so no synthetic row is ever built
from a test recording. Resampling SMOTE before the split is the leak one published 2D-CNN result
made.

>>> X2, y2, origin = fit_resample("smote", X[fold.train], y[fold.train], seed=0)
>>> if SAMPLERS[method].weighted_loss: w = class_weights(y[fold.train], n_classes)

Policies for small inputs (documented choices):
- a class with fewer than ``k_neighbors + 1`` rows lowers SMOTE's k to its size - 1 (warning);
- a class with a single row cannot be interpolated: it is randomly oversampled (copies; warning);
- "smote" / "ros" on a single-class ``y`` raise ValueError (a one-class train split is a bug
  upstream); "none" / "class_weights" never change X or y.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from imblearn.over_sampling import SMOTE, RandomOverSampler
from sklearn.utils.class_weight import compute_class_weight

# (X (n, d), y (n,), seed, k_neighbors) -> (X2 (m, d), y2 (m,), origin (m,))
Resample = Callable[[np.ndarray, np.ndarray, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Sampler:
    name: str
    resample: Resample
    weighted_loss: bool = False  # leaves X/y alone; callers weight the loss with class_weights()


SAMPLERS: dict[str, Sampler] = {}


def _register(name: str, weighted_loss: bool = False):
    def deco(fn: Resample) -> Resample:
        SAMPLERS[name] = Sampler(name, fn, weighted_loss)
        return fn
    return deco


@_register("class_weights", weighted_loss=True)
@_register("none")
def _identity(X, y, seed, k_neighbors):
    return X, y, np.arange(len(y))


def _need_two_classes(y: np.ndarray, name: str) -> None:
    if np.unique(y).size < 2:
        raise ValueError(f"{name}: y has a single class ({y[0]}); there is nothing to balance - "
                         "check the split, or use method 'none'")


@_register("ros")
def _ros(X, y, seed, k_neighbors):
    _need_two_classes(y, "ros")
    ros = RandomOverSampler(random_state=seed)
    X2, y2 = ros.fit_resample(X, y)
    return X2, y2, ros.sample_indices_


@_register("smote")
def _smote(X, y, seed, k_neighbors):
    """Every class up to the majority count; originals first, then synthetic rows (origin -1)."""
    _need_two_classes(y, "smote")
    classes, counts = np.unique(y, return_counts=True)
    n_max = counts.max()
    grow = {c: n_max for c, n in zip(classes.tolist(), counts) if 2 <= n < n_max}
    single = {c: n_max for c, n in zip(classes.tolist(), counts) if n == 1 < n_max}
    X2, y2, origin = X, y, np.arange(len(y))
    if grow:
        n_min, c_min = min((counts[classes == c][0], c) for c in grow)
        k = min(k_neighbors, n_min - 1)
        if k < k_neighbors:
            warnings.warn(f"smote: class {c_min} has {n_min} rows, too few for "
                          f"k_neighbors={k_neighbors}; using k_neighbors={k}", stacklevel=3)
        X2, y2 = SMOTE(sampling_strategy=grow, k_neighbors=k, random_state=seed).fit_resample(X, y)
        origin = np.concatenate([origin, np.full(len(y2) - len(y), -1)])
    if single:
        warnings.warn(f"smote: class(es) {sorted(single)} have a single row; oversampling them "
                      "with copies instead", stacklevel=3)
        ros = RandomOverSampler(sampling_strategy=single, random_state=seed)
        ros.fit_resample(X, y)
        extra = ros.sample_indices_[len(y):]
        X2, y2 = np.concatenate([X2, X[extra]]), np.concatenate([y2, y[extra]])
        origin = np.concatenate([origin, extra])
    return X2, y2, origin


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown balancing method {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def fit_resample(method: str, X: np.ndarray, y: np.ndarray, *, seed: int = 0,
                 k_neighbors: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balance the train split X (n, *shape), y (n,) int -> (X2 (m, *shape), y2 (m,), origin (m,)).

    ``origin[i]`` is the row of X that output row i copies, or -1 for a synthetic SMOTE row, so
    callers can carry meta (speaker, source_id) along. >1-D X is flattened for the sampler and
    reshaped back; dtypes are kept. Same seed, same output.
    """
    sampler = get_sampler(method)
    X, y = np.asarray(X), np.asarray(y)
    if y.ndim != 1 or len(y) != len(X) or len(y) == 0:
        raise ValueError(f"{method}: need X (n, ...) and y (n,) with n > 0, "
                         f"got X {X.shape}, y {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{method}: y must hold integer class indices, got dtype {y.dtype}")
    if k_neighbors < 1:
        raise ValueError(f"{method}: k_neighbors must be >= 1, got {k_neighbors}")
    X2, y2, origin = sampler.resample(X.reshape(len(X), -1), y, seed, k_neighbors)
    X2 = np.asarray(X2).reshape(-1, *X.shape[1:]).astype(X.dtype, copy=False)
    return X2, np.asarray(y2, np.int64), np.asarray(origin, np.int64)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """float32 (n_classes,): n_samples / (n_present_classes * count_c) ("balanced"); 0 if absent."""
    y = np.asarray(y)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"class_weights: y holds indices outside [0, {n_classes}); "
                         "pass n_classes = len(labels)")
    w = np.zeros(n_classes, np.float32)
    present = np.unique(y)
    if present.size:
        w[present] = compute_class_weight("balanced", classes=present, y=y)
    return w


def balance_groups(groups: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Row positions that give every group (a corpus) as many rows as the largest: each row once,
    then random copies of rows of the smaller groups (imbalanced-learn's RandomOverSampler with
    the group as its target). One group: every row once, in order."""
    groups = np.asarray(groups).astype(str)
    idx = np.arange(len(groups))
    if len(set(groups)) < 2:
        return idx
    ros = RandomOverSampler(random_state=seed)
    out, _ = ros.fit_resample(idx.reshape(-1, 1), groups)
    return np.asarray(out[:, 0], dtype=np.int64)
