"""Urgency of a call from its scored analysis windows, and the ranking of calls by urgency.

Each window ``t`` of a call has a time span, a predicted ``label`` and class probabilities
``p_t(c)``. Every class has a weight ``w(c)`` (:class:`UrgencyConfig`; a label missing from the
weights weighs 0, and ``female_angry`` / ``male_angry`` fall back to the weight of ``angry``).
Classes with ``w > 0`` are *negative* (angry 1.0, frustrated 0.8, sad 0.8, fearful 0.6,
disgust 0.4), classes with ``w < 0`` are *calming* (calm -0.3, happy -0.1), neutral is 0.

- negative emotion of a window: ``n_t = sum over c with w(c) > 0 of w(c) * p_t(c)`` (0..1 with
  the default weights: the severity-weighted probability that the caller is upset);
- calm of a window: ``k_t = sum over c with w(c) < 0 of -w(c) * p_t(c)``;
- ``d_t``: the seconds of speech window ``t`` adds to the call (overlapping windows are not
  counted twice); ``T = sum of d_t`` is the call's scored speech time.

Four terms, each in [0, 1] with the default weights:

- **intensity** ``I = max_t n_t``: how upset the caller sounded at the worst moment;
- **share** ``S = sum_t d_t * max(w(label_t), 0) / T``: how much of the call was spent in a
  negative emotion, by the predicted label, weighted by how severe that emotion is;
- **sustain** ``R = min(L / sustain_ref_s, 1)``, where ``L`` is the longest run, in seconds, of
  consecutive windows labelled with a negative emotion (a gap over ``max_gap_s`` or a window
  with another label ends a run): anger held for half a minute outranks scattered flashes;
- **calm** ``C = sum_t d_t * k_t / T``: how calm the call sounded on average.

A window labelled ``uncertain`` (its calibrated top probability is below the model's "not sure"
threshold) counts in ``T`` but adds neither anger nor calm: its ``n_t`` and ``k_t`` are 0 and its
label weighs 0. ``uncertain_share`` is the share of ``T`` spent in such windows.

    urgency_score = a_intensity * I + a_share * S + a_sustain * R - a_calm * C

with every ``a`` = 1 by default, so the score lies in [-0.3, 3]. A call with no scored speech
scores 0, like an all-neutral call. Calls are ranked by descending score (rank 1 = call back
first); equal scores are ordered by ``call_id`` so a rerun gives the same ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ser_ray.labels import SEXES, UNCERTAIN

PROB_PREFIX = "prob_"  # segments carry one probability column per class: prob_<label>

DEFAULT_WEIGHTS: dict[str, float] = {
    "angry": 1.0, "frustrated": 0.8, "sad": 0.8, "fearful": 0.6, "disgust": 0.4,
    "neutral": 0.0, "surprised": 0.0, "boredom": 0.0, "excited": 0.0,
    "happy": -0.1, "calm": -0.3,
}


@dataclass(frozen=True)
class UrgencyConfig:
    """Weights of the urgency formula (see the module docstring).

    ``weights`` is merged over :data:`DEFAULT_WEIGHTS` (so ``--set urgency.weights.sad=1.0``
    changes one weight and keeps the rest); set a label to 0 to take it out of the formula.
    Labels in neither weigh 0.
    """

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS), hash=False)
    intensity: float = 1.0
    share: float = 1.0
    sustain: float = 1.0
    calm: float = 1.0
    sustain_ref_s: float = 30.0  # a negative run this long earns the whole sustain term
    max_gap_s: float = 1.0       # windows further apart than this (a pause, the agent talking) end a run

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", {**DEFAULT_WEIGHTS, **self.weights})
        bad = {k: v for k, v in self.weights.items() if not math.isfinite(float(v))}
        if bad:
            raise ValueError(f"urgency weights must be finite numbers, got {bad}")
        if not self.sustain_ref_s > 0 or self.max_gap_s < 0:
            raise ValueError(f"urgency: need sustain_ref_s > 0 and max_gap_s >= 0, "
                             f"got {self.sustain_ref_s} and {self.max_gap_s}")

    def weight(self, label: str) -> float:
        """Weight of ``label``; ``<sex>_<label>`` falls back to ``<label>``; unknown labels weigh 0."""
        if label in self.weights:
            return float(self.weights[label])
        sex, _, rest = str(label).partition("_")
        return float(self.weights.get(rest, 0.0)) if sex in SEXES else 0.0


def negative_emotion(probs: np.ndarray, labels: Sequence[str], cfg: UrgencyConfig | None = None
                     ) -> np.ndarray:
    """``n_t`` of each window: ``probs`` (windows x labels, in ``labels`` order) -> (windows,)."""
    cfg = UrgencyConfig() if cfg is None else cfg
    w = np.array([cfg.weight(label) for label in labels], dtype=float)
    return np.asarray(probs, dtype=float).reshape(-1, len(labels)) @ np.clip(w, 0, None)


def call_summary(segments: pd.DataFrame, labels: Sequence[str], cfg: UrgencyConfig | None = None, *,
                 prob_prefix: str = PROB_PREFIX) -> dict[str, float]:
    """Summary of one call's scored windows.

    ``segments`` has ``start_s``, ``end_s`` (seconds), ``label`` and one ``<prob_prefix><label>``
    column per entry of ``labels`` (other columns, such as ``confidence``, are ignored).
    Returns (seconds, shares in [0, 1]):
    ``speech_s`` (T), ``share_<label>`` per label (time with that predicted label / T),
    ``negative_peak`` (I), ``negative_mean`` (time-weighted mean of n_t), ``negative_share`` (S),
    ``longest_negative_s`` (L), ``calm_mean`` (C), ``peak_start_s`` (start of the window with the
    highest n_t, earliest on ties; NaN without windows) and ``urgency_score``.
    """
    cfg = UrgencyConfig() if cfg is None else cfg
    prob_cols = [f"{prob_prefix}{label}" for label in labels]
    missing = [c for c in ("start_s", "end_s", "label", *prob_cols) if c not in segments.columns]
    if missing:
        raise ValueError(f"call_summary: segments lack columns {missing}; they have {list(segments.columns)}")
    out: dict[str, float] = {"speech_s": 0.0, **{f"share_{label}": 0.0 for label in labels},
                             "uncertain_share": 0.0,
                             "negative_peak": 0.0, "negative_mean": 0.0, "negative_share": 0.0,
                             "longest_negative_s": 0.0, "calm_mean": 0.0, "peak_start_s": float("nan"),
                             "urgency_score": 0.0}
    if segments.empty:
        return out

    seg = segments.sort_values(["start_s", "end_s"], kind="mergesort")
    start, end = seg["start_s"].to_numpy(float), seg["end_s"].to_numpy(float)
    probs = seg[prob_cols].to_numpy(float)
    if not (np.isfinite(start).all() and np.isfinite(end).all() and (end > start).all()):
        raise ValueError("call_summary: every segment needs finite start_s < end_s (seconds)")
    if not np.isfinite(probs).all():
        raise ValueError(f"call_summary: probability columns {prob_cols} contain NaN or inf")
    seg_labels = seg["label"].astype(str).to_numpy()

    # A "not sure" window (label UNCERTAIN) adds neither anger nor calm: its n_t and k_t are 0.
    sure = seg_labels != UNCERTAIN
    negative = negative_emotion(probs, labels, cfg) * sure  # n_t
    w = np.array([cfg.weight(label) for label in labels])
    calm = (probs @ np.clip(-w, 0, None)) * sure            # k_t
    label_w = np.array([cfg.weight(label) for label in seg_labels])
    # Time each window adds beyond the windows before it: overlapping hops are counted once.
    covered = np.maximum.accumulate(end)
    own = np.clip(end - np.maximum(start, np.concatenate([[-np.inf], covered[:-1]])), 0, None)
    total = own.sum()

    peak = int(np.argmax(negative))  # first maximum = earliest, since windows are sorted by start
    share_neg = float(own @ np.clip(label_w, 0, None) / total)
    longest = _longest_run(start, end, label_w > 0, cfg.max_gap_s)
    calm_mean = float(own @ calm / total)
    out.update({
        "speech_s": float(total),
        **{f"share_{label}": float(own[seg_labels == label].sum() / total) for label in labels},
        "uncertain_share": float(own[~sure].sum() / total),
        "negative_peak": float(negative[peak]),
        "negative_mean": float(own @ negative / total),
        "negative_share": share_neg,
        "longest_negative_s": longest,
        "calm_mean": calm_mean,
        "peak_start_s": float(start[peak]) if sure.any() else float("nan"),
        "urgency_score": float(cfg.intensity * negative[peak] + cfg.share * share_neg
                               + cfg.sustain * min(longest / cfg.sustain_ref_s, 1.0) - cfg.calm * calm_mean),
    })
    return out


def _longest_run(start: np.ndarray, end: np.ndarray, flagged: np.ndarray, max_gap_s: float) -> float:
    """Longest time span, in seconds, covered by consecutive flagged windows (sorted by start)."""
    best, run_start, run_end = 0.0, None, -math.inf
    for s, e, f in zip(start, end, flagged):
        if not f:
            run_start = None
            continue
        if run_start is None or s - run_end > max_gap_s:
            run_start, run_end = s, e
        run_end = max(run_end, e)
        best = max(best, run_end - run_start)
    return float(best)


def rank(calls: pd.DataFrame, score: str = "urgency_score", by: str | Sequence[str] = "call_id") -> pd.Series:
    """``urgency_rank`` of each row of ``calls`` (aligned with its index): 1 = most urgent.

    Higher ``score`` ranks first; equal scores are ordered by the ``by`` column(s) ascending, so
    the ranks do not depend on row order; rows without a score (NaN) come last.
    """
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in (score, *by) if c not in calls.columns]
    if missing:
        raise ValueError(f"rank: calls lack columns {missing}; they have {list(calls.columns)}")
    values = pd.to_numeric(calls[score], errors="raise").astype(float).to_numpy()
    keys = pd.DataFrame({"_unscored": np.isnan(values), "_neg": -np.nan_to_num(values, nan=0.0),
                         **{f"_by{i}": calls[c].to_numpy() for i, c in enumerate(by)},
                         "_pos": np.arange(len(calls))})
    order = keys.sort_values(list(keys.columns), kind="mergesort")["_pos"].to_numpy()
    ranks = np.empty(len(calls), dtype=np.int64)
    ranks[order] = np.arange(1, len(calls) + 1)
    return pd.Series(ranks, index=calls.index, name="urgency_rank")
