"""Run configuration: frozen dataclasses loaded from plain YAML and overridable from the CLI.

Config is data: a run writes the resolved config next to its outputs, and loading that file
again reproduces the run.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ser_ray.ranges import Checked
from ser_ray.urgency import UrgencyConfig


# Allowed values of config fields that more than one plane reads.
NORMALISE_GROUPS = {"none": None, "global": None, "speaker": "speaker", "corpus": "corpus"}
TRAINERS = ("auto", "local", "ray_train")
CHANNELS = ("left", "right", "mono", "diarize", "auto")  # ScoreConfig.customer_channel
REFERENCES = ("run", "training", "call")      # ScoreNormalisation.reference


def check_normalise(mode: str) -> None:
    """``normalise``: how feature rows are standardised (the group each is standardised by)."""
    if mode not in NORMALISE_GROUPS:
        raise ValueError(f"normalise={mode!r} is not one of {list(NORMALISE_GROUPS)}")


def pick_trainer(trainer: str, num_workers: int, use_gpu: bool, callbacks: Sequence[Any] = ()
                 ) -> str:
    """``auto`` -> ``local`` for one CPU worker without Ray Train callbacks, else ``ray_train``."""
    if trainer not in TRAINERS:
        raise ValueError(f"trainer={trainer!r} is not one of {list(TRAINERS)}")
    distributed = num_workers != 1 or use_gpu
    if trainer == "local" and (distributed or callbacks):
        raise ValueError(f"trainer=local runs one CPU worker without Ray Train callbacks; "
                         f"num_workers={num_workers}, use_gpu={use_gpu}"
                         f"{', callbacks' if callbacks else ''} need trainer=ray_train (or auto)")
    if trainer == "auto":
        return "ray_train" if distributed or callbacks else "local"
    return trainer


@dataclass(frozen=True)
class AudioConfig(Checked):
    """Decode and condition: every file ends up mono float32 at ``sample_rate``."""

    sample_rate: int = 16000
    trim: bool = False              # strip leading/trailing silence (librosa.effects.trim)
    trim_top_db: float = 30.0
    pre_emphasis: float = 0.0       # coefficient; 0 disables
    normalise: str = "none"         # none | peak | rms: per-utterance level (corpora differ by ~20 dB)
    rms_dbfs: float = -20.0         # target level for normalise=rms
    offset_s: float = 0.0           # window start (the literature's 0.5 s)
    duration_s: float | None = None  # window length (the literature's 2.5 s); None keeps the rest
    pad: bool = True                # pad short windows with zeros up to duration_s
    block_s: float | None = None    # split into blocks of this length (1 s in METHODS.md)
    block_hop_s: float | None = None  # block hop; None = block_s (no overlap)
    min_duration_s: float = 0.1     # shorter decoded files are quarantined as too_short
    max_duration_s: float = 3600.0  # longer decoded files are quarantined as too_long
    max_file_mb: float = 2048.0     # bigger files are quarantined as too_large without reading
    max_decoded_mb: float = 2048.0  # files whose header declares more decoded audio (frames x
                                    # channels x 4 bytes) are quarantined as too_large, undecoded


@dataclass(frozen=True)
class S3Config(Checked):
    """S3 access. Credentials come from the standard AWS chain (env, profile, instance role)."""

    endpoint_url: str | None = None  # S3-compatible store; falls back to $AWS_ENDPOINT_URL
    region: str | None = None


@dataclass(frozen=True)
class PrepareConfig(Checked):
    """The ``prepare`` job: inputs -> manifest, feature tables, quarantine, summary."""

    inputs: tuple[str, ...] = ()
    output: str = ""
    corpus: str = "auto"            # a registered corpus, "manifest", "sidecar" or "auto"
    label_set: str = "all"
    features: tuple[str, ...] = ("mfcc",)
    feature_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> overrides
    audio: AudioConfig = field(default_factory=AudioConfig)
    s3: S3Config = field(default_factory=S3Config)
    files_per_task: int = 32        # files per work unit: the unit of parallelism and of resume
    num_workers: int | None = None  # None = one per CPU of the cluster
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0    # per encoder actor (engine data), when the cluster has GPUs
    engine: str = "auto"            # auto (data for encoders on GPUs, tasks otherwise) | tasks | data
    strict: bool = False            # exit non-zero when any file is quarantined
    seed: int = 0


@dataclass(frozen=True)
class AugmentConfig(Checked):
    """Training-side augmentation (METHODS.md): variant none | augmented | merged."""

    variant: str = "none"
    steps: tuple[dict[str, Any], ...] = ()  # chain of {name: step, ...params}; () = METHODS chain
    copies: int = 1


# The codecs a simulated telephone line can use (ser_ray.channel): the two G.711 laws, linear
# PCM (band and rate limits only) and the compressed formats calls are stored in.
LINE_CODECS = ("mulaw", "alaw", "pcm16", "mp3", "opus")


@dataclass(frozen=True)
class ChannelProtocolConfig(Checked):
    """``cv``'s channel protocol: the test speakers also through a telephone line per codec."""

    codecs: tuple[str, ...] = ()    # () off; else any of mulaw, alaw, pcm16, mp3, opus
    kbps: float = 16.0              # bitrate of the mp3 / opus test lines
    compare: bool = True            # also train the other mode per fold: clean <-> telephone
    copies: int = 1                 # telephone copies per training recording in that mode


