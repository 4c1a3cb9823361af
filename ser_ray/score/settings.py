"""What every scoring worker is told: :func:`worker_settings` resolves a :class:`ScoreConfig` and
the model into one frozen :class:`WorkerSettings`, which travels to the actors, the read tasks and
the transcripts tasks."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ser_ray import vad
from ser_ray.config import AudioConfig, S3Config, ScoreConfig, ScoreNormalisation, from_dict
from ser_ray.features.windows import model_window
from ser_ray.score.model import ModelInfo
from ser_ray.score.reference import reference_settings
from ser_ray.urgency import UrgencyConfig


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Everything a scoring worker needs, resolved once on the driver (times in seconds)."""

    model_id: str
    model_hash: str
    run_id: str
    staging: str                 # where units stage their rows (``_staging/<run_id>``)
    window_s: float              # analysis window, hop and the shortest window kept
    hop_s: float
    min_window_s: float
    max_call_s: float
    max_bytes: int               # a file larger than this is not read (``too_large``)
    max_decoded_bytes: int       # nor one that would decode to more than this
    customer_channel: str        # left, right, mono, diarize or auto
    vad: dict[str, Any]          # the resolved detector's config (``vad.detector_config``)
    vad_sample_rate: int
    batch_size: int
    labels: tuple[str, ...]
    sample_rate: int             # the rate the model reads
    gpus_per_worker: float
    trust_model: bool
    urgency: UrgencyConfig
    normalisation: ScoreNormalisation
    reference: dict[str, Any]    # see score.reference.Reference
    s3: S3Config
    staged: bool = False         # engine ``staged``: VAD runs in the read pool, not the actor
    encoder_precision: str | None = None  # the encoder features' precision when not as trained
    stereo_channel: str = "right"  # auto: the customer's channel of a stereo call
    diarize: dict[str, Any] | None = None  # speakers.DiarizeSettings options, when diarising

    @property
    def diarising(self) -> bool:
        """Whether mono calls are split into voices (``customer_channel`` diarize or auto)."""
        return self.customer_channel in ("diarize", "auto")

    def material(self) -> str:
        """The settings that change what a unit's rows hold (not where they go), as JSON: part
        of every unit id, so a change starts units afresh."""
        d = dataclasses.asdict(self)
        keep = MATERIAL + (("encoder_precision",) if self.encoder_precision else ()) + (
            ("stereo_channel", "diarize") if self.diarising else ())
        return json.dumps({k: d[k] for k in keep}, sort_keys=True)

    def feature_config(self, fc: dict[str, Any]) -> dict[str, Any]:
        """The model's feature config as this run computes it: its encoder features at
        ``encoder_precision`` when that is set."""
        if not self.encoder_precision:
            return fc
        ext = {n: ({**s, "precision": self.encoder_precision} if s.get("name") == "encoder" else s)
               for n, s in fc["extractors"].items()}
        return {**fc, "extractors": ext}

    def key(self) -> dict[str, Any]:
        """All of it as plain data (a per-process cache's key)."""
        return dataclasses.asdict(self)


# Fields of WorkerSettings that change what a unit's rows hold.
MATERIAL = ("model_hash", "window_s", "hop_s", "min_window_s", "max_call_s", "max_bytes",
            "max_decoded_bytes", "customer_channel", "vad", "vad_sample_rate", "urgency",
            "normalisation")


def encoder_precision(cfg: ScoreConfig, model: ModelInfo) -> dict[str, Any] | None:
    """What the run record says of the model's encoder features (None without one):
    ``trained`` (the precision prepare made them in; fp32 for folders older than the setting),
    ``scoring`` (``encoder_precision``, or as trained, resolved for this cluster's workers) and
    ``mixed``. Features of the two families (int8, float) differ by more than the tolerance a
    head was checked at, so a mixed run is refused unless ``allow_mixed_precision``."""
    from ser_ray.encoders import precision_family
    from ser_ray.features.encoder import resolve_encoder_precision
    from ser_ray.runtime import init_ray, uses_gpus

    fc = model.feature_config
    ext = fc.get("extractors") or {}
    encs = [ext[n] for n in fc.get("features") or () if (ext.get(n) or {}).get("name") == "encoder"]
    if not encs:
        if cfg.encoder_precision:
            raise ValueError(f"encoder_precision={cfg.encoder_precision}: model {model.path} "
                             "has no encoder feature")
        return None
    init_ray()
    gpu = uses_gpus(cfg.gpus_per_worker)
    trained = encs[0].get("precision", "fp32")
    scoring = resolve_encoder_precision(encs[0], gpu, cfg.encoder_precision)
    mixed = precision_family(trained) != precision_family(scoring)
    if mixed and not cfg.allow_mixed_precision:
        raise ValueError(
            f"model {model.path} was trained on {trained} encoder features; this run would "
            f"compute them in {scoring}{' (a GPU)' if gpu and scoring != 'int8' else ''}. "
            "Scores would move by more than the checked tolerance: score with "
            f"--set encoder_precision={trained}, or pass --set allow_mixed_precision=true")
    return {"trained": trained, "scoring": scoring, "mixed": mixed}


