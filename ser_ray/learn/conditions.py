"""Test-side conditions: the test speakers' recordings re-extracted from their audio after noise
(``noisy_snr_db``) or a telephone line (``channel_protocol``), scored by each fold's model.

Only the test side is made here; the training side sees augmentation through ``augment``. Each
set is made once per run (one Ray Data pass decodes each file once and produces every
condition) and every fold picks its test recordings from it by ``source_id``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ser_ray.config import AudioConfig, LearnConfig, from_dict
from ser_ray.console import logger
from ser_ray.features.inputs import extractor_from_settings, from_every_state, join_features
from ser_ray.learn.data import FeatureData, manifest
from ser_ray.learn.evaluate import predict_rows, utterance_level
from ser_ray.learn.metrics import compute_metrics

log = logger()


class ConditionSets:
    """Rows of each condition (an SNR, a codec), keyed as the report shows them."""

    def __init__(self, data: FeatureData, arrays: list[np.ndarray], meta: pd.DataFrame,
                 column: str, keys: list[Any]):
        fc = data.feature_config
        X = (np.stack(join_features(fc, list(zip(*arrays)))).astype(np.float32) if arrays
             else np.zeros((0, *data.X.shape[1:]), np.float32))
        label_of = dict(zip(data.meta["utterance_id"], data.meta["label"]))
        meta = meta.assign(label=meta["utterance_id"].map(label_of)).reset_index(drop=True)
        values = meta[column].to_numpy()
        self.sets: dict[Any, tuple[np.ndarray, pd.DataFrame]] = {}
        for key in keys:
            keep = (np.isclose(values.astype(float), float(key)) if column == "snr_db"
                    else values == key)
            self.sets[key] = (X[keep], meta[keep].reset_index(drop=True))
        self.data = data

    def score(self, predictor, test_sources: set[str]) -> dict[str, dict[str, float]]:
        """{condition: {ua, wa, n}} of ``predictor`` on the test recordings in each condition."""
        out = {}
        index = {lab: i for i, lab in enumerate(self.data.labels)}
        for key, (X, meta) in self.sets.items():
            keep = meta["source_id"].isin(test_sources).to_numpy()
            Xs, ms = X[keep], meta[keep].reset_index(drop=True)
            y = ms["label"].map(index).to_numpy(np.int64)
            m = utterance_metrics(predictor, Xs, ms, y, self.data.labels)
            out[str(key)] = {"ua": m["ua"], "wa": m["wa"], "n": m["n"]}
        return out


def utterance_metrics(predictor, X: np.ndarray, meta: pd.DataFrame, y: np.ndarray,
                      labels) -> dict[str, Any]:
    """Utterance-level metrics of ``predictor`` on labelled rows (``n``: utterances): a fold's
    test speakers, a test set in a condition. Rows that keep every hidden state (a nested
    choice of ``layers``) are given the states the predictor was fitted on."""
    X = from_every_state(X, (predictor.feature_config or {}).get("layers"))
    _, proba, y_true = utterance_level(meta, predict_rows(predictor, X, meta), y)
    return {**compute_metrics(y_true, proba.argmax(1), labels), "n": int(len(y_true))}


def _inputs(data: FeatureData) -> tuple[pd.DataFrame, AudioConfig, Any]:
    fc = data.feature_config
    rows = manifest(fc["roots"])
    rows = rows[rows["utterance_id"].isin(set(data.meta["utterance_id"]))]
    return (rows.reset_index(drop=True), from_dict(AudioConfig, fc["audio"]),
            [extractor_from_settings(fc["extractors"][n]) for n in fc["features"]])


def noisy_sets(data: FeatureData, cfg: LearnConfig) -> ConditionSets:
    """Every recording mixed with ``noise_dir`` at each SNR of ``noisy_snr_db``."""
    from ser_ray.learn import augment

    if not cfg.noise_dir:
        raise ValueError("noisy_snr_db needs noise_dir: a folder of noise recordings")
    rows, audio_cfg, extractor = _inputs(data)
    log(f"noisy test sets: {len(rows)} recordings x {len(cfg.noisy_snr_db)} SNRs")
    arrays, meta = augment.noisy_features(rows, audio_cfg=audio_cfg, extractor=extractor,
                                          noise=cfg.noise_dir, snr_db=list(cfg.noisy_snr_db),
                                          seed=cfg.seed)
    return ConditionSets(data, arrays, meta, "snr_db", list(cfg.noisy_snr_db))


def channel_sets(data: FeatureData, cfg: LearnConfig) -> ConditionSets:
    """Every recording through a clean telephone line per codec of ``channel_protocol``."""
    from ser_ray.learn import augment

    cp = cfg.channel_protocol
    rows, audio_cfg, extractor = _inputs(data)
    log(f"telephone test sets: {len(rows)} recordings x {len(cp.codecs)} codecs "
        f"({', '.join(cp.codecs)})")
    arrays, meta = augment.channel_features(rows, audio_cfg=audio_cfg, extractor=extractor,
                                            codecs=list(cp.codecs), kbps=cp.kbps, seed=cfg.seed)
    return ConditionSets(data, arrays, meta, "channel", list(cp.codecs))


def telephone_trained(cfg: LearnConfig) -> bool:
    """Whether ``cfg`` trains on telephone copies (an augment chain with a telephone step)."""
    return cfg.augment.variant != "none" and any(
        s.get("name") == "telephone" for s in cfg.augment.steps)


def other_mode(cfg: LearnConfig) -> LearnConfig:
    """The channel protocol's other training mode: clean when ``cfg`` trains with telephone
    copies; else ``cfg`` plus ``channel_protocol.copies`` telephone copies of each training
    recording (the step's default ranges: every codec, loss, clipping, level)."""
    import dataclasses

    from ser_ray.config import AugmentConfig

    if telephone_trained(cfg):
        aug = AugmentConfig()
    else:
        aug = AugmentConfig(variant="merged", steps=({"name": "telephone"},),
                            copies=cfg.channel_protocol.copies)
    return dataclasses.replace(cfg, augment=aug)


def mode_name(cfg: LearnConfig) -> str:
    return "telephone" if telephone_trained(cfg) else "clean"


def summarise(fold_rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """Mean UA/WA over folds of each condition of ``row[key]`` ({condition: {ua, wa}})."""
    conditions = list(fold_rows[0][key]) if fold_rows else []
    return {c: {"ua_mean": float(np.mean([r[key][c]["ua"] for r in fold_rows])),
                "wa_mean": float(np.mean([r[key][c]["wa"] for r in fold_rows]))}
            for c in conditions}
