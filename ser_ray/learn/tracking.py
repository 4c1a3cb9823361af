"""Experiment tracking: MLflow (a local file store by default, or a tracking URI) and
TensorBoard, switched on by ``tracking:`` in a cv/train config or a sweep's space file.
MLflow runs go to ``./mlruns`` unless ``tracking_uri`` says otherwise (``mlflow ui`` there shows
them); TensorBoard event files go to ``<output>/tensorboard`` (train: ``<model>.work/``).

- ``tune`` uses Ray Tune's own integrations: ``MLflowLoggerCallback`` (one MLflow run per
  trial: its config as params, every fold's running ``ua_mean`` as a metric step, the trial
  folder as artifacts) and ``TBXLoggerCallback`` (event files in each trial's folder), plus
  one run for the sweep itself (its results table and best configuration).
- ``cv`` and ``train`` log from the driver through :class:`Tracker`: the resolved config as
  params, per-fold metrics (cv) or per-epoch losses (train) as steps, the final metrics, and
  the report or model folder as artifacts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ser_ray.config import TrackingConfig, redact

# Files of an output folder that are not part of its report.
NOT_ARTIFACTS = {"mlruns", "tensorboard", "work", "logs", "sweep", "best_model.work",
                 "backbone"}


def tracking_uri(cfg: TrackingConfig) -> str:
    """The MLflow tracking URI: ``cfg.tracking_uri``, else MLflow's own default, a file store
    in ``./mlruns`` (one store for every command run from here, so runs compare side by side).
    A file store is allowed explicitly (MLflow 3 asks for it)."""
    uri = cfg.tracking_uri or (Path.cwd() / "mlruns").as_uri()
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"}; MLflow params are strings."""
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[key] = json.dumps(v, default=str)[:6000] if not isinstance(v, str) else v[:6000]
    return out


def tune_callbacks(cfg: TrackingConfig) -> list:
    """Ray Tune's callbacks for the sweep's trials."""
    callbacks = []
    if cfg.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=tracking_uri(cfg),
                                              experiment_name=cfg.experiment,
                                              tags={"ser_ray.command": "tune-trial"},
                                              save_artifact=True))
    if cfg.tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())
    return callbacks


class Tracker:
    """One tracked run of a command writing to ``output``; does nothing when tracking is off."""

    def __init__(self, cfg: TrackingConfig, output: str | Path, command: str,
                 params: dict[str, Any], tags: dict[str, str] | None = None,
                 tensorboard_dir: str | Path | None = None):
        self.cfg, self.output, self.mlflow, self.tb = cfg, Path(output), None, None
        params = redact(params)  # no user:password@ of a URL in a tracking store
        if cfg.mlflow:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri(cfg))
            mlflow.set_experiment(cfg.experiment)
            self.mlflow = mlflow
            self.run = mlflow.start_run(run_name=f"{command} {self.output.name}",
                                        tags={"ser_ray.command": command,
                                              "ser_ray.output": str(self.output.resolve()),
                                              **(tags or {})})
            mlflow.log_params(flat_params(params))
        if cfg.tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(tensorboard_dir or self.output / "tensorboard"))
            self.tb.add_text("config", "```\n" + json.dumps(params, indent=2, default=str)
                             + "\n```")

    def step(self, metrics: dict[str, float], step: int, prefix: str = "") -> None:
        numbers = {f"{prefix}{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.mlflow is not None:
            self.mlflow.log_metrics(numbers, step=step)
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, step)

    def finish(self, metrics: dict[str, float], artifacts: str | Path | None = None) -> None:
        self.step(metrics, 0)
        if self.mlflow is not None:
            if artifacts is not None:
                root = Path(artifacts)
                for path in sorted(root.iterdir()):
                    if path.name in NOT_ARTIFACTS:
                        continue
                    if path.is_dir():
                        self.mlflow.log_artifacts(str(path), artifact_path=path.name)
                    else:
                        self.mlflow.log_artifact(str(path))
            self.mlflow.end_run()
        if self.tb is not None:
            self.tb.close()

    def fail(self) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run(status="FAILED")
        if self.tb is not None:
            self.tb.close()
