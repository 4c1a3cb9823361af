"""Does tonight's audio look like the training audio? The night's ``drift`` section.

Each unit of calls stages, beside its rows, what its windows looked like to the model's
training reference (``ser_ray.models.drift``): how many windows, how many beyond the
out-of-distribution threshold, per-feature decile counts and the predicted labels
(:func:`unit_drift`, ``drift.json``). Publishing adds the units up in listing order
(:func:`night_drift`): the share of windows out of distribution, the population stability index
(PSI) of each feature summarised, the predicted-label shares against the training classes, the
inputs' sample rates, channels and codecs, and the speech share; against the configured limits
(``drift`` in the score config) it says whether the night is an alarm and why, in one sentence
the report page shows as a banner.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ser_ray.config import DriftConfig
from ser_ray.schema import NO_SPEECH, SCORED
from ser_ray.storage import Storage, join

STAGED = "drift.json"
PSI_SHIFTED = 0.25  # a feature whose PSI is above this has shifted (the usual rule of thumb)


def unit_drift(reference, X: np.ndarray | None, distances: np.ndarray | None,
               top_labels: Sequence[str]) -> dict[str, Any]:
    """What a unit's windows ``X`` (as the head sees them), their ``distances`` from the
    training rows and their predicted labels look like next to the training ``reference``
    (None: the model keeps none; counts only)."""
    n = 0 if X is None else len(X)
    out: dict[str, Any] = {"windows": n, "labels": dict(Counter(map(str, top_labels)))}
    if reference is None:
        return out
    try:
        d = np.asarray(distances if n else [], dtype=np.float64)
        if len(d) != n or not np.isfinite(d).all():
            raise ValueError("no distance for some windows (the reference failed on them)")
        out["ood"] = int((d > reference.threshold).sum())
        out["bins"] = reference.bin_counts(X).tolist() if n else None
    except Exception as exc:  # the night's rows matter more than its drift figures
        out.pop("ood", None)
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def read_units(storage: Storage, dirs: Sequence[str]) -> list[dict[str, Any] | None]:
    """Each unit's staged drift counts (None for a unit staged without them)."""
    out = []
    for d in dirs:
        uri = join(d, STAGED)
        out.append(json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None)
    return out


def _shares(values: pd.Series) -> dict[str, float]:
    v = values.dropna()
    return {str(k): round(float(s), 4) for k, s in v.astype(str).value_counts(normalize=True).items()}


def _inputs(calls: pd.DataFrame) -> dict[str, Any]:
    """Sample rates, channel counts and codecs of the night's decoded calls (shares of calls)."""
    read = calls[calls["status"].isin([SCORED, NO_SPEECH])] if len(calls) else calls
    out: dict[str, Any] = {"calls": int(len(read))}
    for col in ("sample_rate", "channels", "codec"):
        out[col] = _shares(read[col].astype("Int64") if col != "codec" else read[col]) \
            if col in read and len(read) else {}
    return out


def _speech_share(calls: pd.DataFrame) -> float | None:
    scored = calls[calls["status"].isin([SCORED, NO_SPEECH])] if len(calls) else calls
    total = float(scored["duration_s"].fillna(0).sum()) if len(scored) else 0.0
    if total <= 0:
        return None
    return float(scored["speech_s"].fillna(0).sum()) / total


def night_drift(units: Sequence[dict[str, Any] | None], calls: pd.DataFrame, reference,
                labels: Sequence[str], cfg: DriftConfig, model_rate: int | None) -> dict[str, Any]:
    """The night's ``drift`` section from its units' staged counts (in listing order), its calls
    table and the model's training ``reference`` (None: the model keeps none)."""
    have = [u for u in units if u is not None]
    windows = sum(u["windows"] for u in have)
    tonight = Counter()
    for u in have:
        tonight.update(u.get("labels") or {})
    counted = sum(tonight.values())
    rec: dict[str, Any] = {
        "windows": int(windows), "units_without_counts": len(units) - len(have),
        "inputs": _inputs(calls), "model_sample_rate": model_rate,
        "speech_share": _speech_share(calls),
        "labels": {"tonight": {lab: round(tonight.get(lab, 0) / counted, 4) for lab in labels}
                   if counted else {}},
        "limits": {"max_ood_share": cfg.max_ood_share, "max_psi": cfg.max_psi,
                   "max_label_shift": cfg.max_label_shift, "min_windows": cfg.min_windows},
        "reference": None, "ood_share": None, "psi": None}
    if reference is not None:
        rec["reference"] = {k: v for k, v in reference.meta().items() if k != "class_shares"}
        checked = [u for u in have if "ood" in u]
        n = sum(u["windows"] for u in checked)
        rec["windows_checked"] = int(n)
        if n:
            rec["ood_share"] = sum(u["ood"] for u in checked) / n
            bins = sum(np.asarray(u["bins"], dtype=np.int64) for u in checked if u.get("bins"))
            psi = reference.psi(bins)
            top = np.argsort(-psi, kind="stable")[:5]
            chance = reference.psi_by_chance(n)
            rec["psi"] = {"median": float(np.median(psi)), "by_chance": chance,
                          "median_excess": max(float(np.median(psi)) - chance, 0.0),
                          "p90": float(np.quantile(psi, 0.9)),
                          "max": float(psi.max()), "shifted_share": float((psi > PSI_SHIFTED).mean()),
                          "features": int(len(psi)),
                          "top": [[int(j), round(float(psi[j]), 4)] for j in top]}
        training = reference.class_shares
        rec["labels"]["training"] = training
        if counted and training:
            rec["labels"]["total_variation"] = 0.5 * sum(
                abs(tonight.get(lab, 0) / counted - training.get(lab, 0.0)) for lab in labels)
    _judge(rec, cfg)
    return rec


