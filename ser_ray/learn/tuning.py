"""Ray Tune sweeps: every trial cross-validates one :class:`LearnConfig` and reports per fold.

A search space file (YAML) names the protocol, the search algorithm, the resources and the
space; see ``configs/tune_demo.yaml``. Keys of ``space`` are LearnConfig fields in dotted form
(``model_options.lr``); a value is a domain::

    model: {choice: [svm, logreg]}                     # or a list of dicts merged into the config
    model_options.C: {loguniform: [0.1, 100]}
    normalise: {grid: [global, speaker]}

Each trial reports its running mean UA after every fold, so ASHA stops weak trials after a few
folds. The sweep writes ``results.csv`` (best first), ``best.json`` and ``best_model/`` (the best
configuration retrained on every row). Rerunning into the same ``--output`` resumes the sweep.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from ser_ray import config as config_mod
from ser_ray.config import LearnConfig, TrackingConfig
from ser_ray.console import logger
from ser_ray.ranges import Checked

log = logger()

METRIC = "ua_mean"


@dataclass(frozen=True)
class Resources(Checked):
    cpus_per_trial: float = 0.5       # the trial's own process (classical models fit here)
    workers_per_trial: int = 1        # Ray Train workers of torch trials
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 0.0
    max_concurrent: int | None = None  # None = what the cluster's CPUs allow (at least 1)


@dataclass(frozen=True)
class SweepSpace(Checked):
    base: dict[str, Any] = field(default_factory=dict)      # LearnConfig fields for every trial
    space: dict[str, Any] = field(default_factory=dict)     # dotted field -> domain
    search: str = "random"            # random | grid | optuna
    num_samples: int | None = None    # random/optuna: trials (default 4); grid: repeats (default 1)
    scheduler: str = "asha"           # asha | fifo
    grace_period: int = 2             # ASHA: folds a trial always runs
    reduction_factor: int = 2
    resources: Resources = field(default_factory=Resources)
    export_best: bool = True
    max_failures: int = 3             # a trial whose worker or node dies is retried this often
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # see ser_ray.learn.tracking
    seed: int = 0


def load_space(path: str | Path) -> SweepSpace:
    data = yaml.safe_load(Path(path).read_text()) or {}
    space = config_mod.from_dict(SweepSpace, data, "space file")
    if space.search not in SEARCHERS:
        raise ValueError(f"search={space.search!r} is not one of {sorted(SEARCHERS)}")
    if space.scheduler not in ("asha", "fifo"):
        raise ValueError(f"scheduler={space.scheduler!r} is not one of ['asha', 'fifo']")
    for key, dom in space.space.items():
        _domain(key, dom, space.search)  # validate early, with the key in the message
    trial_config(space, {})  # the base config must be valid on its own
    return space


def _domain(key: str, dom: Any, search: str):
    from ray import tune

    if not isinstance(dom, dict) or len(dom) != 1:
        raise ValueError(f"space.{key}: expected one of {{choice|grid|uniform|loguniform|"
                         f"randint: ...}}, got {dom!r}")
    (kind, arg), = dom.items()
    makers = {
        "choice": lambda: tune.grid_search(list(arg)) if search == "grid" else tune.choice(list(arg)),
        "grid": lambda: tune.grid_search(list(arg)),
        "uniform": lambda: tune.uniform(*arg),
        "loguniform": lambda: tune.loguniform(*arg),
        "randint": lambda: tune.randint(*arg),
    }
    if kind not in makers:
        raise ValueError(f"space.{key}: unknown domain {kind!r}; use one of {sorted(makers)}")
    if search == "grid" and kind not in ("choice", "grid"):
        raise ValueError(f"space.{key}: search=grid needs choice/grid domains, not {kind}")
    return makers[kind]()


def trial_config(space: SweepSpace, sampled: dict[str, Any]) -> LearnConfig:
    """LearnConfig of one trial: the base, then each sampled value (dicts merge at top level)."""
    data = json.loads(json.dumps(space.base))
    data.pop("tracking", None)  # the sweep tracks its trials (space.tracking), not each cv
    data.setdefault("seed", space.seed)
    for key, value in sampled.items():
        value = json.loads(json.dumps(value, default=lambda o: o.item()))  # numpy -> plain
        if isinstance(value, dict) and key == "model":
            for k, v in value.items():
                config_mod.set_path(data, k, v, merge=True)
        else:
            config_mod.set_path(data, key, value, merge=True)
    data.setdefault("cpus_per_worker", space.resources.cpus_per_worker)
    data.setdefault("num_workers", space.resources.workers_per_trial)
    data.setdefault("use_gpu", space.resources.gpus_per_worker > 0)
    return config_mod.from_dict(LearnConfig, data, "trial")


def concurrent_trials(res: Resources, cluster_cpus: float) -> int:
    """Trials that fit at once: each takes its own CPUs plus its Train workers' CPUs."""
    if res.max_concurrent:
        return res.max_concurrent
    per_trial = res.cpus_per_trial + res.workers_per_trial * res.cpus_per_worker
    return max(1, int(math.floor(cluster_cpus / per_trial + 1e-9)))


