"""One fold's training side and fit: augmentation copies of training recordings,
normalisation statistics, corpus and class balancing (in that order, on training rows only),
then the model's fit as the :class:`~ser_ray.models.artifact.Predictor` every prediction uses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ser_ray.config import NORMALISE_GROUPS, LearnConfig
from ser_ray.console import logger
from ser_ray.features.inputs import join_features
from ser_ray.learn import balance, splits
from ser_ray.learn.data import FeatureData
from ser_ray.normalise import group_standardise, moments, standardise


log = logger()


def takes_raw_input(model: str) -> bool:
    """Models fed the waveform itself, which their pretrained encoder normalises."""
    from ser_ray.models import get_model_spec

    return getattr(get_model_spec(model).config, "saves_backbone", False)


def is_torch(model: str) -> bool:
    from ser_ray.models import get_model_spec

    return get_model_spec(model).kind == "torch"


@dataclass
class Prepared:
    """A fold's model inputs after augmentation, normalisation and balancing.

    The test side is not here: its rows go untouched to :func:`predict_rows`, which normalises
    them as every other prediction is normalised (the statistics in ``norm``).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    meta_train: pd.DataFrame                 # one row per training row (synthetic SMOTE: source_id "")
    X_val: np.ndarray
    y_val: np.ndarray
    norm: dict[str, np.ndarray]              # statistics fitted on the training rows only
    class_weights: np.ndarray | None


def with_noise_dir(cfg: LearnConfig) -> list[dict[str, Any]]:
    """The training chain (``augment.steps``, else METHODS.md's); a ``background_noise`` step
    that names no ``noise`` draws from ``noise_dir``, the bank the noisy test sets use."""
    from ser_ray.learn import augment

    steps = [dict(s) for s in cfg.augment.steps] or list(augment.DEFAULT_CHAIN)
    for s in steps:
        if s.get("name") == "background_noise" and not s.get("noise") and cfg.noise_dir:
            s["noise"] = [cfg.noise_dir]
    return steps


class Augmenter:
    """Augmented copies of recordings, computed once per run and reused by every fold."""

    def __init__(self, data: FeatureData, cfg: LearnConfig, roots: Sequence[str]):
        self.data, self.cfg, self.roots = data, cfg, roots
        self._X: np.ndarray | None = None
        self._meta: pd.DataFrame | None = None

    def compute(self, utterance_ids: set[str]) -> None:
        from ser_ray.learn import augment
        from ser_ray.features.inputs import extractor_from_settings
        from ser_ray.learn.data import manifest
        from ser_ray.config import AudioConfig, from_dict

        fc = self.data.feature_config
        rows = manifest(self.roots)
        rows = rows[rows["utterance_id"].isin(utterance_ids)].reset_index(drop=True)
        chain = augment.Chain.from_config(with_noise_dir(self.cfg))
        log(f"augmenting {len(rows)} training recordings x {self.cfg.augment.copies} "
            f"({chain.name})")
        arrays, meta = augment.augmented_features(
            rows, audio_cfg=from_dict(AudioConfig, fc["audio"]),
            extractor=[extractor_from_settings(fc["extractors"][n]) for n in fc["features"]],
            chain=chain, copies=self.cfg.augment.copies, seed=self.cfg.seed)
        arrays = join_features(fc, list(zip(*arrays))) if arrays else []
        self._X = np.stack(arrays).astype(np.float32) if arrays else \
            np.zeros((0, *self.data.X.shape[1:]), np.float32)
        label_of = dict(zip(self.data.meta["utterance_id"], self.data.meta["label"]))
        meta = meta.assign(label=meta["utterance_id"].map(label_of))
        self._meta = meta.reset_index(drop=True)

    def rows_for(self, source_ids: set[str], layers: dict[str, Any] | None = None
                 ) -> tuple[np.ndarray, pd.DataFrame]:
        """The copies of ``source_ids``; with every hidden state computed (``select.layers``),
        the states ``layers`` picks, as the fold's own rows were picked."""
        from ser_ray.features.inputs import from_every_state

        keep = self._meta["source_id"].isin(source_ids).to_numpy()
        return from_every_state(self._X[keep], layers), self._meta[keep].reset_index(drop=True)


def _group_norm(X: np.ndarray, meta: pd.DataFrame, cfg: LearnConfig, time_axis) -> np.ndarray:
    col = NORMALISE_GROUPS[cfg.normalise]
    return X if col is None or len(X) == 0 else group_standardise(X, meta[col].to_numpy(), time_axis)


