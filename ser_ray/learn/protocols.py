"""Protocols that fit more than one model per fold or per run: the channel protocol (a clean
and a telephone-trained model, each scored clean and through each codec) and the
leave-one-corpus-out matrix (a model per single corpus, scored on every other corpus)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ser_ray.config import LearnConfig
from ser_ray.learn import conditions
from ser_ray.learn.data import FeatureData
from ser_ray.learn.folds import Fitted, fit, is_torch, make_augmenter, prepare_fold, val_split


def score_rows(predictor, data: FeatureData, idx: np.ndarray) -> dict[str, Any]:
    """Utterance-level metrics of ``predictor`` on rows ``idx`` of ``data``."""
    meta = data.meta.iloc[idx].reset_index(drop=True)
    return conditions.utterance_metrics(predictor, data.X[idx], meta, data.y[idx], data.labels)


class ChannelProtocol:
    """``channel_protocol``: each fold's model scored on the clean test speakers and on them
    through a telephone line per codec; with ``compare``, the other training mode (clean <->
    telephone copies) is fitted on the same fold and scored the same way."""

    def __init__(self, data: FeatureData, cfg: LearnConfig, plans):
        self.data, self.cfg = data, cfg
        self.sets = conditions.channel_sets(data, cfg)
        self.other = conditions.other_mode(cfg) if cfg.channel_protocol.compare else None
        self.other_augmenter = (make_augmenter(data, self.other, [tr for _, tr, _ in plans])
                                if self.other is not None else None)

    def _modes(self, predictor, clean: dict[str, Any], sources: set[str]) -> dict[str, Any]:
        return {"clean": {"ua": clean["ua"], "wa": clean["wa"]},
                **self.sets.score(predictor, sources)}

    def fold(self, fitted: Fitted, clean: dict[str, Any], fold, tr, va, work_dir: Path,
             choice: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fold's model on each line, and its twin of the other training mode (with the
        fold's nested ``choice`` of options, when it made one)."""
        from ser_ray.learn.select import configure, view

        data = self.data
        sources = set(data.meta["source_id"].iloc[fold.test])
        out = {conditions.mode_name(self.cfg): self._modes(fitted.predictor, clean, sources)}
        if self.other is not None:
            other = configure(self.other, choice) if choice else self.other
            data = view(data, other)
            p = prepare_fold(data, tr, va, other, self.other_augmenter, not is_torch(other.model))
            f = fit(data, p, other, storage_path=work_dir / "train",
                    run_name=f"fold{fold.index}-{conditions.mode_name(other)}")
            out[conditions.mode_name(other)] = self._modes(
                f.predictor, score_rows(f.predictor, data, fold.test), sources)
        return out

    def summary(self, fold_rows: list[dict[str, Any]]) -> dict[str, Any]:
        cp = self.cfg.channel_protocol
        modes = {}
        for mode in fold_rows[0]["channel"] if fold_rows else []:
            per = [{"m": r["channel"][mode]} for r in fold_rows]
            modes[mode] = conditions.summarise(per, "m")
        training = {conditions.mode_name(c): _training(c)
                    for c in (self.cfg, self.other) if c is not None}
        return {"codecs": list(cp.codecs), "kbps": cp.kbps, "modes": modes, "training": training}


def _training(cfg: LearnConfig) -> str:
    """How a training mode treats its training side, in words: ``none`` or e.g. ``merged, 1
    copy of telephone``."""
    aug = cfg.augment
    if aug.variant == "none":
        return "none"
    steps = "+".join(s["name"] for s in aug.steps) or "the default chain"
    return f"{aug.variant}, {aug.copies} cop{'y' if aug.copies == 1 else 'ies'} of {steps}"


def corpus_matrix(data: FeatureData, cfg: LearnConfig, augmenter, folds, fold_rows,
                  work_dir: Path) -> dict[str, Any]:
    """leave-one-corpus-out's cross-corpus table (as EmoBox prints it): a model per single
    corpus, trained on all its rows the way each fold trains, scored on every other corpus (the
    labels that model knows); and the protocol's own row, each corpus held out of a model
    trained on all the others (``folds`` / ``fold_rows``)."""
    corpora = sorted(set(data.meta["corpus"].astype(str)))
    corpus = data.meta["corpus"].astype(str).to_numpy()
    label = data.meta["label"].to_numpy()
    rows = []
    for a in corpora:
        train = np.flatnonzero(corpus == a)
        tr, va = val_split(data, train, cfg)
        p = prepare_fold(data, tr, va, cfg, augmenter, not is_torch(cfg.model))
        f = fit(data, p, cfg, storage_path=work_dir / "train", run_name=f"corpus-{a}")
        known = sorted(set(label[train]))
        ua = {}
        for b in corpora:
            test = np.flatnonzero((corpus == b) & np.isin(label, known))
            if b != a and len(test):
                ua[b] = score_rows(f.predictor, data, test)["ua"]
        rows.append({"trained_on": a, "ua": ua, "n_train": int(len(train))})
    held = {fold.name.split("=", 1)[1]: r["ua"] for fold, r in zip(folds, fold_rows)}
    rows.append({"trained_on": "all the others", "ua": held})
    return {"corpora": corpora, "rows": rows}