@dataclass(frozen=True)
class TrackingConfig(Checked):
    """Experiment tracking of ``cv``, ``train`` and ``tune`` (off unless switched on)."""

    mlflow: bool = False             # log params, per-fold and final metrics, the report folder
    tracking_uri: str | None = None  # None: a local file store, <output>/mlruns
    experiment: str = "ser-ray"      # MLflow experiment name
    tensorboard: bool = False        # event files in <output>/tensorboard (tune: per trial)

    @property
    def enabled(self) -> bool:
        return self.mlflow or self.tensorboard


@dataclass(frozen=True)
class LearnConfig(Checked):
    """One training configuration: data, model, training-side treatment, protocol, resources."""

    features: tuple[str, ...] = ()           # () = the one table the prepared folder holds;
                                            # or one feature, or several 1-D vectors concatenated
    label_set: str | None = None            # re-map labels at learning time (e.g. iemocap4)
    frames: int | None = None               # time frames of ragged 2-D features; None = median
    layers: str | int = "auto"              # hidden states of an encoder feature: auto | all | K | A-B
    model: str = "cnn1d"
    model_options: dict[str, Any] = field(default_factory=dict)  # architecture + lr, epochs...
    normalise: str = "global"               # none | global | speaker | corpus
    balance: str = "none"                   # none | smote | ros | class_weights
    balance_corpora: bool = False           # oversample smaller corpora to the largest's rows
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    protocol: str = "speaker-kfold"         # random-kfold | speaker-kfold | loso | explicit |
                                            # cross-corpus | leave-one-corpus-out
    folds: int = 5
    test_speakers: tuple[str, ...] = ()     # protocol=explicit
    train_corpora: tuple[str, ...] = ()     # protocol=cross-corpus
    test_corpus: str | None = None
    validation_fraction: float = 0.2        # speakers held out of training for early stopping
    noisy_snr_db: tuple[float, ...] = ()    # also score the test side mixed with noise at these
    noise_dir: str | None = None            # recordings for noisy test sets / background noise
    channel_protocol: ChannelProtocolConfig = field(default_factory=ChannelProtocolConfig)
    calibration: str = "auto"               # auto (temperature for classical models, none for
                                            # torch: k extra fits per fold) | temperature | none
    calibration_folds: int = 3              # inner speaker folds of the training side it fits on
    select: dict[str, Any] = field(default_factory=dict)  # chosen per fold by inner speaker cv,
    select_folds: int = 3                   # e.g. {layers: every, model_options.C: [0.1, 1]}
    uncertain_coverage: float = 0.9         # "not sure" below the calibrated top probability
                                            # that answers this share of the training side
    num_workers: int = 1                    # Ray Train workers per fit (DDP)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    trainer: str = "auto"                   # auto (local for 1 CPU worker) | local | ray_train
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        check_normalise(self.normalise)
        pick_trainer(self.trainer, self.num_workers, self.use_gpu)
        if self.augment.variant not in ("none", "augmented", "merged"):
            raise ValueError(f"augment.variant={self.augment.variant!r} is not one of "
                             "['none', 'augmented', 'merged']")
        if self.calibration not in ("auto", "temperature", "none"):
            raise ValueError(f"calibration={self.calibration!r} is not one of "
                             "['auto', 'temperature', 'none']")
        if not 0 < self.uncertain_coverage <= 1:
            raise ValueError(f"uncertain_coverage={self.uncertain_coverage} must be in (0, 1]")
        if self.select_folds < 2 or any((not isinstance(v, list) or not v) and (k, v) != (
                "layers", "every") for k, v in self.select.items()):
            raise ValueError("select: each key needs a list of candidates (layers: or every); "
                             "select_folds >= 2")
        if self.calibration_folds < 2:
            raise ValueError(f"calibration_folds={self.calibration_folds} must be >= 2")
        if self.augment.copies < 1 or self.channel_protocol.copies < 1:
            raise ValueError("augment.copies and channel_protocol.copies must be >= 1")
        bad = [c for c in self.channel_protocol.codecs if c not in LINE_CODECS]
        if bad:
            raise ValueError(f"channel_protocol.codecs: {bad} are not among {list(LINE_CODECS)}")


