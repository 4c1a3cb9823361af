"""Your own calls, labelled: a ``ser-ray sample`` sheet filled in by people, as evaluation data.

:func:`read_labels` takes the sheet (and the ``sample.json`` beside it): rows without a label are
not labelled yet, ``unclear`` rows are set aside, and the team's labels are mapped to the model's
(``label_map``; a label the model has is its own). :func:`segment_rows` turns each labelled
segment's clip back into the model's input row with the scoring code's window features
(``features.windows``). :func:`evaluate_labels` is ``ser-ray evaluate --labels``: UA, WA,
per-class recall and the confusion matrix, with 95 % intervals from a bootstrap over calls
(segments of one call are not independent), and the share labelled unclear; given call-level
outcomes (``--outcomes``), the urgency ranking's precision@k, recall@k and AUROC against them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ser_ray.console import logger

log = logger("evaluate")
UNCLEAR = "unclear"
N_BOOT = 1000


def read_labels(sheet_path: str | Path, model_labels: Sequence[str]
                ) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """The labelled rows of a sheet with ``truth`` (a model label) -> (rows, counts, the
    ``sample.json`` beside it, or {})."""
    path = Path(sheet_path)
    if not path.is_file():
        raise FileNotFoundError(f"--labels {path}: no such file; pass the sheet.csv of a "
                                "`ser-ray sample` folder, filled in on its label.html")
    sheet = pd.read_csv(path, keep_default_na=False, dtype={"label": str, "note": str})
    need = {"segment_id", "call_id", "run_date", "clip", "clip_start_s", "start_s", "end_s", "label"}
    if need - set(sheet.columns):
        raise ValueError(f"--labels {path}: lacks columns {sorted(need - set(sheet.columns))}; "
                         "is it a `ser-ray sample` sheet?")
    info_path = path.parent / "sample.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    mapping = {**{lab: lab for lab in model_labels}, **(info.get("label_map") or {})}
    unclear = info.get("unclear", UNCLEAR)
    label = sheet["label"].str.strip()
    done = sheet[label != ""].assign(label=label[label != ""])
    is_unclear = done["label"] == unclear
    unmapped = sorted(set(done.loc[~is_unclear, "label"]) - set(mapping))
    if unmapped:
        raise ValueError(f"--labels {path}: labels {unmapped} are not the model's "
                         f"{list(model_labels)} and sample.json's label_map does not map them; "
                         "add them to label_map (team label -> model label) or mark them unclear")
    rows = done[~is_unclear].copy()
    rows["truth"] = rows["label"].map(mapping)
    counts = {"rows": len(sheet), "labelled": len(done), "unlabelled": int(len(sheet) - len(done)),
              "unclear": int(is_unclear.sum()), "used": len(rows),
              "unclear_share": float(is_unclear.mean()) if len(done) else None,
              "calls": int(rows[["run_date", "call_id"]].drop_duplicates().shape[0])}
    return rows.reset_index(drop=True), counts, info


def segment_rows(predictor, rows: pd.DataFrame, folder: str | Path) -> np.ndarray:
    """Each labelled segment, cut from its clip, as the model's input row as a feature table
    holds it (before any speaker or corpus standardisation: :func:`head_rows`)."""
    from ser_ray import audio
    from ser_ray.features.windows import WindowFeatures

    feats = WindowFeatures(predictor.feature_config)
    windows = []
    for r in rows.itertuples():
        if not r.clip:
            raise ValueError(f"segment {r.segment_id} has no clip (its call could not be read "
                             "again when the sample was made); remove its label or the row")
        decoded = audio.decode((Path(folder) / r.clip).read_bytes())
        y = audio.resample(audio.downmix(decoded.samples), decoded.sample_rate, feats.sr)
        windows.append(audio.window(y, feats.sr, float(r.clip_start_s),
                                    float(r.end_s) - float(r.start_s), pad=False))
    return feats.many(windows) if windows else np.zeros((0, *predictor.input_shape), np.float32)


def head_rows(predictor, X: np.ndarray) -> np.ndarray:
    """Segment rows as the model's head takes them: a model trained with speaker or corpus
    normalisation gets them standardised by its training population (a segment has no group)."""
    from ser_ray.config import NORMALISE_GROUPS
    from ser_ray.normalise import standardise

    if NORMALISE_GROUPS[predictor.feature_config.get("normalise", "global")] is None or not len(X):
        return X
    n = predictor.normalisation
    return standardise(X, n["population_mean"], n["population_std"])


def _interval(values: Sequence[float]) -> list[float] | None:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else None


def bootstrap(groups: np.ndarray, stat, n: int = N_BOOT, seed: int = 0) -> list[float] | None:
    """95 % percentile interval of ``stat(index)`` over resamples of whole groups (calls)."""
    rng = np.random.default_rng(seed)
    keys = np.unique(groups)
    members = {k: np.flatnonzero(groups == k) for k in keys}
    out = []
    for _ in range(n):
        pick = rng.choice(keys, size=len(keys), replace=True)
        out.append(stat(np.concatenate([members[k] for k in pick])))
    return _interval(out)


def ranked_calls(info: dict[str, Any]) -> pd.DataFrame:
    """The scored calls of the sampled nights (``sample.json``: ``scored``, ``runs``) with their
    urgency scores, read from the nights' committed tables."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ser_ray.storage import Storage, join

    storage = Storage()
    frames = []
    for run_id in info.get("runs") or []:
        run = json.loads(storage.read_bytes(join(info["scored"], f"runs/{run_id}.json")))
        t = pq.read_table(pa.BufferReader(storage.read_bytes(run["outputs"]["calls"])),
                          columns=["call_id", "status", "urgency_score"]).to_pandas()
        frames.append(t[t["status"] == "scored"].assign(run_date=run["run_date"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["call_id", "status", "urgency_score", "run_date"])


def ranking_figures(scores: np.ndarray, outcome: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """precision@k and recall@k (the k most urgent calls) and AUROC of one 0/1 outcome."""
    from sklearn.metrics import roc_auc_score

    hits = outcome[np.argsort(-scores, kind="stable")].astype(bool)
    out = {}
    for k in ks:
        out[f"precision@{k}"] = float(hits[:k].mean())
        out[f"recall@{k}"] = float(hits[:k].sum() / hits.sum()) if hits.sum() else float("nan")
    out["auroc"] = float(roc_auc_score(outcome, scores)) if 0 < outcome.sum() < len(outcome) \
        else float("nan")
    return out


def outcome_figures(calls: pd.DataFrame, outcomes: pd.DataFrame, seed: int,
                    ks: Sequence[int] = (5, 10, 20)) -> dict[str, Any]:
    """Each outcome column of ``outcomes`` (call_id, optional run_date, then 0/1 columns)
    against the urgency ranking of ``calls``, with bootstrap intervals over calls."""
    if "call_id" not in outcomes:
        raise ValueError("--outcomes: the table needs a call_id column (and optionally run_date)")
    on = ["call_id", "run_date"] if "run_date" in outcomes else ["call_id"]
    merged = calls.merge(outcomes.astype({"call_id": str}), on=on, how="inner")
    out: dict[str, Any] = {}
    for col in [c for c in outcomes.columns if c not in on]:
        sub = merged[["urgency_score", col]].dropna()
        y = sub[col].map(lambda v: str(v).strip().lower() in ("1", "true", "yes")).to_numpy(int)
        scores = sub["urgency_score"].to_numpy(float)
        n = len(sub)
        kk = [k for k in ks if k <= n] or ([n] if n else [])
        figs = ranking_figures(scores, y, kk) if n else {}
        rng_idx = np.arange(n)
        intervals = {key: bootstrap(rng_idx, lambda idx, key=key: ranking_figures(
            scores[idx], y[idx], kk).get(key), seed=seed) for key in figs}
        out[col] = {"calls": int(n), "positives": int(y.sum()), **figs, "intervals": intervals}
    return out


def evaluate_labels(model_dir: str | Path, sheet_path: str | Path, out_dir: str | Path, *,
                    trust: bool = False, seed: int = 0,
                    outcomes: str | Path | None = None) -> dict[str, Any]:
    """``ser-ray evaluate --model M --labels sheet.csv --output E``: metrics.json (``ua`` and
    its interval, ...), summary.md, per_class.csv and confusion.png in ``out_dir``."""
    from ser_ray.learn.metrics import aggregate, compute_metrics
    from ser_ray.learn.report import write_report
    from ser_ray.models.artifact import load_predictor

    pred = load_predictor(model_dir, trust=trust)
    labels = list(pred.labels)
    rows, counts, info = read_labels(sheet_path, labels)
    if rows.empty:
        raise ValueError(f"--labels {sheet_path}: no labelled segment to evaluate on "
                         f"({counts['unlabelled']} unlabelled, {counts['unclear']} unclear)")
    X = head_rows(pred, segment_rows(pred, rows, Path(sheet_path).parent))
    proba = pred.predict_proba(X)
    y = np.array([labels.index(t) for t in rows["truth"]])
    yhat = proba.argmax(1)
    m = compute_metrics(y, yhat, labels)
    groups = (rows["run_date"].astype(str) + "/" + rows["call_id"].astype(str)).to_numpy()

    def stat(key):
        return lambda idx: compute_metrics(y[idx], yhat[idx], labels)[key]

    intervals = {k: bootstrap(groups, stat(k), seed=seed) for k in ("ua", "wa", "macro_f1")}
    recall = {}
    for c, lab in enumerate(labels):
        if (y == c).any():
            recall[lab] = bootstrap(groups, lambda idx, c=c: float((yhat[idx][y[idx] == c] == c).mean())
                                    if (y[idx] == c).any() else None, seed=seed)
    metrics = {"protocol": "labelled", "model_dir": str(model_dir), "labels": labels,
               "n_folds": 1, "dropped_labels": {}, "labelled": counts,
               "intervals": {**intervals, "recall": recall, "method": f"bootstrap over calls, "
                             f"{N_BOOT} resamples, 95 % percentile"},
               **aggregate([m]),
               "folds": [{"name": "labelled", "index": 0, "ua": m["ua"], "wa": m["wa"],
                          "macro_f1": m["macro_f1"], "weighted_f1": m["weighted_f1"],
                          "train_speakers": [], "test_speakers": [], "n_test": int(len(y)),
                          "confusion": m["confusion"]}],
               "ua": m["ua"], "wa": m["wa"]}
    if outcomes is not None:
        table = pd.read_parquet(outcomes) if str(outcomes).endswith(".parquet") \
            else pd.read_csv(outcomes, dtype={"call_id": str, "run_date": str})
        metrics["outcomes"] = outcome_figures(ranked_calls(info), table, seed)
    write_report(out_dir, metrics, labels=labels, seed=seed,
                 config={"model": pred.model_name, "labels": str(sheet_path)},
                 notes=summary_lines(metrics))
    log(f"UA {m['ua']:.3f} (95 % {intervals['ua']}) on {len(y)} labelled segments of "
        f"{counts['calls']} calls ({counts['unclear']} unclear, {counts['unlabelled']} not "
        f"labelled) -> {out_dir}")
    return metrics


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """The lines ``summary.md`` of ``evaluate --labels`` adds: what the figures rest on, the UA
    interval and the ranking against each outcome."""
    def pct(v) -> str:
        return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"

    def span(iv) -> str:
        return "–" if not iv else f"{pct(iv[0])}-{pct(iv[1])} %"

    done, iv = metrics["labelled"], metrics.get("intervals") or {}
    lines = [f"- Rests on {done['used']} labelled segments of {done['calls']} calls "
             f"({done['unclear']} labelled unclear and set aside, {done['unlabelled']} not "
             f"labelled); UA 95 % interval {span(iv.get('ua'))} ({iv.get('method', '')})"]
    for name, o in (metrics.get("outcomes") or {}).items():
        figs = ", ".join(f"{k} {pct(v)} % ({span(o['intervals'].get(k))})" for k, v in o.items()
                         if k.startswith(("precision@", "recall@", "auroc")))
        lines.append(f"- Outcome `{name}` ({o['positives']} of {o['calls']} calls): {figs}")
    return lines
