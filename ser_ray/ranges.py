"""Range checks of every config field, by field name, in one place: each config dataclass (a
subclass of :class:`Checked`) and each feature extractor runs them when it is built, so a bad
value (``sample_rate=0``, ``files_per_task=0``, ``n_mfcc=0``) fails before Ray starts. No
ser_ray imports: the config and the feature registry both use it."""

from __future__ import annotations

import dataclasses
from typing import Any

POSITIVE = frozenset({
    "sample_rate", "trim_top_db", "duration_s", "block_s", "block_hop_s", "max_duration_s",
    "max_file_mb", "max_decoded_mb", "files_per_task", "num_workers", "cpus_per_worker", "copies",
    "frames", "top_calls", "moments_per_call", "max_span_s", "max_new_tokens", "batch_size",
    "calls_per_task", "window_s", "hop_s", "max_call_s", "mb_per_task", "units_per_wave",
    "read_cpus", "read_ahead", "report_top", "lock_ttl_h", "min_calls", "vad_sample_rate",
    "n_mfcc", "n_mels", "n_fft", "hop_length", "win_length", "n_chroma", "n_bands", "n_octaves",
    "cpus_per_trial", "workers_per_trial", "max_concurrent", "num_samples", "grace_period",
    "reduction_factor", "n", "per_call", "per_night",
})
NON_NEGATIVE = frozenset({"gpus_per_worker", "offset_s", "min_duration_s", "context_s",
                          "min_window_s", "pre_emphasis", "deltas", "fmin", "max_failures",
                          "max_psi", "min_windows"})
FRACTION = frozenset({"max_ood_share", "max_label_shift"})  # in [0, 1]
AT_LEAST = {"folds": 2}
BELOW_ONE = frozenset({"pre_emphasis", "validation_fraction"})


def check_ranges(cfg: Any) -> None:
    """Raise ValueError naming the first numeric field of ``cfg`` outside its range."""
    owner = type(cfg).__name__
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        name = f.name
        if name in POSITIVE and not v > 0:
            raise ValueError(f"{name}={v!r} ({owner}) must be > 0")
        if name in NON_NEGATIVE and not v >= 0:
            raise ValueError(f"{name}={v!r} ({owner}) must be >= 0")
        if name in AT_LEAST and not v >= AT_LEAST[name]:
            raise ValueError(f"{name}={v!r} ({owner}) must be >= {AT_LEAST[name]}")
        if name in BELOW_ONE and not 0 <= v < 1:
            raise ValueError(f"{name}={v!r} ({owner}) must be in [0, 1)")
        if name in FRACTION and not 0 <= v <= 1:
            raise ValueError(f"{name}={v!r} ({owner}) must be in [0, 1]")


class Checked:
    """Base of config dataclasses: :func:`check_ranges` when built."""

    def __post_init__(self):
        check_ranges(self)
