"""Nested selection: hyperparameters and encoder layers chosen on the training side only.

``LearnConfig.select`` maps a config key to its candidates (``layers``, or a dotted key such as
``model_options.C``). For each outer fold of ``cv``, and once over every row for ``train``,
:func:`choose` runs every combination through the same cross-validation as ``cv`` itself, on
the training rows only, split into ``select_folds`` speaker folds, and keeps the one with the
best mean UA (ties: the first in grid order). The outer test speakers are never among the rows
it reads, so a figure measured with ``select`` is not tuned on its own test set.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ser_ray.config import (ChannelProtocolConfig, LearnConfig, TrackingConfig, from_dict,
                            set_path, to_dict)
from ser_ray.learn.data import FeatureData


def grid(select: dict[str, Any], states: int | None = None) -> list[dict[str, Any]]:
    """Every combination of the candidates, keys in sorted order, values in the order given;
    ``layers: every`` is each hidden state after the embeddings, 1 .. ``states`` - 1."""
    keys = sorted(select)
    values = [list(range(1, states or 1)) if (k, select[k]) == ("layers", "every") else select[k]
              for k in keys]
    if any(not v for v in values):
        raise ValueError("select.layers: every needs an encoder feature with hidden states")
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def configure(cfg: LearnConfig, choice: dict[str, Any]) -> LearnConfig:
    """``cfg`` with one candidate's values set (dotted keys into nested fields) and nothing
    left to select."""
    data = to_dict(cfg)
    for key, value in choice.items():
        set_path(data, key, value)
    data["select"] = {}
    return from_dict(LearnConfig, data, f"select {json.dumps(choice, default=str)}")


def view(data: FeatureData, cfg: LearnConfig) -> FeatureData:
    """Rows loaded with every hidden state (``select.layers``) -> the states ``cfg.layers``
    picks, stacked for a model that weighs layers, joined for any other. Other data: as is."""
    from ser_ray.features.inputs import from_every_state, layer_selection
    from ser_ray.models import get_model_spec

    held = data.feature_config.get("layers") or {}
    if held.get("spec") != "all" or not held.get("stack") or data.X.ndim != 3:
        return data
    stack = getattr(get_model_spec(cfg.model).config, "takes_layers", False)
    selection = layer_selection(cfg.layers, held["states"], stack)
    return dataclasses.replace(data, X=from_every_state(data.X, selection),
                               feature_config={**data.feature_config, "layers": selection})


def inner_config(cfg: LearnConfig, choice: dict[str, Any], folds: int) -> LearnConfig:
    """One candidate as the inner cross-validation runs it: ``folds`` speaker folds, no
    test-side conditions (noise, telephone lines), no tracking."""
    return dataclasses.replace(configure(cfg, choice), protocol="speaker-kfold",
                               folds=folds, test_speakers=(), noisy_snr_db=(),
                               channel_protocol=ChannelProtocolConfig(),
                               tracking=TrackingConfig())


def check(cfg: LearnConfig) -> None:
    """What ``select`` cannot be combined with (yet). Augmented copies and the noisy and
    telephone test sets keep every hidden state and are given the states each fold's model
    chose; the leave-one-corpus-out matrix trains models of its own, which choose nothing."""
    if "layers" in cfg.select and cfg.protocol == "leave-one-corpus-out":
        raise ValueError("select.layers cannot be combined with leave-one-corpus-out (its "
                         "corpus matrix fits single-corpus models): fix layers, or select "
                         "model options only")


def choose(data: FeatureData, rows: np.ndarray, cfg: LearnConfig, work_dir: str | Path,
           cross_validate: Callable[..., dict[str, Any]], augmenter=None) -> dict[str, Any]:
    """The best candidate of ``cfg.select`` by mean UA over ``select_folds`` speaker folds of
    ``rows`` (the training side: nothing else is read), each run through ``cross_validate``
    (``learn.experiment``'s, which calls this) with the run's ``augmenter`` (its copies are
    taken by source, so an inner fold gets its own training rows' copies only). Returns
    ``{choice, table, folds, speakers}``; ``table`` holds every candidate's inner UA."""
    sub = data.subset(np.asarray(rows))
    speakers = sorted(set(sub.meta["speaker"]))
    folds = min(cfg.select_folds, len(speakers))  # fewer speakers: one fold each
    if folds < 2:
        raise ValueError(f"select: the training side has {len(speakers)} speaker(s); choosing "
                         "needs at least 2 to hold one out")
    table = []
    states = (data.feature_config.get("layers") or {}).get("states")
    for k, choice in enumerate(grid(cfg.select, states)):
        icfg = inner_config(cfg, choice, folds)
        m = cross_validate(view(sub, icfg), icfg, Path(work_dir) / f"candidate{k}",
                           progress=False, calibrate_folds=False, augmenter=augmenter)
        table.append({"choice": choice, "ua": round(float(m["ua_mean"]), 5)})
    best = max(range(len(table)), key=lambda i: (table[i]["ua"], -i))
    return {"choice": table[best]["choice"], "table": table, "folds": folds,
            "speakers": speakers}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a cv's folds chose: how often each choice won."""
    counts: dict[str, int] = {}
    for r in rows:
        key = json.dumps(r["choice"], sort_keys=True, default=str)
        counts[key] = counts.get(key, 0) + 1
    return {"chosen": counts, "candidates": len(rows[0]["table"]) if rows else 0,
            "inner_folds": rows[0]["folds"] if rows else None}


def notes(selection: dict[str, Any] | None) -> list[str]:
    """summary.md's lines on what the folds chose, and how."""
    if not selection:
        return []
    lines = ["", "## Chosen on training speakers only", "",
             f"Each fold chose among {selection['candidates']} candidates by mean UA over "
             f"{selection['inner_folds']} speaker folds of its training side; the test speakers "
             "were not read.", ""]
    lines += [f"- {choice}: {n} fold(s)" for choice, n in
              sorted(selection["chosen"].items(), key=lambda kv: -kv[1])]
    return lines
