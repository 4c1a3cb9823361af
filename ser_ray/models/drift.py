"""What a model's training data looked like, kept in its folder so a scoring night can ask
"does tonight's audio look like this?" (``ser_ray.score.drift`` asks it).

A :class:`DriftReference` is fitted on the rows the head was trained on, as the head sees them
(after any speaker or corpus normalisation; augmented copies included, since the model learnt
from them), each row pooled to one vector (:func:`pool`). It holds:

- per-feature moments and decile edges with the training share in each bin, for a population
  stability index (PSI) per feature;
- an out-of-distribution score: the Mahalanobis distance of a row from the training rows, in
  the principal components of the standardised rows with a Ledoit-Wolf covariance (scikit-learn);
  the threshold is the 99th percentile of distances of *held-out* training speakers (each fold's
  model fitted on the other speakers), so about 1 % of windows from new speakers of the training
  domain lie beyond it; distances of the rows a model was fitted on would be optimistic;
- the training class shares, and the input sample rates and codecs when the manifest had them.

Stored as ``drift.safetensors`` (arrays) and ``drift.json`` (plain JSON): no pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

BINS = 10
MAX_COMPONENTS = 128
PERCENTILE = 99.0
MAX_FOLDS = 5
_EPS = 1e-4
ARRAYS = ("mean", "std", "pca_mean", "components", "location", "precision", "edges", "shares")
FILES = ("drift.json", "drift.safetensors")


def pool(X: np.ndarray, time_axis: int | None) -> np.ndarray:
    """Rows -> one vector each (n, d), float64: a row as it is, or, for a feature over time (and
    a waveform), its mean and std over time per channel."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if time_axis is None:
        return X.reshape(n, -1)
    axis = 1 if X.ndim == 2 else 1 + time_axis
    return np.concatenate([X.mean(axis).reshape(n, -1), X.std(axis).reshape(n, -1)], axis=1)


@dataclass
class _Core:
    """Standardisation, principal axes and a shrunk covariance of pooled rows."""

    mean: np.ndarray
    std: np.ndarray
    pca_mean: np.ndarray
    components: np.ndarray
    location: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, V: np.ndarray) -> "_Core":
        from sklearn.covariance import LedoitWolf
        from sklearn.decomposition import PCA

        mean = V.mean(0)
        std = np.maximum(V.std(0), 1e-6)
        Z = (V - mean) / std
        k = max(1, min(V.shape[1], len(V) - 1, MAX_COMPONENTS))
        pca = PCA(n_components=k, random_state=0).fit(Z)
        P = (Z - pca.mean_) @ pca.components_.T
        lw = LedoitWolf().fit(P)
        return cls(mean, std, pca.mean_, pca.components_, lw.location_, lw.precision_)

    def distance(self, V: np.ndarray) -> np.ndarray:
        if not len(V):
            return np.zeros(0)
        P = ((V - self.mean) / self.std - self.pca_mean) @ self.components.T
        D = P - self.location
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", D, self.precision, D), 0.0))


