"""``ser-ray adapt``: refit a model's head on its training data plus segments of your own calls
that people labelled (a ``ser-ray sample`` sheet), and say on held-out calls whether it helped.

The model's training rows are read again from the feature folders its ``features.json`` names
(or ``--features``); each labelled segment becomes a row through the scoring code's window
features (``learn.labelled.segment_rows``), its call standing in for a speaker and
``in-domain`` for a corpus, copied ``weight`` times (an integer weight of the in-domain rows).
The head is refitted with the model's own configuration, the encoder untouched (features are
the frozen encoder's; a fine-tuned encoder model is refitted whole, as ``train`` fits it), then
recalibrated on the in-domain rows: the temperature and "not sure" threshold are fitted on the
before/after folds' out-of-fold predictions of the labelled segments. The folder keeps its format; ``model.json`` says what it was
adapted on (the sheet's hash, counts, weight, the model it came from).

Before and after: the labelled calls are split into folds (no call on both sides); for each,
the model is adapted on the training rows plus the other folds' labels and both models are
scored on the fold's segments. ``adapt.json`` in the new folder holds the per-fold and pooled UA.
Too few labels per class to say anything: a clear refusal, before any fitting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ser_ray.console import logger

log = logger("adapt")


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
    weight: int = 3            # copies of each in-domain row
    min_per_class: int = 3     # labelled segments each labelled class needs
    folds: int = 3             # before/after folds over the labelled calls


def _in_domain(X: np.ndarray, rows: pd.DataFrame, weight: int):
    """The labelled segments' rows ``X`` (before any normalisation: the fit applies the
    model's own) as learning rows (X, meta), each ``weight`` times."""
    keys = rows["run_date"].astype(str) + "/" + rows["call_id"].astype(str)
    metas, Xs = [], []
    for k in range(weight):
        metas.append(pd.DataFrame({
            "utterance_id": rows["segment_id"] + f"#{k}", "source_id": rows["segment_id"] + f"#{k}",
            "block_index": 0, "corpus": "in-domain", "speaker": "call:" + keys, "sex": "u",
            "label": rows["truth"]}))
        Xs.append(X)
    return np.concatenate(Xs), pd.concat(metas, ignore_index=True)


def _combined(data, X_in: np.ndarray, meta_in: pd.DataFrame):
    from ser_ray.learn.data import FeatureData

    index = {lab: i for i, lab in enumerate(data.labels)}
    meta = pd.concat([data.meta, meta_in], ignore_index=True)
    return FeatureData(X=np.concatenate([data.X, X_in.astype(np.float32)]),
                       y=np.concatenate([data.y, meta_in["label"].map(index).to_numpy(np.int64)]),
                       labels=data.labels, meta=meta, feature_config=data.feature_config)


def check_enough(rows: pd.DataFrame, labels: Sequence[str], s: AdaptSettings) -> None:
    counts = rows["truth"].value_counts()
    few = {lab: int(counts.get(lab, 0)) for lab in counts.index if counts[lab] < s.min_per_class}
    calls = rows[["run_date", "call_id"]].drop_duplicates().shape[0]
    if few or calls < 2:
        raise ValueError(
            f"adapt: too few labels to say anything: {dict(counts)} labelled segments per class "
            f"from {calls} call(s); every labelled class needs at least min_per_class="
            f"{s.min_per_class} ({few} do not) and the labels must come from 2 calls or more. "
            "Label more segments (ser-ray sample --n ...) and try again")


