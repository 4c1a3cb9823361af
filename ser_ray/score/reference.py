"""Reference statistics: what a scoring window is standardised with before the model sees it
(the model's own, the training population's, the run's calls', or each call's own)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ser_ray.config import NORMALISE_GROUPS, ScoreConfig
from ser_ray.normalise import Moments, group_standardise, standardise
from ser_ray.runtime import content_id
from ser_ray.score.model import ModelInfo


class Reference:
    """The statistics a scoring window is standardised with before the model sees it.

    A model trained with ``global`` (or ``none``) normalisation carries its training statistics
    itself (``Predictor.prepare``, or the scaler inside a classical pipeline): nothing to do here.
    A model trained with ``speaker`` or ``corpus`` normalisation saw each group's rows
    standardised by that group's own statistics; at scoring time ``ScoreNormalisation.reference``
    says what stands in for the group:

    - ``run``: the run's calls (per ``group_by`` value when set), from the moments every unit
      staged in a first pass; a population of fewer than ``min_calls`` calls falls back to the
      whole run, then to the training population;
    - ``training``: the pooled statistics of the model's raw training rows;
    - ``call``: each call by its own statistics. An angry caller who is angry all call long then
      looks like an average call: between-call differences, what the urgency rank is for, are gone.

    ``settings``: ``{"mode": model|run|training|call, "key": str|None, "table": {group: {"mean",
    "std", "source"}}}`` as :func:`reference_settings` and :func:`reference_table` build it.
    """

    def __init__(self, settings: dict[str, Any], predictor):
        self.mode, self.key = settings["mode"], settings.get("key")
        self.time_axis = predictor.feature_config.get("time_axis")
        self.table = {g: (np.asarray(t["mean"], np.float32), np.asarray(t["std"], np.float32), t["source"])
                      for g, t in (settings.get("table") or {}).items()}
        if self.mode == "training":
            n = predictor.normalisation
            self.table = {"": (n["population_mean"], n["population_std"], "training")}

    def apply(self, X: np.ndarray, group: str) -> tuple[np.ndarray, str]:
        """(X standardised for the model, what it was standardised with)."""
        if self.mode == "model":
            return X, "training"
        if self.mode == "call":
            return group_standardise(X, np.zeros(len(X)), self.time_axis), "call"
        mean, std, source = self.table[group] if group in self.table else self.table[""]
        return standardise(X, mean, std), source


# What the run record says a one-pass reference standardised windows with.
ONE_PASS_STATISTICS = {"model": "the model's own training statistics (every call on its own)",
                       "training": "training population (pooled statistics of the training rows)",
                       "call": "each call by itself"}


def trained_normalisation(model: ModelInfo) -> str:
    return model.feature_config.get("normalise", "global")


def training_population(model: ModelInfo) -> tuple[np.ndarray, np.ndarray] | None:
    """The pooled statistics of the model's raw training rows, when it stored them."""
    from safetensors.numpy import load as load_numpy

    norm = load_numpy(model.files["normalisation.safetensors"])
    if "population_mean" not in norm:
        return None
    return norm["population_mean"], norm["population_std"]


def reference_settings(cfg: ScoreConfig, model: ModelInfo) -> dict[str, Any]:
    """How this run standardises windows before the model (see :class:`Reference`); for
    ``run`` the table is filled in after the extract pass (:func:`reference_table`)."""
    if NORMALISE_GROUPS.get(trained_normalisation(model)) is None:
        return {"mode": "model"}
    ref = cfg.normalisation.reference
    if ref == "training" and training_population(model) is None:
        raise ValueError(f"--model {model.path}: normalisation.reference=training, but the model "
                         "stores no training population statistics (it was trained before "
                         "ser-ray kept them); retrain it, or use reference=run")
    return {"mode": ref}


def reference_table(populations: dict[str, dict[str, Any]], cfg: ScoreConfig,
                    training: tuple[np.ndarray, np.ndarray] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reference statistics of each population of the run -> (table for the actors, record).

    ``populations``: group value -> {"calls", "windows", "moments"} summed over the run's units
    (one group, ``""``, without ``group_by``; calls without a metadata value form ``""`` too).
    A group of at least ``min_calls`` calls is its own reference; a smaller one uses the whole
    run when that has ``min_calls``, else the training population.
    """
    from functools import reduce

    n = cfg.normalisation
    whole = None
    if populations:
        calls = sum(p["calls"] for p in populations.values())
        whole = {"calls": calls, "windows": sum(p["windows"] for p in populations.values()),
                 "moments": reduce(lambda a, b: a + b, (populations[g]["moments"] for g in sorted(populations)))}
    fallback = None
    if whole is not None and whole["calls"] >= n.min_calls:
        fallback = (*whole["moments"].mean_std(), "run")
    elif training is not None:
        fallback = (*training, "training")
    table, record = {}, {}
    for g in sorted(populations):
        pop = populations[g]
        if n.group_by and pop["calls"] >= n.min_calls:
            entry = (*pop["moments"].mean_std(), f"run:{n.group_by}={g}")
        elif fallback is not None:
            entry = fallback
        else:
            raise ValueError(
                f"normalisation.reference=run: the run has {whole['calls']} call(s) with speech, "
                f"fewer than normalisation.min_calls={n.min_calls}, and the model stores no "
                "training population to fall back to (it was trained before ser-ray kept one); "
                "retrain the model, lower min_calls, or set normalisation.reference=call (each "
                "call by itself: see README)")
        table[g] = {"mean": entry[0].tolist(), "std": entry[1].tolist(), "source": entry[2]}
        record[g] = {"calls": pop["calls"], "windows": pop["windows"], "statistics": entry[2]}
    return table, record


def reference_key(table: dict[str, Any]) -> str:
    return content_id(table, 12)


class Populations:
    """The extract pass's statistics, added up per reference group (``group_by`` value) call by
    call in listing order, whatever order units finish or resume in: the same sums, and so the
    same statistics, however the calls were cut into units."""

    def __init__(self):
        self.groups: dict[str, dict[str, Any]] = {}  # group -> {"calls", "windows", "moments"}
        self._waiting: dict[int, list[dict[str, Any]]] = {}
        self._next = 0

    def add(self, position: int, per_call: list[dict[str, Any]]) -> None:
        """The per-call moments of the unit at ``position`` in the listing."""
        self._waiting[position] = per_call
        while self._next in self._waiting:
            for d in self._waiting.pop(self._next):
                m = Moments.from_arrays(d)
                pop = self.groups.setdefault(d["group"], {"calls": 0, "windows": 0, "moments": None})
                pop["calls"] += 1
                pop["windows"] += d["windows"]
                pop["moments"] = m if pop["moments"] is None else pop["moments"] + m
            self._next += 1