@dataclass
class DriftReference:
    """A model's training reference (see the module doc). ``folds``: speaker folds the
    threshold was measured on (0: too few speakers, measured on the fitted rows)."""

    core: _Core
    edges: np.ndarray            # (d, BINS - 1) interior decile edges per feature
    shares: np.ndarray           # (d, BINS) training share per bin
    threshold: float
    time_axis: int | None = None
    n: int = 0
    folds: int = 0
    percentile: float = PERCENTILE
    class_shares: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.edges.shape[0])

    # -- fitting ------------------------------------------------------------------------------
    @classmethod
    def fit(cls, X: np.ndarray, groups: Sequence[Any], y: Sequence[int], labels: Sequence[str],
            time_axis: int | None, inputs: dict[str, dict[str, float]] | None = None) -> "DriftReference":
        """Fit on training rows ``X`` (as the head sees them) with their speakers ``groups`` and
        label indices ``y`` (the original rows' labels, before any balancing)."""
        V = pool(X, time_axis)
        if len(V) < 2:
            raise ValueError("a drift reference needs at least two training rows")
        core = _Core.fit(V)
        groups = np.asarray([str(g) for g in groups])
        n_folds = min(MAX_FOLDS, len(set(groups)))
        if n_folds >= 2:
            from sklearn.model_selection import GroupKFold

            held = np.empty(len(V))
            for tr, te in GroupKFold(n_splits=n_folds).split(V, groups=groups):
                held[te] = _Core.fit(V[tr]).distance(V[te])
        else:
            held, n_folds = core.distance(V), 0
        edges = np.quantile(V, np.linspace(0, 1, BINS + 1)[1:-1], axis=0).T.copy()
        y = np.asarray(y, dtype=int)
        counts = np.bincount(y, minlength=len(labels)) if len(y) else np.zeros(len(labels))
        ref = cls(core, edges, np.zeros((V.shape[1], BINS)), float(np.percentile(held, PERCENTILE)),
                  time_axis, len(V), n_folds, PERCENTILE,
                  {lab: float(c / max(counts.sum(), 1)) for lab, c in zip(labels, counts)},
                  inputs or {})
        ref.shares = ref._bins(V) / len(V)
        return ref

    # -- applying -----------------------------------------------------------------------------
    def distance(self, X: np.ndarray) -> np.ndarray:
        """Each row's distance from the training rows (beyond ``threshold``: out of distribution)."""
        return self.core.distance(pool(X, self.time_axis))

    def bin_counts(self, X: np.ndarray) -> np.ndarray:
        """(d, BINS) counts of rows per feature and training decile: add them up over a night."""
        return self._bins(pool(X, self.time_axis))

    def _bins(self, V: np.ndarray) -> np.ndarray:
        out = np.zeros((self.n_features, BINS), dtype=np.int64)
        for j in range(self.n_features):
            out[j] = np.bincount(np.searchsorted(self.edges[j], V[:, j], side="right"),
                                 minlength=BINS)
        return out

    def psi(self, counts: np.ndarray) -> np.ndarray:
        """Population stability index of each feature: ``sum((p - q) * ln(p / q))`` over the
        deciles, p tonight's shares, q training's (both floored at 1e-4)."""
        counts = np.asarray(counts, dtype=np.float64)
        total = counts.sum(axis=1, keepdims=True)
        p = np.maximum(counts / np.maximum(total, 1), _EPS)
        q = np.maximum(self.shares, _EPS)
        return ((p - q) * np.log(p / q)).sum(axis=1)

    def psi_by_chance(self, n: int) -> float:
        """The PSI two samples of one population give on average, one of ``n`` rows and the
        training rows: about (bins - 1)(1/n + 1/m), the chi-square approximation."""
        return (self.shares.shape[1] - 1) * (1 / max(n, 1) + 1 / max(self.n, 1))

    # -- the model folder ---------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"method": "mahalanobis (PCA + Ledoit-Wolf) on pooled head inputs",
                "threshold": self.threshold, "percentile": self.percentile, "n": self.n,
                "threshold_folds": self.folds, "components": int(self.core.components.shape[0]),
                "features": self.n_features, "bins": BINS, "time_axis": self.time_axis,
                "class_shares": self.class_shares, "inputs": self.inputs}

    def save(self, folder: str | Path) -> None:
        from safetensors.numpy import save_file

        folder = Path(folder)
        c = self.core
        arrays = {"mean": c.mean, "std": c.std, "pca_mean": c.pca_mean, "components": c.components,
                  "location": c.location, "precision": c.precision, "edges": self.edges,
                  "shares": self.shares}
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
                  str(folder / "drift.safetensors"))
        (folder / "drift.json").write_text(json.dumps(self.meta(), indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "DriftReference | None":
        """The folder's reference, or None when it has none (a model trained before ser-ray
        kept one)."""
        folder = Path(folder)
        if not all((folder / f).is_file() for f in FILES):
            return None
        return cls.from_files({f: (folder / f).read_bytes() for f in FILES})

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "DriftReference | None":
        """The same from a model folder's files as bytes (``score.model.ModelInfo.files``)."""
        from safetensors.numpy import load

        if not all(f in files for f in FILES):
            return None
        meta = json.loads(files["drift.json"])
        a = {k: v.astype(np.float64) for k, v in load(files["drift.safetensors"]).items()}
        missing = [k for k in ARRAYS if k not in a]
        if missing:
            raise ValueError(f"drift.safetensors lacks {missing}; the model folder was altered")
        core = _Core(a["mean"], a["std"], a["pca_mean"], a["components"], a["location"], a["precision"])
        return cls(core, a["edges"], a["shares"], float(meta["threshold"]), meta.get("time_axis"),
                   int(meta.get("n", 0)), int(meta.get("threshold_folds", 0)),
                   float(meta.get("percentile", PERCENTILE)), dict(meta.get("class_shares") or {}),
                   dict(meta.get("inputs") or {}))