def adapt_model(model_dir: str | Path, sheet_path: str | Path, out_dir: str | Path, *,
                roots: Sequence[str] | None = None, settings: AdaptSettings = AdaptSettings(),
                trust: bool = False) -> dict[str, Any]:
    """Adapt ``model_dir`` on the labelled sheet into ``out_dir``; returns what ``adapt.json``
    says (before/after per fold, counts)."""
    from sklearn.model_selection import GroupKFold

    from ser_ray.config import LearnConfig, from_dict
    from ser_ray.learn.data import load_learn_features
    from ser_ray.learn.experiment import train_model
    from ser_ray.learn.labelled import head_rows, read_labels, segment_rows
    from ser_ray.learn.metrics import compute_metrics
    from ser_ray.models.artifact import folder_hash, load_predictor

    if settings.weight < 1 or settings.folds < 2:
        raise ValueError(f"adapt: weight={settings.weight} must be >= 1 and folds="
                         f"{settings.folds} >= 2")
    pred = load_predictor(model_dir, trust=trust)
    labels = list(pred.labels)
    sheet_path = Path(sheet_path)
    rows, counts, _ = read_labels(sheet_path, labels)
    check_enough(rows, labels, settings)
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    cfg = from_dict(LearnConfig, dict(meta["extra"]["config"]))
    roots = list(roots or pred.feature_config.get("roots") or [])
    missing = [r for r in roots if not Path(r).is_dir()]
    if not roots or missing:
        raise ValueError(f"adapt: the model's training features {missing or roots} are not here; "
                         "pass the folders it was trained on with --features")
    data = load_learn_features(roots, cfg)
    if list(data.labels) != labels:
        raise ValueError(f"adapt: the training features give labels {data.labels}, the model has "
                         f"{labels}; pass the folders it was trained on")
    folder = sheet_path.parent
    X_rows = segment_rows(pred, rows, folder)  # each clip through the features once
    X_in, meta_in = _in_domain(X_rows, rows, settings.weight)
    work = Path(f"{out_dir}.work")
    groups = (rows["run_date"].astype(str) + "/" + rows["call_id"].astype(str)).to_numpy()
    n_folds = min(settings.folds, len(set(groups)))
    X_eval = head_rows(pred, X_rows)
    before_p = pred.predict_proba(X_eval).argmax(1)
    y = np.array([labels.index(t) for t in rows["truth"]])
    folds, after_p = [], np.zeros(len(rows), int)
    raw = np.zeros((len(rows), len(labels)))  # out-of-fold, uncalibrated: what recalibrates
    for k, (tr, te) in enumerate(GroupKFold(n_splits=n_folds).split(rows, groups=groups)):
        keep = np.isin(np.arange(len(meta_in)) % len(rows), tr)
        fold_dir = work / f"fold{k}"
        train_model(_combined(data, X_in[keep], meta_in[keep].reset_index(drop=True)), cfg,
                    fold_dir / "model", work_dir=fold_dir / "train")
        adapted = load_predictor(fold_dir / "model")
        raw[te] = adapted.predict_proba(X_eval[te], calibrated=False)
        after_p[te] = adapted.predict_proba(X_eval[te]).argmax(1)
        folds.append({"fold": k, "calls": sorted(set(groups[te])), "n": int(len(te)),
                      "ua_before": compute_metrics(y[te], before_p[te], labels)["ua"],
                      "ua_after": compute_metrics(y[te], after_p[te], labels)["ua"]})
    sha = hashlib.sha256(sheet_path.read_bytes()).hexdigest()
    report = {"model": str(model_dir), "sheet": str(sheet_path), "sheet_sha256": sha,
              "labelled": counts, "weight": settings.weight, "folds": folds,
              "pooled": {"ua_before": compute_metrics(y, before_p, labels)["ua"],
                         "ua_after": compute_metrics(y, after_p, labels)["ua"], "n": int(len(y))},
              "protocol": f"{n_folds} folds over the labelled calls (no call on both sides); "
                          "each fold adapted on the training rows and the other folds' labels"}
    adapted_on = {"from_model": str(model_dir), "from_model_hash": folder_hash(model_dir),
                  "sheet_sha256": sha, "in_domain_segments": int(len(rows)),
                  "in_domain_calls": counts["calls"], "weight": settings.weight}
    train_model(_combined(data, X_in, meta_in), cfg, out_dir, work_dir=work / "final",
                extra={"adapted_on": adapted_on})
    report["calibration"] = _recalibrate(out_dir, raw, y, cfg)
    (Path(out_dir) / "adapt.json").write_text(json.dumps(report, indent=2, default=str))
    p = report["pooled"]
    log(f"adapted on {len(rows)} labelled segments of {counts['calls']} calls (x{settings.weight}): "
        f"held-out UA {p['ua_before']:.3f} -> {p['ua_after']:.3f} over {n_folds} folds -> {out_dir}")
    return report


def _recalibrate(out_dir: str | Path, raw: np.ndarray, y: np.ndarray, cfg) -> dict[str, Any] | None:
    """The adapted model's temperature and "not sure" threshold fitted again on the in-domain
    rows: out-of-fold predictions of the before/after folds, each by a model adapted without
    that fold's calls. None when the model is not calibrated (``calibration: none``)."""
    from ser_ray.learn.folds import calibration_method
    from ser_ray.models.artifact import load_predictor, save_predictor
    from ser_ray.models.calibration import fit_temperature

    if calibration_method(cfg) == "none":
        return None
    pred = load_predictor(out_dir)
    pred.calibration = fit_temperature(raw, y, coverage=cfg.uncertain_coverage)
    record = {"method": "temperature", "temperature": pred.calibration.temperature,
              "n": pred.calibration.n, "fitted_on": "in-domain rows, out of fold"}
    save_predictor(out_dir, pred, metrics={**pred.metrics, "calibration": record})
    return record