def head_rows(data: FeatureData, train_idx: np.ndarray, cfg: LearnConfig,
              augmenter: Augmenter | None) -> tuple[np.ndarray, pd.DataFrame, dict[str, np.ndarray]]:
    """The training rows as the head's input (what ``predict_proba`` is given): the rows of
    ``train_idx`` with their augmented copies, speaker or corpus normalised; before balancing
    and before a torch model's global standardisation. Returns (X, meta, population moments)."""
    time_axis = data.feature_config.get("time_axis")
    raw = takes_raw_input(cfg.model)
    if raw and NORMALISE_GROUPS[cfg.normalise] is not None:
        raise ValueError(f"{cfg.model} normalises its own input (its encoder's feature "
                         f"extractor); use normalise=global or none, not {cfg.normalise}")
    X_tr, meta_tr = data.X[train_idx], data.meta.iloc[train_idx].reset_index(drop=True)
    norm: dict[str, np.ndarray] = {}
    if NORMALISE_GROUPS[cfg.normalise] is not None:
        norm["population_mean"], norm["population_std"] = moments(X_tr, time_axis)
    if augmenter is not None and cfg.augment.variant != "none":
        X_aug, meta_aug = augmenter.rows_for(set(meta_tr["source_id"]),
                                             data.feature_config.get("layers"))
        if cfg.augment.variant == "augmented":
            X_tr, meta_tr = X_aug, meta_aug
        else:
            X_tr = np.concatenate([X_tr, X_aug])
            meta_tr = pd.concat([meta_tr, meta_aug], ignore_index=True)
    return _group_norm(X_tr, meta_tr, cfg, time_axis), meta_tr, norm


def drift_reference(data: FeatureData, idx: np.ndarray, cfg: LearnConfig,
                    augmenter: Augmenter | None):
    """The training reference a model folder keeps for drift checks (``models.drift``), fitted on
    the head's input rows of ``idx`` (:func:`head_rows`), with the input sample rates and codecs
    of those rows when their manifest recorded them."""
    from ser_ray.models.drift import DriftReference

    X, meta, _ = head_rows(data, idx, cfg, augmenter)
    own = data.meta.iloc[idx]
    inputs = {col: {str(k): float(v) for k, v in own[col].dropna().astype(str)
                    .value_counts(normalize=True).items()}
              for col in ("sample_rate", "codec") if col in own and own[col].notna().any()}
    return DriftReference.fit(X, meta["speaker"], data.y[idx], data.labels,
                              data.feature_config.get("time_axis"), inputs)


def prepare_fold(data: FeatureData, train_idx: np.ndarray, val_idx: np.ndarray,
                 cfg: LearnConfig, augmenter: Augmenter | None, classical: bool) -> Prepared:
    """Apply augmentation, normalisation and balancing, fitted on ``train_idx`` rows only.

    ``norm`` holds ``mean``/``std`` (torch models: the global stage, fitted after any group
    stage) and, for ``speaker``/``corpus`` normalisation, ``population_mean``/``population_std``:
    the pooled statistics of the raw training rows, which a scoring run falls back to when it
    has too few calls of its own to form a reference population.
    """
    time_axis = data.feature_config.get("time_axis")
    raw = takes_raw_input(cfg.model)
    X_tr, meta_tr, norm = head_rows(data, train_idx, cfg, augmenter)
    index = {lab: i for i, lab in enumerate(data.labels)}
    y_tr = meta_tr["label"].map(index).to_numpy(np.int64)
    X_val = _group_norm(data.X[val_idx], data.meta.iloc[val_idx], cfg, time_axis)
    if cfg.balance_corpora:  # no corpus dominates: the smaller ones' rows are copied up
        keep = balance.balance_groups(meta_tr["corpus"].to_numpy(), seed=cfg.seed)
        X_tr, y_tr = X_tr[keep], y_tr[keep]
        meta_tr = meta_tr.iloc[keep].reset_index(drop=True)
    # classical pipelines scale inside fit; a fine-tuned encoder's feature extractor normalises
    if cfg.normalise != "none" and not classical and not raw:
        norm["mean"], norm["std"] = moments(X_tr, time_axis)
        X_tr, X_val = (standardise(x, norm["mean"], norm["std"]) for x in (X_tr, X_val))
    weights = None
    if balance.get_sampler(cfg.balance).weighted_loss:
        weights = balance.class_weights(y_tr, len(data.labels))
    elif cfg.balance != "none":
        X_tr, y_tr, origin = balance.fit_resample(cfg.balance, X_tr, y_tr, seed=cfg.seed)
        meta_tr = meta_tr.iloc[np.maximum(origin, 0)].reset_index(drop=True)
        meta_tr.loc[origin < 0, "source_id"] = ""
    return Prepared(X_tr.astype(np.float32), y_tr, meta_tr, X_val.astype(np.float32),
                    data.y[val_idx], norm, weights)


@dataclass
class Fitted:
    """A trained model as the :class:`~ser_ray.models.artifact.Predictor` that every prediction goes
    through (the same object a saved model dir loads as), and its training history."""

    predictor: Any               # ser_ray.models.artifact.Predictor
    history: list[dict[str, float]] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)  # torch: trainer, fit_s, startup_s

    @property
    def model(self) -> Any:      # torch module (eval mode) or sklearn estimator
        return self.predictor.model

    @property
    def norm(self) -> dict[str, np.ndarray]:
        return self.predictor.normalisation