def _judge(rec: dict[str, Any], cfg: DriftConfig) -> None:
    """``alarms`` (the limits passed), ``alarm`` and ``message``, in place."""
    figures = {"ood_share": (rec["ood_share"], cfg.max_ood_share),
               "psi_median_excess": ((rec["psi"] or {}).get("median_excess"), cfg.max_psi),
               "label_shift": (rec["labels"].get("total_variation"), cfg.max_label_shift)}
    alarms = [{"figure": k, "value": v, "limit": lim} for k, (v, lim) in figures.items()
              if v is not None and lim is not None and v > lim]
    enough = rec.get("windows_checked", rec["windows"]) >= cfg.min_windows
    rec["alarms"] = alarms if enough else []
    rec["alarm"] = bool(rec["alarms"])
    if rec["reference"] is None:
        rec["note"] = ("the model keeps no training reference (trained before ser-ray kept one): "
                       "retrain it for out-of-distribution and PSI checks")
    elif not enough:
        rec["note"] = (f"{rec.get('windows_checked', 0)} windows, fewer than drift.min_windows="
                       f"{cfg.min_windows}: figures reported, no alarm")
    rec["message"] = describe(rec)


def _rate(hz: str) -> str:
    try:
        return f"{int(hz) / 1000:g} kHz"
    except ValueError:
        return str(hz)


def describe(rec: dict[str, Any]) -> str:
    """One sentence for people: the banner of an alarmed night, the drift line of any other."""
    parts = []
    if rec.get("ood_share") is not None:
        parts.append(f"{rec['ood_share']:.0%} of windows out of distribution")
    psi = rec.get("psi") or {}
    if psi:
        parts.append(f"median feature PSI {psi['median']:.2f} ({psi['by_chance']:.2f} expected "
                     f"by chance)")
    tv = rec["labels"].get("total_variation")
    if tv is not None and any(a["figure"] == "label_shift" for a in rec.get("alarms", [])):
        parts.append(f"predicted emotions differ from the training classes (total variation {tv:.2f})")
    rates = rec["inputs"].get("sample_rate") or {}
    if rates:
        rate, share = max(rates.items(), key=lambda kv: kv[1])
        codecs = rec["inputs"].get("codec") or {}
        codec = max(codecs.items(), key=lambda kv: kv[1])[0] if codecs else ""
        trained = ((rec.get("reference") or {}).get("inputs") or {}).get("sample_rate") or {}
        was = max(trained.items(), key=lambda kv: kv[1])[0] if trained else None
        note = f"; training audio mostly {_rate(was)}" if was and was != rate else ""
        parts.append(f"mostly {_rate(rate)}{' ' + codec if codec else ''} ({share:.0%} of calls"
                     f"{note})" if share >= 0.5 else f"{len(rates)} sample rates")
    head = "tonight's audio differs from training: " if rec.get("alarm") else ""
    return head + ("; ".join(parts) if parts else "no windows to compare")


def night_summary(run: dict[str, Any]) -> dict[str, Any] | None:
    """The few drift figures the index of nights charts (None: the night has no drift section)."""
    d = run.get("drift")
    if not d:
        return None
    return {"ood_share": d.get("ood_share"), "psi_median": (d.get("psi") or {}).get("median"),
            "alarm": bool(d.get("alarm")), "limit": (d.get("limits") or {}).get("max_ood_share")}
