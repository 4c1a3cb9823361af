"""Train and cross-validate: the learning plane's one code path (``evaluate`` scores saved models).

Per fold, in this order and on the training side only: augmentation copies of training
recordings, normalisation statistics, oversampling; then the model is fitted and scored on the
untouched test side. Splits come first and are checked for leakage (``splits.check_fold``)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ser_ray.config import NORMALISE_GROUPS, LearnConfig, public_dict
from ser_ray.console import logger
from ser_ray.features.inputs import conform
from ser_ray.learn import balance, splits
from ser_ray.learn.data import FeatureData
from ser_ray.learn.evaluate import predict_rows, utterance_level
from ser_ray.learn.metrics import aggregate, compute_metrics
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
        if len(fc["features"]) != 1:
            raise ValueError("augmentation needs a single feature (it re-extracts from audio)")
        name = fc["features"][0]
        rows = manifest(self.roots)
        rows = rows[rows["utterance_id"].isin(utterance_ids)].reset_index(drop=True)
        chain = augment.Chain.from_config(with_noise_dir(self.cfg))
        log(f"augmenting {len(rows)} training recordings x {self.cfg.augment.copies} "
            f"({chain.name})")
        arrays, meta = augment.augmented_features(
            rows, audio_cfg=from_dict(AudioConfig, fc["audio"]),
            extractor=extractor_from_settings(fc["extractors"][name]), chain=chain,
            copies=self.cfg.augment.copies, seed=self.cfg.seed)
        arrays = [conform(a, fc) for a in arrays]
        self._X = np.stack(arrays).astype(np.float32) if arrays else \
            np.zeros((0, *self.data.X.shape[1:]), np.float32)
        label_of = dict(zip(self.data.meta["utterance_id"], self.data.meta["label"]))
        meta = meta.assign(label=meta["utterance_id"].map(label_of))
        self._meta = meta.reset_index(drop=True)

    def rows_for(self, source_ids: set[str]) -> tuple[np.ndarray, pd.DataFrame]:
        keep = self._meta["source_id"].isin(source_ids).to_numpy()
        return self._X[keep], self._meta[keep].reset_index(drop=True)


def _group_norm(X: np.ndarray, meta: pd.DataFrame, cfg: LearnConfig, time_axis) -> np.ndarray:
    col = NORMALISE_GROUPS[cfg.normalise]
    return X if col is None or len(X) == 0 else group_standardise(X, meta[col].to_numpy(), time_axis)


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
    if raw and NORMALISE_GROUPS[cfg.normalise] is not None:
        raise ValueError(f"{cfg.model} normalises its own input (its encoder's feature "
                         f"extractor); use normalise=global or none, not {cfg.normalise}")
    X_tr, meta_tr = data.X[train_idx], data.meta.iloc[train_idx].reset_index(drop=True)
    norm: dict[str, np.ndarray] = {}
    if NORMALISE_GROUPS[cfg.normalise] is not None:
        norm["population_mean"], norm["population_std"] = moments(X_tr, time_axis)
    if augmenter is not None and cfg.augment.variant != "none":
        X_aug, meta_aug = augmenter.rows_for(set(meta_tr["source_id"]))
        if cfg.augment.variant == "augmented":
            X_tr, meta_tr = X_aug, meta_aug
        else:
            X_tr = np.concatenate([X_tr, X_aug])
            meta_tr = pd.concat([meta_tr, meta_aug], ignore_index=True)
    index = {lab: i for i, lab in enumerate(data.labels)}
    y_tr = meta_tr["label"].map(index).to_numpy(np.int64)
    X_tr = _group_norm(X_tr, meta_tr, cfg, time_axis)
    X_val = _group_norm(data.X[val_idx], data.meta.iloc[val_idx], cfg, time_axis)
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


def _val_split(data: FeatureData, train_idx: np.ndarray, cfg: LearnConfig):
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


def cross_validate(data: FeatureData, cfg: LearnConfig, work_dir: str | Path, *,
                   on_fold: Callable[[dict[str, Any]], None] | None = None,
                   keep_folds: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run ``cfg.protocol`` over ``data``; return the metrics dict (folds + mean/std)."""
    from ser_ray.console import Progress

    work_dir = Path(work_dir)
    folds = splits.make_folds(data.meta, cfg.protocol, folds=cfg.folds, seed=cfg.seed,
                              test_speakers=list(cfg.test_speakers) or None,
                              train_corpora=list(cfg.train_corpora) or None,
                              test_corpus=cfg.test_corpus)
    spec = splits.PROTOCOLS[cfg.protocol]
    plans = []
    for fold in folds:  # make_folds has run splits.check_fold on every fold
        tr, va = _val_split(data, fold.train, cfg)
        plans.append((fold, tr, va))
    augmenter = make_augmenter(data, cfg, [tr for _, tr, _ in plans])
    noisy = NoisySets(data, cfg) if cfg.noisy_snr_db else None
    results, fold_rows, preds = [], [], {"y": [], "p": []}
    bar = Progress(cfg.protocol, total=len(plans), unit="folds", enabled=progress, every_s=0)
    for k, (fold, tr, va) in enumerate(plans):
        p = prepare_fold(data, tr, va, cfg, augmenter, not is_torch(cfg.model))
        fitted = fit(data, p, cfg, storage_path=work_dir / "train", run_name=f"fold{fold.index}")
        test_meta = data.meta.iloc[fold.test].reset_index(drop=True)
        _, proba, y_true = utterance_level(
            test_meta, predict_rows(fitted.predictor, data.X[fold.test], test_meta),
            data.y[fold.test])
        m = compute_metrics(y_true, proba.argmax(1), data.labels)
        row = {"name": fold.name, "index": fold.index, "ua": m["ua"], "wa": m["wa"],
               "macro_f1": m["macro_f1"], "weighted_f1": m["weighted_f1"],
               "train_speakers": list(fold.train_speakers),
               "test_speakers": list(fold.test_speakers), "n_train": int(len(p.y_train)),
               "n_train_clean": int(len(tr)),  # before augmented copies and balancing
               "n_test": int(len(y_true)), "best_epoch": best_epoch(fitted.history),
               "confusion": m["confusion"], **fitted.timing}
        if noisy is not None:
            row["noisy"] = noisy.score(fitted, fold, cfg)
        if getattr(fold, "dropped", None):
            row["dropped_labels"] = dict(fold.dropped)
        results.append(m)
        fold_rows.append(row)
        preds["y"].append(y_true)
        preds["p"].append(proba)
        if keep_folds:
            row["_prepared"], row["_fitted"] = p, fitted
        bar.update(k + 1, detail=f"{fold.name}: UA {m['ua']:.3f} WA {m['wa']:.3f}; mean UA "
                                 f"{np.mean([r['ua'] for r in results]):.3f}")
        if on_fold is not None:
            on_fold({"fold": k + 1, "folds": len(plans), "ua": m["ua"], "wa": m["wa"],
                     "ua_mean": float(np.mean([r["ua"] for r in results]))})
    bar.close()
    agg = aggregate(results)
    metrics = {"protocol": cfg.protocol, "shares_speakers": spec.shares_speakers,
               "n_folds": len(plans), "seed": cfg.seed, "model": cfg.model,
               "features": list(cfg.features), "labels": data.labels, **agg,
               **_fit_timing(fold_rows), "folds": fold_rows}
    if noisy is not None:
        metrics["noisy"] = {str(s): {
            "ua_mean": float(np.mean([r["noisy"][str(s)]["ua"] for r in fold_rows])),
            "wa_mean": float(np.mean([r["noisy"][str(s)]["wa"] for r in fold_rows]))}
            for s in cfg.noisy_snr_db}
    return metrics