@dataclass(frozen=True)
class TranscribeConfig(Checked):
    """``score``'s optional transcripts (off unless ``model`` is set); see ser_ray.transcribe."""
    model: str | None = None         # Whisper folder or hub id (WhisperForConditionalGeneration)
    segments: str = "top"            # top: the most negative moments of the top calls | all: all speech
    top_calls: int = 10              # calls whose moments are transcribed (segments: top)
    moments_per_call: int = 2        # most negative segments per call, each with context
    context_s: float = 2.0           # seconds of audio added before and after a moment
    max_span_s: float = 30.0         # a merged span is cut at this length
    language: str | None = None      # None: detect per span; else e.g. "de"
    max_new_tokens: int = 120
    batch_size: int = 8
    device: str = "auto"             # auto | cpu | cuda
    dtype: str = "auto"              # auto (fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16
    calls_per_task: int = 4
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    redact: bool = True              # personal data -> [CARD], [PHONE], ... before anything is written
    redact_max_digits: int = 4       # a longer digit run left over is a [NUMBER]
    phone_regions: tuple[str, ...] = ("US", "GB", "DE")  # where local phone numbers are parsed


@dataclass(frozen=True)
class ReportConfig(Checked):
    """The night's report page: audio clips of the top calls' worst moments."""

    clips: bool = True               # false: no audio in reports (where policy forbids it)
    clip_context_s: float = 3.0      # seconds of audio either side of the peak window
    clip_kbps: float = 24.0          # Ogg/Opus bitrate of a clip (16 kHz)

    def __post_init__(self):
        super().__post_init__()
        if self.clip_context_s < 0 or self.clip_kbps <= 0:
            raise ValueError("report.clip_context_s must be >= 0 and report.clip_kbps > 0")


@dataclass(frozen=True)
class DriftConfig(Checked):
    """When a night's audio counts as unlike the training audio (run record ``drift``): the
    report page then shows a banner, ``score`` logs a warning and, with ``fail_on_drift``
    (``--fail-on-drift``), exits 4 after publishing. A limit of null is never an alarm."""

    max_ood_share: float | None = 0.25    # share of windows beyond the model's OOD threshold
    max_psi: float | None = 0.25          # median population stability index over features,
                                          # beyond what two samples of one population give by chance
    max_label_shift: float | None = None  # total variation distance of predicted labels vs the
                                          # training classes (off: calls are mostly neutral)
    min_windows: int = 50                 # fewer windows: figures reported, no alarm
    fail_on_drift: bool = False


@dataclass(frozen=True)
class CostConfig(Checked):
    """Prices for the night's cost line (run record ``cost``, the report)."""

    cpu_hour: float = 0.05          # per CPU core-hour reserved
    gpu_hour: float = 2.50          # per GPU-hour reserved
    currency: str = "USD"

    def __post_init__(self):
        super().__post_init__()
        if self.cpu_hour < 0 or self.gpu_hour < 0:
            raise ValueError(f"cost.cpu_hour={self.cpu_hour} and cost.gpu_hour={self.gpu_hour} "
                             f"must be >= 0")


@dataclass(frozen=True)
class ScoreNormalisation(Checked):
    """How ``score`` standardises windows for a model trained with ``speaker`` or ``corpus``
    normalisation (a ``global`` model uses its training statistics and ignores this).

    Training standardised each speaker (corpus) by the statistics of many of its utterances.
    A scoring run stands a population of calls in for that group; one call alone would be
    standardised against itself, which erases the differences between calls that the urgency
    rank is for (README, "How scoring normalises").
    """

    reference: str = "run"          # run: the run's calls | training: the training population |
                                    # call: each call by itself (removes between-call differences)
    group_by: str | None = None     # metadata column (queue, line, site): one population per value
    min_calls: int = 20             # a population of fewer calls falls back: group -> run -> training


