"""The scoring plane: a nightly backlog of call recordings -> Parquet tables and reports ranked
by urgency. A module per stage, in the order the night runs: ``run`` (the driver), ``backlog``
(listing, units), ``read`` (decode, channel, resample, VAD, windows), ``model`` and ``scorer``
(features, model; the actor), ``reference`` (statistics), ``engines`` and ``faults`` (who runs
the units), ``publish``, ``commit`` (the night's lock and commit), ``transcripts``, ``tables``
(schemas and readers), ``report`` and ``html``. The public names are re-exported here."""

from ser_ray.score.backlog import (Call, Unit, iter_calls, iter_units, largest_first, load_metadata,
                                   resolve_run_date)
from ser_ray.score.engines import staged_pools
from ser_ray.features.windows import WindowFeatures, model_window
from ser_ray.score.model import ModelInfo
from ser_ray.score.read import CallReader, detect_speech, pick_channel
from ser_ray.score.reference import reference_table
from ser_ray.score.run import check_config, run_score
from ser_ray.score.scorer import UnitScorer
from ser_ray.score.settings import WorkerSettings, worker_settings
from ser_ray.score.tables import read_calls, read_segments, read_transcripts

__all__ = ["Call", "CallReader", "ModelInfo", "Unit", "UnitScorer", "WindowFeatures", "WorkerSettings",
           "check_config", "detect_speech", "iter_calls", "iter_units", "largest_first",
           "load_metadata", "model_window", "pick_channel", "read_calls", "read_segments",
           "read_transcripts", "reference_table", "resolve_run_date", "run_score", "staged_pools",
           "worker_settings"]