def _fit_timing(fold_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Torch folds: where they trained and the seconds their fits spent starting, in all."""
    timed = [r for r in fold_rows if "trainer" in r]
    if not timed:
        return {}
    return {"trainer": timed[0]["trainer"],
            "fit_s": round(sum(r["fit_s"] for r in timed), 2),
            "startup_s": round(sum(r["startup_s"] for r in timed), 2)}


class NoisySets:
    """Test rows re-extracted from their audio mixed with noise at each SNR (test side only)."""

    def __init__(self, data: FeatureData, cfg: LearnConfig):
        from ser_ray.learn import augment
        from ser_ray.config import AudioConfig, from_dict
        from ser_ray.features.inputs import extractor_from_settings
        from ser_ray.learn.data import manifest

        if not cfg.noise_dir:
            raise ValueError("noisy_snr_db needs noise_dir: a folder of noise recordings")
        fc = data.feature_config
        name = fc["features"][0]
        rows = manifest(fc["roots"])
        rows = rows[rows["utterance_id"].isin(set(data.meta["utterance_id"]))]
        # One Ray Data pass decodes every file once and mixes it at every SNR.
        arrays, meta = augment.noisy_features(
            rows.reset_index(drop=True), audio_cfg=from_dict(AudioConfig, fc["audio"]),
            extractor=extractor_from_settings(fc["extractors"][name]),
            noise=cfg.noise_dir, snr_db=list(cfg.noisy_snr_db), seed=cfg.seed)
        X = np.stack([conform(a, fc) for a in arrays]).astype(np.float32)
        label_of = dict(zip(data.meta["utterance_id"], data.meta["label"]))
        meta = meta.assign(label=meta["utterance_id"].map(label_of)).reset_index(drop=True)
        self.sets = {}
        for snr in cfg.noisy_snr_db:
            keep = np.isclose(meta["snr_db"].to_numpy(dtype=float), float(snr))
            self.sets[snr] = (X[keep], meta[keep].reset_index(drop=True))
        self.data = data

    def score(self, fitted: Fitted, fold, cfg: LearnConfig) -> dict[str, dict[str, float]]:
        out = {}
        index = {lab: i for i, lab in enumerate(self.data.labels)}
        test_sources = set(self.data.meta["source_id"].iloc[fold.test])
        for snr, (X, meta) in self.sets.items():
            keep = meta["source_id"].isin(test_sources).to_numpy()
            Xs, ms = X[keep], meta[keep].reset_index(drop=True)
            y = ms["label"].map(index).to_numpy(np.int64)
            _, proba, y_true = utterance_level(ms, predict_rows(fitted.predictor, Xs, ms), y)
            m = compute_metrics(y_true, proba.argmax(1), self.data.labels)
            out[str(snr)] = {"ua": m["ua"], "wa": m["wa"]}
        return out


def train_model(data: FeatureData, cfg: LearnConfig, out_dir: str | Path, *,
                work_dir: str | Path | None = None, callbacks: Sequence[Any] = (),
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit on every row (torch models hold out ``validation_fraction`` of the speakers for early
    stopping and report on them) and save a model artifact in ``out_dir``."""
    from ser_ray.models.artifact import save_predictor
    from ser_ray.config import to_dict

    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".work")
    from ser_ray.learn.tracking import Tracker

    tracker = Tracker(cfg.tracking, out_dir, "train", to_dict(cfg),
                      tensorboard_dir=work_dir / "tensorboard")
    try:
        tr, va = _val_split(data, np.arange(len(data)), cfg)
        augmenter = make_augmenter(data, cfg, [tr])
        p = prepare_fold(data, tr, va, cfg, augmenter, not is_torch(cfg.model))
        fitted = fit(data, p, cfg, storage_path=work_dir, run_name="train", callbacks=callbacks)
    except BaseException:
        tracker.fail()
        raise
    for h in fitted.history:
        tracker.step({k: v for k, v in h.items() if k != "epoch"}, int(h["epoch"]), "epoch_")
    metrics: dict[str, Any] = {"n_train": int(len(p.y_train)), "validation": None}
    if len(va):
        val_meta = data.meta.iloc[va].reset_index(drop=True)
        _, proba, y_true = utterance_level(
            val_meta, predict_rows(fitted.predictor, data.X[va], val_meta), data.y[va])
        metrics["validation"] = {**compute_metrics(y_true, proba.argmax(1), data.labels),
                                 "speakers": sorted(set(data.meta["speaker"].iloc[va]))}
        metrics["best_epoch"] = best_epoch(fitted.history)
    save_predictor(
        out_dir, fitted.predictor, metrics=metrics,
        extra={"config": public_dict(cfg), "seed": cfg.seed, "history": fitted.history,
               "train_speakers": sorted(set(data.meta["speaker"].iloc[tr])),
               "validation_speakers": sorted(set(data.meta["speaker"].iloc[va])),
               **(extra or {})})
    val = metrics["validation"] or {}
    tracker.finish({f"validation_{k}": val[k] for k in ("ua", "wa", "macro_f1") if k in val},
                   out_dir)
    log(f"model saved to {out_dir}")
    return metrics