@dataclass(frozen=True)
class ScoreConfig(Checked):
    """The nightly ``score`` job: a backlog of call recordings -> segments/, calls/, runs/, reports/."""

    model: str = ""                  # model folder written by `ser-ray train` or `ser-ray tune`
    inputs: tuple[str, ...] = ()     # folders or s3:// prefixes, searched recursively (or files)
    output: str = ""                 # local folder or s3://bucket/prefix
    run_date: str | None = None      # YYYY-MM-DD partition of this run; None = today (local time)
    metadata: str | None = None      # CSV/Parquet with a call_id column, joined into calls/
    customer_channel: str = "mono"   # left | right (stereo) | mono (downmix) | diarize | auto
    stereo_channel: str = "right"    # auto: the customer's channel of stereo calls
    agents: str | None = None        # diarize: a folder of enrolled agent voices (file or folder each)
    diarize: dict[str, Any] = field(default_factory=dict)  # ser_ray.speakers.DiarizeSettings options
    call_id: str = "stem"            # stem: file name without extension | path: path below the input
    vad: dict[str, Any] = field(default_factory=lambda: {"name": "auto"})  # detector + options
    vad_sample_rate: int = 8000      # silero's rate (8000 | 16000): 8 kHz is telephone band, ~1.4x faster
    window_s: float | None = None    # analysis window; None = the model's training window
    hop_s: float | None = None       # window hop; None = window_s (no overlap)
    min_window_s: float = 0.5        # speech stretches shorter than this are not scored
    max_call_s: float = 14400.0      # longer calls get status too_long (4 h)
    max_file_mb: float = 4096.0      # bigger files get status too_large without being read
    max_decoded_mb: float = 4096.0   # calls whose header declares more decoded audio (frames x
                                     # channels x 4 bytes) get status too_large, undecoded
    calls_per_task: int = 4          # calls per work unit: the unit of parallelism and of resume
    mb_per_task: float = 64.0        # ... and at most this many MB of files per unit
    num_workers: int | None = None   # scoring actors; None = one per CPU (or GPU) of the cluster
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 256            # analysis windows per forward pass
    units_per_wave: int = 1024       # units per wave of actors (the listing streams in waves)
    # auto: staged with GPUs, actors otherwise | actors: one pool of actors that each read and score
    # | staged: a CPU pool reads, decodes, runs VAD and cuts windows, model actors score them
    # | ray_data: the actors' work through map_batches (see README, "Engines")
    engine: str = "auto"
    read_cpus: float = 1.0           # staged: CPUs per read task
    read_ahead: int = 2              # staged: units read and waiting, per model actor (backpressure)
    urgency: UrgencyConfig = field(default_factory=UrgencyConfig)
    normalisation: ScoreNormalisation = field(default_factory=ScoreNormalisation)
    rescore: bool = False            # also score calls an earlier night scored with this model
    trust_model: bool = False        # also load a model that needs pickle (see ser_ray.models.artifact)
    encoder_precision: str | None = None  # None: as the model's features were made | fp32 | int8 | auto
    allow_mixed_precision: bool = False  # score int8 features with a float-trained model (or back)
    replace_night: bool = False      # republish a night even if its committed rows hold calls
                                     # this run does not list (other inputs)
    lock_ttl_h: float = 24.0         # a night's lock older than this is stale (its run died)
    report_top: int = 20             # calls listed in the human report
    transcribe: TranscribeConfig = field(default_factory=TranscribeConfig)  # off unless model set
    cost: CostConfig = field(default_factory=CostConfig)  # prices of the night's cost line
    report: ReportConfig = field(default_factory=ReportConfig)  # clips on the report page
    drift: DriftConfig = field(default_factory=DriftConfig)  # when the night's audio is unlike training
    s3: S3Config = field(default_factory=S3Config)


SAMPLE_MIX = {"urgent": 0.3, "uncertain": 0.3, "random": 0.4}