def worker_settings(cfg: ScoreConfig, model: ModelInfo, run_id: str, staging: str,
                    precision: dict[str, Any] | None = None) -> WorkerSettings:
    """The settings of this run's workers: the window from the model unless the config sets one,
    the VAD detector resolved (``auto`` -> what is installed), byte caps in bytes, the encoder
    precision (:func:`encoder_precision`) when it is not as trained."""
    window, _ = model_window(model.feature_config)
    window_s = cfg.window_s or window
    opts = dict(cfg.vad)
    detector = vad.get_detector(opts.pop("name", "auto"), **opts)
    audio = from_dict(AudioConfig, dict(model.feature_config.get("audio") or {}))
    return WorkerSettings(
        model_id=model.model_id, model_hash=model.model_hash, run_id=run_id, staging=staging,
        window_s=window_s, hop_s=cfg.hop_s or window_s,
        min_window_s=min(cfg.min_window_s, window_s), max_call_s=cfg.max_call_s,
        max_bytes=int(cfg.max_file_mb * 2 ** 20),
        max_decoded_bytes=int(cfg.max_decoded_mb * 2 ** 20),
        customer_channel=cfg.customer_channel, vad=vad.detector_config(detector),
        vad_sample_rate=cfg.vad_sample_rate, batch_size=cfg.batch_size,
        labels=tuple(model.labels), sample_rate=int(audio.sample_rate),
        gpus_per_worker=cfg.gpus_per_worker, trust_model=cfg.trust_model, urgency=cfg.urgency,
        normalisation=cfg.normalisation, reference=reference_settings(cfg, model), s3=cfg.s3,
        encoder_precision=precision["scoring"] if precision and (
            cfg.encoder_precision or precision["scoring"] != precision["trained"]) else None,
        stereo_channel=cfg.stereo_channel, diarize=diarize_settings(cfg))


def diarize_settings(cfg: ScoreConfig) -> dict[str, Any] | None:
    """``cfg.diarize`` checked and with its defaults (None when not diarising)."""
    if cfg.customer_channel not in ("diarize", "auto"):
        return None
    from ser_ray.speakers import DiarizeSettings

    try:
        return dataclasses.asdict(DiarizeSettings(**cfg.diarize))
    except TypeError as exc:
        raise ValueError(f"diarize: {exc}; options: "
                         f"{[f.name for f in dataclasses.fields(DiarizeSettings)]}") from None


def settings_from_record(run: dict[str, Any], s3: S3Config) -> WorkerSettings:
    """The read side of a committed run as its record says (window, VAD, channel, limits): what
    reads a night's calls again later (``ser-ray sample``), without its model folder."""
    known = {f.name for f in dataclasses.fields(ScoreConfig)} - {"s3"}
    cfg = from_dict(ScoreConfig, {k: v for k, v in (run.get("config") or {}).items() if k in known})
    window_s = float(run["window_s"])
    return WorkerSettings(
        model_id=run["model_id"], model_hash=run["model_hash"], run_id=run["run_id"], staging="",
        window_s=window_s, hop_s=cfg.hop_s or window_s, min_window_s=min(cfg.min_window_s, window_s),
        max_call_s=cfg.max_call_s, max_bytes=int(cfg.max_file_mb * 2 ** 20),
        max_decoded_bytes=int(cfg.max_decoded_mb * 2 ** 20),
        customer_channel=cfg.customer_channel, vad=dict(run["vad"]),
        vad_sample_rate=cfg.vad_sample_rate, batch_size=cfg.batch_size,
        labels=tuple(run["labels"]), sample_rate=16000, gpus_per_worker=0.0,
        trust_model=False, urgency=cfg.urgency, normalisation=cfg.normalisation,
        reference={"mode": "model"}, s3=s3, stereo_channel=cfg.stereo_channel)
