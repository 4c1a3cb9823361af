"""Train and cross-validate: the learning plane's one code path (``evaluate`` scores saved models).

Per fold, in this order and on the training side only: augmentation copies of training
recordings, normalisation statistics, oversampling; then the model is fitted and scored on the
untouched test side (``folds``). Splits come first and are checked for leakage
(``splits.check_fold``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ser_ray.config import LearnConfig, public_dict
from ser_ray.console import logger
from ser_ray.learn import conditions, select, splits
from ser_ray.learn.data import FeatureData
from ser_ray.learn.evaluate import predict_rows, utterance_level
from ser_ray.learn.folds import (Augmenter, Fitted, Prepared, best_epoch, calibrate,  # noqa: F401
                                 calibration_method, drift_reference, fit, is_torch, make_augmenter,
                                 prepare_fold, takes_raw_input, val_split, with_noise_dir)
from ser_ray.learn.metrics import (CALIBRATION_BINS, aggregate, calibration_metrics,
                                   compute_metrics, reliability, risk_coverage)
from ser_ray.learn.protocols import ChannelProtocol, corpus_matrix


__all__ = ["Augmenter", "Fitted", "Prepared", "best_epoch", "cross_validate", "fit",
           "is_torch", "make_augmenter", "prepare_fold", "run_cv", "takes_raw_input",
           "train_model", "val_split", "with_noise_dir", "write_run_files"]

log = logger()


def cross_validate(data: FeatureData, cfg: LearnConfig, work_dir: str | Path, *,
                   on_fold: Callable[[dict[str, Any]], None] | None = None,
                   keep_folds: bool = False, progress: bool = True,
                   calibrate_folds: bool = True, augmenter: Augmenter | None = None
                   ) -> dict[str, Any]:
    """Run ``cfg.protocol`` over ``data``; return the metrics dict (folds + mean/std).

    Each fold's model is calibrated on its training speakers (:func:`folds.calibrate`, unless
    ``calibration`` resolves to none or ``calibrate_folds`` is False, as in a sweep's trials);
    the metrics come from the calibrated probabilities, and the calibration figures of the raw
    and calibrated ones sit beside them."""
    from ser_ray.console import Progress

    work_dir = Path(work_dir)
    select.check(cfg)
    folds = splits.make_folds(data.meta, cfg.protocol, folds=cfg.folds, seed=cfg.seed,
                              test_speakers=list(cfg.test_speakers) or None,
                              train_corpora=list(cfg.train_corpora) or None,
                              test_corpus=cfg.test_corpus)
    spec = splits.PROTOCOLS[cfg.protocol]
    plans = []
    for fold in folds:  # make_folds has run splits.check_fold on every fold
        tr, va = val_split(data, fold.train, cfg)
        plans.append((fold, tr, va))
    if augmenter is None:  # a nested choice passes the run's, computed once
        augmenter = make_augmenter(data, cfg, [tr for _, tr, _ in plans])
    noisy = conditions.noisy_sets(data, cfg) if cfg.noisy_snr_db else None
    channel = ChannelProtocol(data, cfg, plans) if cfg.channel_protocol.codecs else None
    method = calibration_method(cfg) if calibrate_folds else "none"
    results, fold_rows, preds = [], [], {"y": [], "p": [], "raw": [], "answered": []}
    bar = Progress(cfg.protocol, total=len(plans), unit="folds", enabled=progress, every_s=0)
    base, base_cfg = data, cfg
    for k, (fold, tr, va) in enumerate(plans):
        chosen = None
        if base_cfg.select:  # on this fold's training speakers only
            chosen = select.choose(base, fold.train, base_cfg, work_dir / f"select{fold.index}",
                                   cross_validate, augmenter)
            cfg = select.configure(base_cfg, chosen["choice"])
            data = select.view(base, cfg)
        p = prepare_fold(data, tr, va, cfg, augmenter, not is_torch(cfg.model))
        fitted = fit(data, p, cfg, storage_path=work_dir / "train", run_name=f"fold{fold.index}")
        if method != "none":
            fitted.predictor.calibration = calibrate(
                data, fold.train, cfg, augmenter, storage_path=work_dir / "train",
                run_name=f"fold{fold.index}")
        test_meta = data.meta.iloc[fold.test].reset_index(drop=True)
        raw_rows = predict_rows(fitted.predictor, data.X[fold.test], test_meta, calibrated=False)
        cal = fitted.predictor.calibration
        _, raw, y_true = utterance_level(test_meta, raw_rows, data.y[fold.test])
        proba = utterance_level(test_meta, cal.apply(raw_rows), data.y[fold.test])[1] if cal else raw
        m = compute_metrics(y_true, proba.argmax(1), data.labels)
        row = {"name": fold.name, "index": fold.index, "ua": m["ua"], "wa": m["wa"],
               "macro_f1": m["macro_f1"], "weighted_f1": m["weighted_f1"],
               "train_speakers": list(fold.train_speakers),
               "test_speakers": list(fold.test_speakers), "n_train": int(len(p.y_train)),
               "n_train_clean": int(len(tr)),  # before augmented copies and balancing
               "n_test": int(len(y_true)), "best_epoch": best_epoch(fitted.history),
               "confusion": m["confusion"], **fitted.timing,
               "calibration": {"temperature": cal.temperature if cal else None,
                               "uncertain_below": cal.uncertain_below if cal else None,
                               "raw": calibration_metrics(y_true, raw),
                               "calibrated": calibration_metrics(y_true, proba)}}
        test_sources = set(data.meta["source_id"].iloc[fold.test])
        if noisy is not None:
            row["noisy"] = noisy.score(fitted.predictor, test_sources)
        if channel is not None:
            row["channel"] = channel.fold(fitted, m, fold, tr, va, work_dir,
                                          chosen["choice"] if chosen else None)
        if chosen is not None:
            row["selected"] = chosen
        if getattr(fold, "dropped", None):
            row["dropped_labels"] = dict(fold.dropped)
        results.append(m)
        fold_rows.append(row)
        preds["y"].append(y_true)
        preds["p"].append(proba)
        preds["raw"].append(raw)
        preds["answered"].append(cal.answered(proba) if cal else np.ones(len(proba), bool))
        if keep_folds:
            row["_prepared"], row["_fitted"] = p, fitted
        bar.update(k + 1, detail=f"{fold.name}: UA {m['ua']:.3f} WA {m['wa']:.3f}; mean UA "
                                 f"{np.mean([r['ua'] for r in results]):.3f}")
        if on_fold is not None:
            on_fold({"fold": k + 1, "folds": len(plans), "ua": m["ua"], "wa": m["wa"],
                     "ua_mean": float(np.mean([r["ua"] for r in results]))})
    bar.close()
    data, cfg = base, base_cfg
    agg = aggregate(results)
    metrics = {"protocol": cfg.protocol, "shares_speakers": spec.shares_speakers,
               "n_folds": len(plans), "seed": cfg.seed, "model": cfg.model,
               "features": list(cfg.features), "labels": data.labels, **agg,
               **_fit_timing(fold_rows), "folds": fold_rows}
    metrics.update(calibration_summary(method, cfg, preds, fold_rows, data.labels))
    if cfg.select:
        metrics["selection"] = select.summary([r["selected"] for r in fold_rows])
    if noisy is not None:
        metrics["noisy"] = conditions.summarise(fold_rows, "noisy")
    if channel is not None:
        metrics["channel"] = channel.summary(fold_rows)
    if cfg.protocol == "leave-one-corpus-out":
        metrics["corpus_matrix"] = corpus_matrix(data, cfg, augmenter, folds, fold_rows, work_dir)
    return metrics



def calibration_summary(method: str, cfg: LearnConfig, preds: dict[str, list],
                        fold_rows: list[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """Calibration figures pooled over every fold's test predictions (each test utterance once):
    ``ece_raw``/``ece_calibrated``, ``brier_*``, ``nll_*``, and under ``calibration`` the method,
    bins, temperatures and both reliability curves (``reliability.png``)."""
    y = np.concatenate(preds["y"]) if preds["y"] else np.zeros(0, int)
    pooled = {}
    for kind in ("raw", "calibrated"):
        p = np.concatenate(preds["raw" if kind == "raw" else "p"]) if preds["y"] else None
        pooled[kind] = (calibration_metrics(y, p), reliability(y, p)) if p is not None else \
            ({"ece": float("nan"), "brier": float("nan"), "nll": float("nan")}, None)
    temps = [r["calibration"]["temperature"] for r in fold_rows
             if r["calibration"]["temperature"] is not None]
    curve = risk_coverage(y, np.concatenate(preds["p"]), labels) if len(y) else []
    chosen = None
    if method != "none" and len(y):
        ans = np.concatenate(preds["answered"])
        p = np.concatenate(preds["p"])
        m = compute_metrics(y[ans], p[ans].argmax(1), labels) if ans.any() else None
        chosen = {"target": cfg.uncertain_coverage, "answered": float(ans.mean()),
                  "ua": m["ua"] if m else None, "wa": m["wa"] if m else None,
                  "n_answered": int(ans.sum())}
    flat = {f"{k}_{kind}": pooled[kind][0][k] for kind in ("raw", "calibrated")
            for k in ("ece", "brier", "nll")}
    return {**flat, "calibration": {
        "method": method, "inner_folds": cfg.calibration_folds if method != "none" else None,
        "bins": CALIBRATION_BINS, "n": int(len(y)), "temperatures": temps,
        "reliability_raw": pooled["raw"][1], "reliability_calibrated": pooled["calibrated"][1]},
        "risk_coverage": curve, "uncertain": chosen}


def _fit_timing(fold_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Torch folds: where they trained and the seconds their fits spent starting, in all."""
    timed = [r for r in fold_rows if "trainer" in r]
    if not timed:
        return {}
    return {"trainer": timed[0]["trainer"],
            "fit_s": round(sum(r["fit_s"] for r in timed), 2),
            "startup_s": round(sum(r["startup_s"] for r in timed), 2)}


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
        chosen, augmenter = None, None
        if cfg.select:  # by speaker folds of every training row, as each cv fold chooses
            select.check(cfg)
            augmenter = make_augmenter(data, cfg, [np.arange(len(data))])
            chosen = select.choose(data, np.arange(len(data)), cfg, work_dir / "select",
                                   cross_validate, augmenter)
            cfg = select.configure(cfg, chosen["choice"])
            data = select.view(data, cfg)
            log(f"selected {chosen['choice']} (inner UA "
                f"{max(r['ua'] for r in chosen['table']):.3f}, {chosen['folds']} speaker folds)")
        tr, va = val_split(data, np.arange(len(data)), cfg)
        if augmenter is None:
            augmenter = make_augmenter(data, cfg, [tr])
        p = prepare_fold(data, tr, va, cfg, augmenter, not is_torch(cfg.model))
        fitted = fit(data, p, cfg, storage_path=work_dir, run_name="train", callbacks=callbacks)
        # calibrated on out-of-fold predictions of its own training speakers
        fitted.predictor.calibration = calibrate(data, np.arange(len(data)), cfg, augmenter,
                                                 storage_path=work_dir, run_name="train")
        # what the training audio looked like, for the scoring nights' drift checks
        fitted.predictor.drift = drift_reference(data, np.arange(len(data)), cfg, augmenter)
    except BaseException:
        tracker.fail()
        raise
    for h in fitted.history:
        tracker.step({k: v for k, v in h.items() if k != "epoch"}, int(h["epoch"]), "epoch_")
    cal = fitted.predictor.calibration
    metrics: dict[str, Any] = {"n_train": int(len(p.y_train)), "validation": None,
                               "calibration": {"method": calibration_method(cfg),
                                               "temperature": cal.temperature if cal else None,
                                               "n": cal.n if cal else 0}}
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
               **({"selected": chosen} if chosen else {}), **(extra or {})})
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
        write_report(out_dir, metrics, labels=data.labels, seed=cfg.seed, config=to_dict(cfg),
                     notes=select.notes(metrics.get("selection")))
    except BaseException:
        tracker.fail()
        raise
    tracker.finish({k: metrics[k] for k in ("ua_mean", "ua_std", "wa_mean", "wa_std")}, out_dir)
    log(f"{cfg.protocol}: UA {metrics['ua_mean']:.3f} +- {metrics['ua_std']:.3f}, "
        f"WA {metrics['wa_mean']:.3f} +- {metrics['wa_std']:.3f} over {metrics['n_folds']} "
        f"folds -> {out_dir}")
    return metrics