def trial_resources(space: SweepSpace, sampled: dict[str, Any]) -> dict[str, float]:
    """What one trial's task reserves: its own CPUs, plus its worker's when its torch fits run
    in the task (one CPU worker, the local trainer). Ray Train workers reserve their own."""
    from ser_ray.learn.experiment import is_torch
    from ser_ray.config import pick_trainer

    cfg = trial_config(space, sampled)
    local = is_torch(cfg.model) and \
        pick_trainer(cfg.trainer, cfg.num_workers, cfg.use_gpu) == "local"
    return {"CPU": space.resources.cpus_per_trial + (cfg.cpus_per_worker if local else 0.0)}


def _trainable(config: dict[str, Any], space: SweepSpace, roots: list[str]) -> None:
    from ray import tune

    from ser_ray.learn.data import load_learn_features
    from ser_ray.learn.experiment import cross_validate

    cfg = trial_config(space, dict(config))
    data = load_learn_features(roots, cfg)
    work = Path(tune.get_context().get_trial_dir()) / "cv"

    def on_fold(d: dict[str, Any]) -> None:
        tune.report({METRIC: d["ua_mean"], "fold": d["fold"], "folds": d["folds"]})

    metrics = cross_validate(data, cfg, work, on_fold=on_fold, progress=False,
                             calibrate_folds=False)  # a trial is ranked by UA alone
    Path(tune.get_context().get_trial_dir(), "metrics.json").write_text(
        json.dumps({k: v for k, v in metrics.items() if k != "folds"}, default=str))
    tune.report({METRIC: metrics["ua_mean"], "ua_std": metrics["ua_std"],
                 "wa_mean": metrics["wa_mean"], "wa_std": metrics["wa_std"],
                 "fold": metrics["n_folds"], "folds": metrics["n_folds"], "done_cv": True})


def with_feature_set(space: SweepSpace, roots: Sequence[str]) -> SweepSpace:
    """A space whose trials learn from the one feature table under ``roots`` when neither its
    base nor its space names ``features`` (several tables: an error naming them)."""
    from dataclasses import replace

    from ser_ray.learn.data import resolve_feature_set

    # A domain's options may be dicts merged into the config (model: {choice: [{...}, ...]}).
    merged = [v for dom in space.space.values() if isinstance(dom, dict)
              for arg in dom.values() if isinstance(arg, list) for v in arg if isinstance(v, dict)]
    if space.base.get("features") or "features" in space.space or any("features" in v for v in merged):
        return space
    (name,) = resolve_feature_set(roots, None)
    log(f"sweep: learning from feature table {name!r} (the only one in --features)")
    return replace(space, base={**space.base, "features": [name]})


def n_trials(space: SweepSpace) -> int:
    """Trials the sweep runs: each grid combination ``num_samples`` times (default 1), or
    ``num_samples`` samples (default 4)."""
    grid = 1
    for dom in space.space.values():
        (kind, arg), = dom.items()
        if kind == "grid" or (kind == "choice" and space.search == "grid"):
            grid *= len(arg)
    return grid * (space.num_samples or (1 if space.search == "grid" else 4))


def _trial_progress(total: int, enabled: bool):
    """A Tune callback showing finished trials on one :class:`~ser_ray.console.Progress`."""
    from ray.tune import Callback

    from ser_ray.console import Progress

    class TrialProgress(Callback):
        def __init__(self):
            self.bar = Progress("tune", total=total, unit="trials", enabled=enabled)
            self.done, self.best, self.errors = 0, None, 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("done_cv") and result.get(METRIC) is not None:
                self.best = max(self.best or 0.0, float(result[METRIC]))

        def _finished(self) -> None:
            self.done += 1
            best = "" if self.best is None else f"best {METRIC} {self.best:.3f}"
            errors = f", {self.errors} failed" if self.errors else ""
            self.bar.update(self.done, detail=best + errors)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finished()

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errors += 1
            self._finished()

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return TrialProgress()


def _optuna(space: SweepSpace):
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("search=optuna needs optuna: pip install optuna") from exc
    return OptunaSearch(metric=METRIC, mode="max", seed=space.seed)


