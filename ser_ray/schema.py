"""Column names and pyarrow schemas of every table that crosses a stage.

Tables are the contract between stages: a writer validates against these before writing and a
reader can rely on them. Label sets live in :mod:`ser_ray.labels` and are re-exported here.
"""

from __future__ import annotations

import pyarrow as pa

from ser_ray.labels import CANONICAL_LABELS, LABEL_SETS, LabelSet, get_label_set  # noqa: F401

# File name extensions of audio containers (the bytes are still sniffed: TESS ships AIFF as .wav).
AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".aifc",
                    ".mp3", ".m4a", ".mp4", ".aac", ".au", ".snd", ".caf", ".w64", ".rf64")

# One row per input file that decoded and passed every check.
MANIFEST_SCHEMA = pa.schema(
    [
        ("utterance_id", pa.string()),   # stable id: "<corpus>/<path relative to its input root, no ext>"
        ("source_id", pa.string()),      # the recording blocks and augmented copies descend from
        ("uri", pa.string()),            # where the bytes came from (path, s3://..., shard.tar#member)
        ("corpus", pa.string()),
        ("speaker", pa.string()),        # corpus-qualified, e.g. "ravdess:12"
        ("sex", pa.string()),            # "female" | "male" | None
        ("label", pa.string()),          # label in the chosen label set
        ("raw_label", pa.string()),      # label as the corpus writes it
        ("duration_s", pa.float64()),    # of the decoded file before windowing
        ("sample_rate", pa.int32()),     # native rate of the file
        ("channels", pa.int32()),        # native channel count
        ("format", pa.string()),         # sniffed container: wav, flac, ogg, aiff, mp3
        ("codec", pa.string()),          # mulaw, alaw, pcm16, mp3, opus, vorbis, flac, ...
        ("sha256", pa.string()),         # of the file's bytes: exact duplicates share it
        ("extra", pa.string()),          # JSON object of corpus-specific fields
    ]
)

# One row per input file that could not be used, with the reason.
QUARANTINE_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("utterance_id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

# Quarantine reasons, stable strings that summaries count by.
REASONS = (
    "empty",              # zero bytes
    "unreadable",         # I/O error, permission denied, missing object
    "not_audio",          # bytes are not a known audio container
    "unsupported_codec",  # audio no decoder here reads (m4a/AAC, G.729 WAV, Ogg Speex)
    "decode_error",       # truncated or corrupt audio
    "bad_samples",        # NaN or inf samples
    "too_short",
    "too_long",
    "unrecognised_name",  # path does not follow the corpus's naming scheme
    "label_outside_set",  # label dropped by the chosen label set
    "too_large",          # file bigger than the byte cap: not read
    "feature_error",      # an extractor failed on this file
    "internal_error",     # a bug: the detail carries the exception; please report it
    "not_a_file",         # a FIFO, device, socket or folder (a link to a folder not followed)
    "outside_root",       # a link or tar member name that leads outside the input
    "link",               # a symlink or hardlink tar member: no bytes of its own
    "duplicate",          # the same file listed twice (a manifest row repeated)
    "worker_died",        # reading or scoring it killed its worker, on every try
)

# Statuses of a scored call row (the ``calls`` table): ``scored``, ``no_speech``, or why it was
# not scored: one of REASONS, or ``duplicate_call_id`` (another file bears its call id).
SCORED, NO_SPEECH, DUPLICATE_CALL_ID = "scored", "no_speech", "duplicate_call_id"
CALL_STATUSES = (SCORED, NO_SPEECH, DUPLICATE_CALL_ID, *REASONS)
# Statuses worth another try on a later night (the file may still have been uploading).
RETRY_STATUSES = ("unreadable", "internal_error")


def error_detail(exc: BaseException) -> str:
    """How a row names the exception that stopped it: ``Type: message``."""
    return f"{type(exc).__name__}: {exc}"


def internal_error(row: dict, exc: BaseException) -> None:
    """Mark ``row`` (a call or quarantine row) as stopped by a bug: status ``internal_error``."""
    row["status"], row["reason"] = "internal_error", error_detail(exc)


# Files found under an input that are not inputs: counted and listed in `skipped`, never lost.
SKIP_REASONS = ("hidden", "corpus_metadata", "sidecar")

SKIPPED_SCHEMA = pa.schema([("uri", pa.string()), ("reason", pa.string())])

# One row per (utterance, block) per extractor; arrays stored flat with their shape.
FEATURE_SCHEMA = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("source_id", pa.string()),
        ("block_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("corpus", pa.string()),
        ("speaker", pa.string()),
        ("sex", pa.string()),
        ("label", pa.string()),
        ("values", pa.list_(pa.float32())),
        ("shape", pa.list_(pa.int32())),
    ]
)
