"""What was said, as features: a Whisper transcript of each clip (``transcript``) and a text
encoder's embedding of it (``text``), for audio + text fusion (``audio_text``).

Both transcribe with :class:`ser_ray.transcribe.Transcriber`, the one Whisper loader scoring's
transcripts use. A process keeps one Transcriber per model and remembers the transcripts of
the clips it saw last, so preparing ``transcript`` and ``text`` together runs Whisper once per
clip. ``transcript`` rows hold the text as UTF-8 bytes (``decode``; :func:`read_prepared_transcripts`
reads a prepared folder's table as text). Acted corpora read the same sentences in every
emotion, so their text carries no emotion: fusion is meant for real calls.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from ser_ray.features.arrays import read_feature
from ser_ray.features.base import Extractor, register
from ser_ray.transcribe import MIN_SAMPLES, SAMPLE_RATE
_MEMO: "OrderedDict[tuple, tuple[str, str | None]]" = OrderedDict()
MEMO_SIZE = 4096


@dataclass(frozen=True)
class _Speech(Extractor):
    """Fields both extractors share: the Whisper model and how it runs."""

    warm_at_install: ClassVar[bool] = False
    asr: str = ""                   # Whisper folder or hub id (WhisperForConditionalGeneration)
    language: str | None = None     # None: detected per clip; else e.g. "de"
    max_new_tokens: int = 64
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self):
        if not self.asr:
            raise ValueError(f"{self.name}: set its asr, e.g. --set feature_options.{self.name}."
                             "asr=../shared/models/whisper-base (a Whisper folder or hub id)")
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"{self.name}: Whisper takes {SAMPLE_RATE} Hz audio; prepare with "
                             f"audio.sample_rate={SAMPLE_RATE}")

    def min_samples(self, sr: int) -> int:
        return MIN_SAMPLES

    def transcriber(self):
        """The loaded :class:`~ser_ray.transcribe.Transcriber`, one per process and model."""
        from ser_ray.transcribe import transcriber

        return transcriber(self.asr, self.device, self.dtype, self.language, self.max_new_tokens,
                           self.batch_size)

    def load(self) -> None:
        self.transcriber()

    def transcripts(self, ys) -> list[tuple[str, str | None]]:
        """``(text, language)`` per clip; clips this process transcribed lately are not sent
        to Whisper again."""
        keys = [(self.asr, self.language, self.max_new_tokens,
                 hashlib.sha1(np.ascontiguousarray(y, np.float32).tobytes()).hexdigest()) for y in ys]
        todo = [k for k in dict.fromkeys(keys) if k not in _MEMO]
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            model = self.transcriber()
            for k, out in zip(todo, model.transcribe([ys[first[k]] for k in todo])):
                _MEMO[k] = out
                while len(_MEMO) > MEMO_SIZE:
                    _MEMO.popitem(last=False)
        return [_MEMO[k] for k in keys]

    def compute(self, y, sr):
        return self.compute_many([y], sr)[0]


def encode(text: str, language: str | None) -> np.ndarray:
    """``language`` and ``text`` as UTF-8 bytes in a float32 vector (a feature table row)."""
    data = f"{language or ''}\n{text}".encode()
    return np.frombuffer(data, np.uint8).astype(np.float32)


def decode(row: np.ndarray) -> tuple[str, str | None]:
    """A ``transcript`` row -> ``(text, language or None)``."""
    lang, _, text = bytes(np.asarray(row).astype(np.uint8)).decode().partition("\n")
    return text, lang or None


@register("transcript")
@dataclass(frozen=True)
class Transcript(_Speech):
    """The clip's Whisper transcript (``asr``), its language detected unless ``language`` is
    set: a UTF-8 row of variable length (``ser_ray.features.text.read_prepared_transcripts`` reads it as
    text). Not a model input; prepared beside ``text`` to see what was said."""

    def compute_many(self, ys, sr):
        return [encode(t, lang) for t, lang in self.transcripts(ys)]


@register("text")
@dataclass(frozen=True)
class Text(_Speech):
    """A text encoder's embedding of the clip's Whisper transcript: the last hidden state of
    ``text_model`` (BERT family, any ``AutoModel``; folder or hub id) mean-pooled over the
    transcript's tokens (at most ``max_tokens``). Input of ``audio_text`` beside an audio
    feature. Shape ``(hidden,)``: 768 for bert-base."""

    text_model: str = ""
    max_tokens: int = 128

    def __post_init__(self):
        super().__post_init__()
        if not self.text_model:
            raise ValueError("text: set its text_model, e.g. --set feature_options.text."
                             "text_model=bert-base-german-cased (a folder or hub id)")
        if self.max_tokens < 2:
            raise ValueError("text: max_tokens must be >= 2")

    def load(self) -> None:
        super().load()
        _text_encoder(self.text_model, self.device)

    def compute_many(self, ys, sr):
        return list(self.embed([t for t, _ in self.transcripts(ys)]))

    def embed(self, texts: list[str]) -> np.ndarray:
        """Texts -> ``(n, hidden)`` float32 mean-pooled embeddings."""
        import torch

        tok, model, device = _text_encoder(self.text_model, self.device)
        out = []
        with torch.inference_mode():
            for b in range(0, len(texts), self.batch_size):
                enc = tok(texts[b:b + self.batch_size], padding=True, truncation=True,
                          max_length=self.max_tokens, return_tensors="pt").to(device)
                h = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), np.float32)


@lru_cache(maxsize=2)
def _text_encoder(model: str, device: str):
    from transformers import AutoModel, AutoTokenizer

    from ser_ray.encoders import pretrained_config, resolve_device

    path, local, _ = pretrained_config(model, "text")
    dev = resolve_device(device)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
    net = AutoModel.from_pretrained(path, local_files_only=local).to(dev).eval()
    return tok, net, dev


def read_prepared_transcripts(root: str | Path):
    """A prepared folder's ``transcript`` table -> DataFrame (utterance_id, block_index,
    speaker, label, language, text)."""
    arrays, meta = read_feature(root, "transcript")
    pairs = [decode(a) for a in arrays]
    out = meta[["utterance_id", "block_index", "speaker", "label"]].copy()
    out["language"] = [lang for _, lang in pairs]
    out["text"] = [t for t, _ in pairs]
    return out.reset_index(drop=True)
