"""Speech to text with a Whisper model (``WhisperForConditionalGeneration``), the one
implementation behind scoring's transcripts (and any later use of transcripts).

:class:`Transcriber` loads a local folder (``local_files_only``) or a hub id through
:func:`ser_ray.encoders.load_pretrained`'s rules (clear errors for a missing folder or an id that
cannot be fetched), then turns 16 kHz clips into ``(text, language)``: the language is detected per
clip unless one is given, so German calls come out in German. Clips longer than Whisper's 30 s
window are cut into pieces of at most 30 s and their texts joined.

:func:`transcriber` is the one loaded model per worker process. The night's transcripts stage
that uses it is ``ser_ray.score.transcripts``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ser_ray.config import TranscribeConfig

SAMPLE_RATE = 16000
WINDOW_S = 30.0  # Whisper's input window
MIN_SAMPLES = 1600  # 0.1 s: shorter spans are not sent to the model


def check(cfg: TranscribeConfig) -> None:
    if cfg.segments not in ("top", "all"):
        raise ValueError(f"transcribe.segments={cfg.segments!r}: choose top or all")
    for name in ("top_calls", "moments_per_call", "max_new_tokens", "batch_size", "calls_per_task"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"transcribe.{name} must be >= 1, got {getattr(cfg, name)}")
    if not 1.0 <= cfg.max_span_s <= WINDOW_S:
        raise ValueError(f"transcribe.max_span_s must be in [1, {WINDOW_S:g}], got {cfg.max_span_s}")
    if cfg.context_s < 0:
        raise ValueError(f"transcribe.context_s must be >= 0, got {cfg.context_s}")


def whisper_checkpoint(model: str) -> tuple[str, bool]:
    """``transcribe.model`` -> (path or hub id, whether local); a missing folder, an id that
    cannot be fetched or a checkpoint that is not Whisper is a clear error (scoring checks this
    before the night's work starts)."""
    from ser_ray.encoders import WHISPER, pretrained_config

    path, local, config = pretrained_config(model, "transcribe")
    if config.model_type != WHISPER:
        raise ValueError(f"transcribe model {model!r} is a {config.model_type!r} model; "
                         f"transcripts need a Whisper checkpoint")
    return path, local


class Transcriber:
    """A loaded Whisper model: 16 kHz clips -> ``(text, language)`` each."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto",
                 language: str | None = None, max_new_tokens: int = 120, batch_size: int = 8):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        from ser_ray.encoders import resolve_device, resolve_dtype

        path, local = whisper_checkpoint(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.processor = WhisperProcessor.from_pretrained(path, local_files_only=local)
        self.model = WhisperForConditionalGeneration.from_pretrained(
            path, local_files_only=local, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.language = language
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self._lang_codes = {tok: code for code, tok in self._language_tokens().items()}

    def _language_tokens(self) -> dict[str, int]:
        """Language code ("de") -> its token id, from the model's generation config."""
        gen = self.model.generation_config
        table = getattr(gen, "lang_to_id", None) or {}
        return {k.strip("<|>"): v for k, v in table.items()}

    def _pieces(self, y: np.ndarray) -> list[np.ndarray]:
        size = int(WINDOW_S * SAMPLE_RATE)
        return [y[i:i + size] for i in range(0, max(len(y), 1), size)]

    def transcribe(self, clips: Sequence[np.ndarray]) -> list[tuple[str, str | None]]:
        """16 kHz float32 clips -> ``(text, language code or None)`` each, in order."""
        import torch

        pieces = [(i, p) for i, y in enumerate(clips) for p in self._pieces(np.asarray(y, np.float32))
                  if len(p) >= MIN_SAMPLES]
        texts: list[list[str]] = [[] for _ in clips]
        langs: list[str | None] = [self.language] * len(clips)
        with torch.inference_mode():
            for b in range(0, len(pieces), self.batch_size):
                chunk = pieces[b:b + self.batch_size]
                feats = self.processor.feature_extractor(
                    [p for _, p in chunk], sampling_rate=SAMPLE_RATE, return_tensors="pt"
                ).input_features.to(self.device, self.dtype)
                if self.language:
                    codes = [self.language] * len(chunk)
                else:
                    ids = self.model.detect_language(feats).reshape(-1).tolist()
                    codes = [self._lang_codes.get(int(t)) for t in ids]
                for code in dict.fromkeys(codes):  # one generate call per language in the batch
                    idx = [k for k, c in enumerate(codes) if c == code]
                    out = self.model.generate(feats[idx], task="transcribe", language=code,
                                              max_new_tokens=self.max_new_tokens)
                    for k, text in zip(idx, self.processor.batch_decode(out, skip_special_tokens=True)):
                        clip = chunk[k][0]
                        texts[clip].append(text.strip())
                        if langs[clip] is None:
                            langs[clip] = code
        return [(" ".join(t for t in ts if t), lang) for ts, lang in zip(texts, langs)]


def transcriber(model: str, device: str = "auto", dtype: str = "auto", language: str | None = None,
                max_new_tokens: int = 120, batch_size: int = 8) -> Transcriber:
    """The worker process's loaded Whisper for these settings, built once per process and shared
    by every user in it (the night's transcripts, the ``transcript`` feature)."""
    from ser_ray.runtime import process_cached

    key = [model, device, dtype, language, max_new_tokens, batch_size]
    return process_cached("transcriber", key, lambda: Transcriber(*key))