def write_run_files(out_dir: str | Path, cfg: LearnConfig, data: FeatureData,
                    extra: dict[str, Any] | None = None) -> None:
    """Resolved config, label map, seed, feature config and package versions of a run."""
    from ser_ray.storage import write_text_atomic
    from ser_ray.config import dump
    from ser_ray.runtime import versions

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump(cfg, out_dir / "config.yaml")  # whole, and without URL passwords
    write_text_atomic(json.dumps({lab: i for i, lab in enumerate(data.labels)}, indent=2),
                         out_dir / "label_map.json")
    write_text_atomic(json.dumps({"seed": cfg.seed, "versions": versions(),
                                     "feature_config": data.feature_config, **(extra or {})},
                                    indent=2, default=str), out_dir / "run.json")


def run_cv(data: FeatureData, cfg: LearnConfig, out_dir: str | Path, **kwargs) -> dict[str, Any]:
    """``ser-ray cv``: cross-validate, then write the report folder and the run files."""
    from ser_ray.config import to_dict
    from ser_ray.learn.report import write_report

    from ser_ray.learn.tracking import Tracker

    out_dir = Path(out_dir)
    t0 = time.time()
    write_run_files(out_dir, cfg, data)
    tracker = Tracker(cfg.tracking, out_dir, "cv", to_dict(cfg),
                      tags={"ser_ray.protocol": cfg.protocol})
    then = kwargs.pop("on_fold", None)

    def on_fold(d: dict[str, Any]) -> None:
        tracker.step({k: d[k] for k in ("ua", "wa", "ua_mean")}, d["fold"], "fold_")
        if then is not None:
            then(d)

    try:
        metrics = cross_validate(data, cfg, out_dir / "work", on_fold=on_fold, **kwargs)
        metrics["seconds"] = round(time.time() - t0, 1)
        write_report(out_dir, metrics, labels=data.labels, seed=cfg.seed, config=to_dict(cfg))
    except BaseException:
        tracker.fail()
        raise
    tracker.finish({k: metrics[k] for k in ("ua_mean", "ua_std", "wa_mean", "wa_std")}, out_dir)
    log(f"{cfg.protocol}: UA {metrics['ua_mean']:.3f} +- {metrics['ua_std']:.3f}, "
        f"WA {metrics['wa_mean']:.3f} +- {metrics['wa_std']:.3f} over {metrics['n_folds']} "
        f"folds -> {out_dir}")
    return metrics