@dataclass(frozen=True)
class SampleConfig(Checked):
    """``ser-ray sample``: segments of scored nights for a person to label (score/sample.py)."""

    scored: str = ""                 # a `score` output folder or s3:// prefix
    run_dates: tuple[str, ...] = ()  # nights to sample; () = every committed night
    n: int = 100                     # segments to choose
    output: str = ""                 # the labelling folder (local)
    seed: int = 0
    # shares of the choice: the most urgent calls' worst moments, the least sure segments,
    # a random sample stratified by predicted label
    mix: dict[str, float] = field(default_factory=lambda: dict(SAMPLE_MIX), hash=False)
    per_call: int = 3                # at most this many segments of one call
    per_night: int | None = None     # ... and of one night (None: no cap)
    context_s: float = 1.0           # seconds of audio either side of a segment in its clip
    labels: tuple[str, ...] = ()     # the team's label set (buttons); () = the model's + unclear
    label_map: dict[str, str] = field(default_factory=dict, hash=False)  # team -> model label
    s3: S3Config = field(default_factory=S3Config)

    def __post_init__(self):
        super().__post_init__()
        # a share given alone (--set mix.uncertain=0.5) keeps the others' defaults
        object.__setattr__(self, "mix", {**SAMPLE_MIX, **dict(self.mix)})
        unknown = set(self.mix) - {"urgent", "uncertain", "random"}
        if unknown or not self.mix or any(v < 0 for v in self.mix.values()) \
                or sum(self.mix.values()) <= 0:
            raise ValueError(f"sample: mix={dict(self.mix)} takes urgent, uncertain and random "
                             "with shares >= 0 (not all 0)")
        bad = {k: v for k, v in self.label_map.items() if self.labels and k not in self.labels}
        if bad:
            raise ValueError(f"sample: label_map names labels {sorted(bad)} that are not in "
                             f"labels={list(self.labels)}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn a YAML value into the declared field type (tuples, nested dataclasses, optionals)."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        return from_dict(tp, value or {}, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for arg in args[:-1]:  # the first type the value fits (str | int: "2-4" or 3)
            try:
                return _coerce(arg, value, where)
            except ValueError:
                pass
        return _coerce(args[-1], value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(item, v, where) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp)
                                          or (tp is not bool and isinstance(value, bool))):
        raise ValueError(f"config {where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ValueError(f"config {where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - names):
        raise ValueError(f"config {where or cls.__name__}: unknown key(s) {unknown}; valid: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


# ``scheme://user:password@host``: the user-info part of a URL, up to the host.
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(value: Any) -> Any:
    """``value`` with user names and passwords taken out of every URL in it (nested dicts and
    lists too): what a config, summary, run record or tracking parameter may show."""
    if isinstance(value, str):
        return _USERINFO.sub("", value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def public_dict(cfg: Any) -> dict[str, Any]:
    """:func:`to_dict` for writing down: URLs lose any ``user:password@``."""
    return redact(to_dict(cfg))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected KEY=VALUE, e.g. audio.trim=true")
        key, raw = item.split("=", 1)
        set_path(data, key.strip(), yaml.safe_load(raw))
    return data


def set_path(data: dict[str, Any], dotted: str, value: Any, merge: bool = False) -> None:
    """``a.b.c`` of nested ``data`` set to ``value``; ``merge``: a dict updates a dict there."""
    *path, last = dotted.split(".")
    for part in path:
        data = data.setdefault(part, {})
    if merge and isinstance(old := data.get(last), dict) and isinstance(value, dict):
        value = {**old, **value}
    data[last] = value


def load(cls: type, path: str | Path | None = None, overrides: list[str] | None = None,
         **values: Any) -> Any:
    """Resolve a config: YAML file, then explicit ``values`` (non-None), then ``overrides``."""
    return from_dict(cls, merged(path, overrides, **values))


def merged(path: str | Path | None = None, overrides: list[str] | None = None,
           **values: Any) -> dict[str, Any]:
    """The plain data :func:`load` builds its config from (what was given, no defaults)."""
    data: dict[str, Any] = {}
    if path:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path}: expected a YAML mapping at the top level")
    for k, v in values.items():
        if v is not None:
            data[k] = list(v) if isinstance(v, tuple) else v
    return apply_overrides(data, overrides or [])


def dump(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, whole (temp name, fsync, rename), with passwords
    taken out of any URL in it (:func:`public_dict`)."""
    from ser_ray.atomic import write_text_atomic

    write_text_atomic(yaml.safe_dump(public_dict(cfg), sort_keys=False), path)