def fit(data: FeatureData, p: Prepared, cfg: LearnConfig, *, storage_path: Path,
        run_name: str, callbacks: Sequence[Any] = ()) -> Fitted:
    """Fit ``cfg.model`` on prepared training rows (validation rows stop torch training)."""
    from ser_ray.models.artifact import Predictor
    from ser_ray.models import build_model, get_model_spec, model_config

    shape = tuple(data.X.shape[1:])
    history: list[dict[str, float]] = []
    timing: dict[str, Any] = {}
    if not is_torch(cfg.model):
        model = build_model(cfg.model, shape, len(data.labels), **cfg.model_options)
        kwargs = {}
        if p.class_weights is not None:
            kwargs = {model.steps[-1][0] + "__sample_weight": p.class_weights[p.y_train]}
        model.fit(p.X_train, p.y_train, **kwargs)
    else:
        from ser_ray.learn.training import fit_torch, load_torch_model

        tf = fit_torch(cfg.model, cfg.model_options, shape, len(data.labels),
                       (p.X_train, p.y_train), (p.X_val, p.y_val), storage_path=storage_path,
                       run_name=run_name, seed=cfg.seed, class_weights=p.class_weights,
                       num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                       cpus_per_worker=cfg.cpus_per_worker, callbacks=callbacks,
                       trainer=cfg.trainer)
        model = load_torch_model(cfg.model, cfg.model_options, shape, len(data.labels),
                                 tf.state_dict)
        history = tf.history
        timing = {"trainer": tf.trainer, "fit_s": round(tf.wall_s, 2),
                  "startup_s": round(tf.startup_s, 2)}
    predictor = Predictor(
        model_name=cfg.model, kind=get_model_spec(cfg.model).kind, model=model,
        labels=list(data.labels), input_shape=shape,
        feature_config={**data.feature_config, "normalise": cfg.normalise},
        normalisation=p.norm,
        config=dataclasses.asdict(model_config(cfg.model, **cfg.model_options)),
        trained_classes=tuple(sorted(int(c) for c in np.unique(p.y_train))))
    return Fitted(predictor, history, timing)


def best_epoch(history: list[dict[str, float]]) -> int | None:
    return min(history, key=lambda h: h["val_loss"])["epoch"] if history else None


def val_split(data: FeatureData, train_idx: np.ndarray, cfg: LearnConfig):
    if not is_torch(cfg.model):
        return train_idx, np.zeros(0, np.int64)
    return splits.validation_split(data.meta, train_idx, fraction=cfg.validation_fraction,
                                   seed=cfg.seed)


def make_augmenter(data: FeatureData, cfg: LearnConfig, train_sides: Sequence[np.ndarray]):
    if cfg.augment.variant == "none":
        return None
    aug = Augmenter(data, cfg, data.feature_config["roots"])
    ids = set()
    for idx in train_sides:
        ids |= set(data.meta["utterance_id"].iloc[idx])
    aug.compute(ids)
    return aug


def calibration_method(cfg: LearnConfig) -> str:
    """``temperature`` or ``none``: ``auto`` calibrates classical models (k small extra fits per
    fold) and leaves torch models as they are unless asked."""
    if cfg.calibration == "auto":
        return "none" if is_torch(cfg.model) else "temperature"
    return cfg.calibration


def calibrate(data: FeatureData, train_idx: np.ndarray, cfg: LearnConfig, augmenter, *,
              storage_path: Path, run_name: str):
    """A temperature fitted on out-of-fold predictions of the training speakers only: the rows
    ``train_idx`` split into ``calibration_folds`` speaker folds, each predicted by a model
    fitted (as the fold's model is) on the others. None when calibration is off or the training
    side has fewer than 2 speakers. Test speakers are never read."""
    from ser_ray.learn.evaluate import predict_rows
    from ser_ray.models.calibration import fit_temperature

    if calibration_method(cfg) == "none":
        return None
    train_idx = np.asarray(train_idx, np.int64)
    meta = data.meta.iloc[train_idx].reset_index(drop=True)
    k = min(cfg.calibration_folds, meta["speaker"].nunique())
    if k < 2:
        log("calibration skipped: the training side has one speaker")
        return None
    probs, ys = [], []
    for inner in splits.make_folds(meta, "speaker-kfold", folds=k, seed=cfg.seed):
        tr, va = val_split(data, train_idx[inner.train], cfg)
        p = prepare_fold(data, tr, va, cfg, augmenter, not is_torch(cfg.model))
        f = fit(data, p, cfg, storage_path=storage_path, run_name=f"{run_name}-calib{inner.index}")
        rows = train_idx[inner.test]
        probs.append(predict_rows(f.predictor, data.X[rows],
                                  data.meta.iloc[rows].reset_index(drop=True)))
        ys.append(data.y[rows])
    return fit_temperature(np.concatenate(probs), np.concatenate(ys),
                           coverage=cfg.uncertain_coverage)
