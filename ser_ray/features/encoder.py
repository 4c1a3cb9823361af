"""Pretrained speech encoders (Whisper, HuBERT, wav2vec 2.0, WavLM, data2vec) as frozen
extractors, and the 16 kHz waveform a fine-tuned encoder trains on.

``encoder`` stores every hidden state, pooled, so the layer (or layers) a head uses is chosen at
learn time (``LearnConfig.layers``) without extracting again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ser_ray.encoders import DTYPES, MIN_SAMPLES, PRECISIONS, SAMPLE_RATE, WHISPER_INPUTS
from ser_ray.features.base import Extractor, _check_choice, register

# Extractors whose rows are (hidden states, features): ``LearnConfig.layers`` selects among them.
LAYERED: tuple[str, ...] = ("encoder",)


@register("encoder")
@dataclass(frozen=True)
class Encoder(Extractor):
    """Hidden states of a pretrained encoder, each mean- and std-pooled over the clip's frames:
    shape ``(layers + 1, 2 x hidden)``; row 0 is the embeddings (Whisper: conv + positions),
    row k the output of transformer layer k; columns ``[:hidden]`` the mean, ``[hidden:]`` the
    standard deviation. whisper-base: (7, 1024).

    ``model``: a Hugging Face folder or hub id (Whisper, HuBERT, wav2vec 2.0, WavLM,
    data2vec-audio). Clips longer than ``chunk_s`` (Whisper: at most its 30 s window) are encoded
    in equal chunks and pooled over all of them. ``whisper_input``: ``unpadded`` (the clip's own
    frames, the position table cut to them) or ``padded`` (every chunk padded to 30 s, as Whisper
    was trained). ``precision``: ``fp32`` (float weights; on a GPU ``dtype`` picks the float
    type, auto = fp16), ``int8`` (CPU: int8 Linear layers through torchao, about 2x faster;
    pooled states within cosine 0.999 of fp32 on EmoDB) or ``auto`` (int8 on CPU, float on a
    GPU). ``prepare`` records the precision ``auto`` resolved to, and scoring refuses a model
    whose features were made in the other family unless mixing is allowed. ``device``: auto = a
    GPU when one is visible. ``batch_size``: chunks per forward pass, bucketed by length.
    ``depth``: run the bottom ``depth`` layers only, giving ``(depth + 1, 2 x hidden)``
    (None: every layer). Scoring sets it to the deepest state its model reads
    (``features.windows.shallow``); prepare keeps every state for learn to choose from.
    """

    warm_at_install: ClassVar[bool] = False
    model: str = ""
    whisper_input: str = "unpadded"
    chunk_s: float = 30.0
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    depth: int | None = None

    def __post_init__(self):
        _check_choice(self.name, "whisper_input", self.whisper_input, WHISPER_INPUTS)
        _check_choice(self.name, "dtype", self.dtype, DTYPES)
        _check_choice(self.name, "precision", self.precision, PRECISIONS)
        if not self.model:
            raise ValueError("encoder: set its model, e.g. --set feature_options.encoder.model="
                             "../shared/models/whisper-base (a Hugging Face folder or hub id)")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"encoder: pretrained speech encoders take {SAMPLE_RATE} Hz audio; "
                             f"prepare with audio.sample_rate={SAMPLE_RATE}")
        if self.chunk_s <= 0 or self.batch_size < 1:
            raise ValueError("encoder: chunk_s must be > 0 and batch_size >= 1")
        if self.depth is not None and (not isinstance(self.depth, int) or self.depth < 0):
            raise ValueError(f"encoder: depth={self.depth!r} must be a layer count >= 0, or "
                             "null for every layer")

    def min_samples(self, sr: int) -> int:
        return MIN_SAMPLES

    def encoder(self):
        """The loaded :class:`~ser_ray.encoders.SpeechEncoder`, built on first use per process
        (the extractor is pickled into Ray workers; the weights are not)."""
        enc = self.__dict__.get("_encoder")
        if enc is None:
            from ser_ray.encoders import SpeechEncoder

            enc = SpeechEncoder(self.model, device=self.device, dtype=self.dtype,
                                whisper_input=self.whisper_input, chunk_s=self.chunk_s,
                                batch_size=self.batch_size, precision=self.precision,
                                depth=self.depth)
            self.__dict__["_encoder"] = enc  # frozen dataclass: a cache, not config
        return enc

    def load(self) -> None:
        self.encoder()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_encoder"}

    def compute(self, y, sr):
        return self.encoder().pooled([y])[0]

    def compute_many(self, ys, sr):
        return self.encoder().pooled(ys)


def resolve_encoder_precision(settings: dict[str, Any], gpu: bool,
                              want: str | None = None) -> str:
    """The precision setting (``int8``, or ``fp32``: the float path, fp16/bf16 on a GPU by
    ``dtype``) an ``encoder`` extractor with ``settings`` runs at on workers with (``gpu``) or
    without a GPU: ``want`` (a scoring override) or its own ``precision`` (absent in folders
    made before precision existed: fp32), ``auto`` resolved as the workers will."""
    from ser_ray.encoders import resolve_precision

    device = settings.get("device", "auto")
    if device == "auto":
        device = "cuda" if gpu else "cpu"
    resolved = resolve_precision(want or settings.get("precision", "fp32"),
                                 settings.get("dtype", "auto"), device)
    return "int8" if resolved == "int8" else "fp32"


@register("waveform")
@dataclass(frozen=True)
class Waveform(Extractor):
    """The conditioned 16 kHz waveform itself, shape ``(samples,)`` float32: the input of
    ``encoder_finetune``. Learning crops or pads it to ``frames`` samples (default: the median
    clip), as it does the time axis of any ragged feature."""

    def __post_init__(self):
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"waveform: encoders take {SAMPLE_RATE} Hz audio; prepare with "
                             f"audio.sample_rate={SAMPLE_RATE}")

    def min_samples(self, sr: int) -> int:
        return MIN_SAMPLES

    def compute(self, y, sr):
        return np.asarray(y, dtype=np.float32)
