"""Calibrated class probabilities: temperature scaling (Guo et al., 2017) on any model's
probabilities.

``softmax(log p / T)`` with one temperature ``T`` fitted by minimising the negative log-likelihood
of held-out predictions. For a torch model ``log p`` is its logits up to a constant per row, so
this is temperature scaling of the logits; for a scikit-learn pipeline it rescales its
``predict_proba`` the same way. One parameter cannot reorder a row's classes, so the arg-max,
and with it UA and WA of single-window predictions, never changes. A class a model never
trained on keeps probability 0.

A calibrator is plain JSON in the model folder (``calibration.json``), never pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("none", "temperature")
_FLOOR = 1e-12


@dataclass(frozen=True)
class Temperature:
    """``softmax(log p / temperature)``; ``n`` is how many held-out rows it was fitted on.

    ``uncertain_below``: a prediction whose calibrated top probability is below it is "not
    sure" (chosen on the same held-out rows so that ``coverage`` of them are answered)."""

    temperature: float = 1.0
    n: int = 0
    method: str = "temperature"
    uncertain_below: float | None = None
    coverage: float | None = None

    def __post_init__(self):
        if not np.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"calibration: temperature={self.temperature} must be > 0")
        if self.uncertain_below is not None and not 0 <= self.uncertain_below <= 1:
            raise ValueError(f"calibration: uncertain_below={self.uncertain_below} must be in "
                             f"[0, 1]")

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, float32, rows summing to 1 over the classes ``proba`` gives
        any probability; zero columns stay zero."""
        p = np.asarray(proba, dtype=np.float64)
        if p.size == 0 or self.temperature == 1.0:
            return p.astype(np.float32)
        live = p > 0
        z = np.where(live, np.log(np.maximum(p, _FLOOR)) / self.temperature, -np.inf)
        z = z - z.max(axis=1, keepdims=True)
        e = np.where(live, np.exp(z), 0.0)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Temperature":
        if data.get("method") != "temperature":
            raise ValueError(f"calibration.json: method {data.get('method')!r} is not one this "
                             f"ser-ray applies ({METHODS[1:]})")
        below = data.get("uncertain_below")
        return cls(float(data["temperature"]), int(data.get("n", 0)),
                   uncertain_below=None if below is None else float(below),
                   coverage=data.get("coverage"))

    def answered(self, proba: np.ndarray) -> np.ndarray:
        """Which rows of (calibrated) ``proba`` are answered: top probability >= the threshold."""
        p = np.asarray(proba)
        if self.uncertain_below is None:
            return np.ones(len(p), dtype=bool)
        return p.max(axis=1) >= self.uncertain_below


def nll(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities floored at 1e-12)."""
    p = np.asarray(proba, dtype=np.float64)[np.arange(len(y)), np.asarray(y, dtype=int)]
    return float(-np.mean(np.log(np.maximum(p, _FLOOR)))) if len(y) else float("nan")


def fit_temperature(proba: np.ndarray, y: np.ndarray, *, low: float = 0.05,
                    high: float = 20.0, coverage: float | None = None) -> Temperature:
    """The temperature in [low, high] that minimises the NLL of ``y`` under ``proba`` (rows of
    held-out predictions: out-of-fold predictions of training speakers, never test rows); with
    ``coverage``, also the "not sure" threshold that answers that share of those rows."""
    from scipy.optimize import minimize_scalar

    proba, y = np.asarray(proba, dtype=np.float64), np.asarray(y, dtype=int)
    if len(y) == 0:
        raise ValueError("calibration: no held-out predictions to fit a temperature on")
    if len(np.unique(y)) < 2:
        t = Temperature(1.0, len(y))  # one class: nothing to calibrate against
    else:
        found = minimize_scalar(
            lambda logt: nll(Temperature(float(np.exp(logt))).apply(proba), y),
            bounds=(np.log(low), np.log(high)), method="bounded", options={"xatol": 1e-4})
        t = Temperature(float(np.exp(found.x)), len(y))
    if coverage is None:
        return t
    return Temperature(t.temperature, t.n, uncertain_below=threshold_for(t.apply(proba), coverage),
                       coverage=float(coverage))


def threshold_for(proba: np.ndarray, coverage: float) -> float:
    """The top-probability threshold that answers ``coverage`` of the rows of ``proba`` (the
    rest are "not sure"): the (1 - coverage) quantile of their top probabilities."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage={coverage} must be in (0, 1]")
    top = np.asarray(proba, dtype=np.float64).max(axis=1)
    return 0.0 if coverage >= 1 or not len(top) else float(np.quantile(top, 1 - coverage))