SEARCHERS = {"random": lambda space: None, "grid": lambda space: None, "optuna": _optuna}


def run_sweep(roots: Sequence[str], space: SweepSpace, output: str | Path, *,
              resume: bool = True, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the sweep; return the results table, best trial first."""
    from dataclasses import replace

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from ser_ray.learn.data import load_learn_features
    from ser_ray.learn.experiment import train_model, write_run_files
    from ser_ray.learn.tracking import Tracker, tune_callbacks

    output = Path(output).resolve()
    roots = [str(Path(r).resolve()) for r in roots]
    space = with_feature_set(space, roots)
    output.mkdir(parents=True, exist_ok=True)
    res = space.resources
    n_conc = concurrent_trials(res, ray.cluster_resources().get("CPU", 1))
    param_space = {k: _domain(k, v, space.search) for k, v in space.space.items()}
    trainable = tune.with_resources(tune.with_parameters(_trainable, space=space, roots=roots),
                                    lambda sampled: trial_resources(space, dict(sampled)))
    scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=space.grace_period,
                              reduction_factor=space.reduction_factor) \
        if space.scheduler == "asha" else FIFOScheduler()
    path = output / "sweep"
    if resume and tune.Tuner.can_restore(str(path)):
        log(f"resuming the sweep in {path}")
        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True,
                                   param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", scheduler=scheduler,
                num_samples=space.num_samples or (1 if space.search == "grid" else 4),
                search_alg=SEARCHERS[space.search](space), max_concurrent_trials=n_conc),
            run_config=tune.RunConfig(name="sweep", storage_path=str(output), verbose=0,
                                      # a lost node's trials start again elsewhere
                                      failure_config=tune.FailureConfig(
                                          max_failures=space.max_failures),
                                      callbacks=[_trial_progress(n_trials(space), progress),
                                                 *tune_callbacks(space.tracking)]),
        )
        log(f"sweep: {space.search} search, {space.scheduler} scheduler, up to {n_conc} "
            f"trial(s) at once -> {output}")
    from ser_ray.console import library_output

    with library_output():
        grid = tuner.fit()
    table = results_table(grid)
    from ser_ray.storage import write_text_atomic

    write_text_atomic(table.to_csv(index=False), output / "results.csv")
    if not len(table) or table[METRIC].isna().all():
        raise RuntimeError(f"no trial finished; see the trial logs under {path}")
    best = table.iloc[0]
    best_cfg = trial_config(space, {k[len("config/"):]: v for k, v in best.items()
                                    if k.startswith("config/") and _present(v)})
    write_text_atomic(json.dumps({"metric": METRIC, "value": float(best[METRIC]),
                                     "trial_id": best["trial_id"],
                                     "config": config_mod.public_dict(best_cfg)}, indent=2,
                                    default=str), output / "best.json")
    if space.export_best:
        data = load_learn_features(roots, best_cfg)
        write_run_files(output, best_cfg, data, {"sweep": True})
        train_model(data, best_cfg, output / "best_model", work_dir=output / "best_model.work",
                    extra={"sweep_metric": {METRIC: float(best[METRIC])}})
    if space.tracking.mlflow:  # the sweep's own run: its table and best configuration
        tracker = Tracker(replace(space.tracking, tensorboard=False), output, "tune",
                          {"search": space.search, "scheduler": space.scheduler,
                           "trials": len(table), "best": config_mod.to_dict(best_cfg)})
        tracker.finish({f"best_{METRIC}": float(best[METRIC]),
                        "trials_complete": int(table["complete"].sum())}, output)
    return table


def _present(v: Any) -> bool:
    return not (isinstance(v, float) and math.isnan(v))


def results_table(grid) -> pd.DataFrame:
    """One row per trial: its final metrics and sampled config; best (complete, highest) first."""
    rows = []
    for r in grid:
        m = dict(r.metrics or {})
        cfg = {f"config/{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v)
               for k, v in (r.config or {}).items()}
        rows.append({"trial_id": m.get("trial_id", os.path.basename(str(r.path))),
                     METRIC: m.get(METRIC), "ua_std": m.get("ua_std"),
                     "wa_mean": m.get("wa_mean"), "folds_done": m.get("fold"),
                     "folds": m.get("folds"), "complete": bool(m.get("done_cv")),
                     "error": str(r.error)[:200] if r.error else "", **cfg})
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(["complete", METRIC, "trial_id"],
                                  ascending=[False, False, True], na_position="last")
        # configs were JSON-encoded for the table; decode them back for trial_config
        for c in [c for c in table.columns if c.startswith("config/")]:
            table[c] = table[c].map(_decode)
    return table.reset_index(drop=True)


def _decode(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v
