"""Speech to text with a Whisper model (``WhisperForConditionalGeneration``), the one
implementation behind scoring's transcripts (and any later use of transcripts).

:class:`Transcriber` loads a local folder (``local_files_only``) or a hub id through
:func:`ser_ray.encoders.load_pretrained`'s rules (clear errors for a missing folder or an id that
cannot be fetched), then turns 16 kHz clips into ``(text, language)``: the language is detected per
clip unless one is given, so German calls come out in German. Clips longer than Whisper's 30 s
window are cut into pieces of at most 30 s and their texts joined.

:func:`transcribe_calls` is the scoring stage: Ray tasks that read, decode and pick the scored
channel of each call exactly as scoring did (:meth:`ser_ray.score.CallReader.load`), cut the
chosen spans and transcribe them, one model per worker process.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ser_ray.config import TranscribeConfig, from_dict

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


# ------------------------------------------------------------------------------ the scoring stage
def spans(start_s: np.ndarray, end_s: np.ndarray, negative: np.ndarray, cfg: TranscribeConfig,
          duration_s: float) -> list[tuple[float, float]]:
    """The spans of one call's scored channel to transcribe, in time order, from its segments
    (start, end, negative emotion ``n_t`` of :func:`ser_ray.urgency.negative_emotion`):
    ``all``: every segment, merged where they touch, cut at ``max_span_s``; ``top``: the
    ``moments_per_call`` segments with the most negative emotion (earliest on ties), each widened
    by ``context_s`` on both sides, merged where they overlap."""
    start_s, end_s = np.asarray(start_s, float), np.asarray(end_s, float)
    if not len(start_s):
        return []
    if cfg.segments == "all":
        raw = list(zip(start_s, end_s))
    else:
        best = np.lexsort((start_s, -np.asarray(negative, float)))[:cfg.moments_per_call]
        raw = [(max(0.0, start_s[k] - cfg.context_s), min(duration_s, end_s[k] + cfg.context_s))
               for k in best]
    merged: list[list[float]] = []
    for a, b in sorted(raw):
        if merged and a <= merged[-1][1] + 1e-6:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out = []
    for a, b in merged:  # cut what is too long for one window
        while b - a > cfg.max_span_s + 1e-6:
            out.append((float(a), float(a + cfg.max_span_s)))
            a += cfg.max_span_s
        out.append((float(a), float(b)))
    return out


_TRANSCRIBERS: dict[tuple, Transcriber] = {}


def transcriber(cfg: TranscribeConfig) -> Transcriber:
    """The worker process's loaded model for ``cfg`` (built once per process)."""
    key = (cfg.model, cfg.device, cfg.dtype, cfg.language, cfg.max_new_tokens, cfg.batch_size)
    if key not in _TRANSCRIBERS:
        _TRANSCRIBERS.clear()
        _TRANSCRIBERS[key] = Transcriber(cfg.model, cfg.device, cfg.dtype, cfg.language,
                                         cfg.max_new_tokens, cfg.batch_size)
    return _TRANSCRIBERS[key]


def transcribe_group(jobs: list[dict[str, Any]], cfg_d: dict[str, Any],
                     settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One Ray task: calls (``call_id``, ``uri``, ``size``, ``channel``, ``spans``) -> transcript
    rows; a call that cannot be read again gets one row with its error in ``error``."""
    import torch

    from ser_ray.score import CallReader

    cfg = from_dict(TranscribeConfig, cfg_d)
    torch.set_num_threads(max(1, int(round(cfg.cpus_per_worker))))
    reader = CallReader(settings, SAMPLE_RATE)
    model = transcriber(cfg)
    rows: list[dict[str, Any]] = []
    for job in jobs:
        base = {"call_id": job["call_id"], "channel": job["channel"]}
        got: dict[str, Any] = {}
        try:
            y = reader.load(job, got)
        except Exception as exc:  # a bug: say what broke, lose nothing
            y, got["reason"] = None, f"{type(exc).__name__}: {exc}"
        if y is None:  # changed or gone since scoring: say so
            rows.append({**base, "start_s": None, "end_s": None, "text": None, "language": None,
                         "error": f"{got.get('status') or 'error'}: {got.get('reason')}"})
            continue
        clips = [y[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] for a, b in job["spans"]]
        for (a, b), (text, lang) in zip(job["spans"], model.transcribe(clips)):
            rows.append({**base, "start_s": round(a, 3), "end_s": round(b, 3), "text": text,
                         "language": lang, "error": None})
    return rows


TRANSCRIPT_COLUMNS = ("call_id", "channel", "start_s", "end_s", "text", "language", "error", "run_id")


def transcripts_schema():
    import pyarrow as pa

    return pa.schema([("call_id", pa.string()), ("channel", pa.string()), ("start_s", pa.float64()),
                      ("end_s", pa.float64()), ("text", pa.string()), ("language", pa.string()),
                      ("error", pa.string()), ("run_id", pa.string())])


def chosen_calls(calls, cfg: TranscribeConfig):
    """The calls to transcribe, best-ranked first: ``top``: the ``top_calls`` best-ranked scored
    calls; ``all``: every scored call."""
    scored = calls[calls["status"] == "scored"].sort_values("urgency_rank", kind="mergesort")
    return scored.head(cfg.top_calls) if cfg.segments == "top" else scored


def plan(calls, segments, labels: Sequence[str], cfg: TranscribeConfig, urgency=None
         ) -> list[dict[str, Any]]:
    """The published calls (ranked) and their segments -> one job per call to transcribe
    (:func:`chosen_calls`), with its spans (:func:`spans`)."""
    from ser_ray.urgency import PROB_PREFIX, negative_emotion

    scored = chosen_calls(calls, cfg)
    by_call = {k: g for k, g in segments.groupby("call_id", sort=False)} if len(segments) else {}
    jobs = []
    for row in scored.itertuples(index=False):
        seg = by_call.get(row.call_id)
        if seg is None or seg.empty:
            continue
        seg = seg.sort_values("start_s", kind="mergesort")
        neg = negative_emotion(seg[[f"{PROB_PREFIX}{lab}" for lab in labels]].to_numpy(float),
                               labels, urgency)
        todo = spans(seg["start_s"].to_numpy(), seg["end_s"].to_numpy(), neg, cfg,
                     float(row.duration_s))
        if todo:
            jobs.append({"call_id": row.call_id, "uri": row.uri, "channel": row.channel,
                         "spans": todo})
    return jobs


def run_transcripts(cfg: TranscribeConfig, jobs: list[dict[str, Any]], settings: dict[str, Any],
                    run_id: str, progress=None):
    """Transcribe ``jobs`` in Ray tasks (``calls_per_task`` calls each, ``cpus_per_worker`` /
    ``gpus_per_worker`` per task) -> a pandas table of :data:`TRANSCRIPT_COLUMNS`, ordered as
    the jobs (rank, then time)."""
    import pandas as pd
    import ray

    from ser_ray.config import to_dict

    task = ray.remote(transcribe_group).options(num_cpus=cfg.cpus_per_worker,
                                                 num_gpus=cfg.gpus_per_worker)
    groups = [jobs[i:i + cfg.calls_per_task] for i in range(0, len(jobs), cfg.calls_per_task)]
    cfg_d = to_dict(cfg)
    refs = [task.remote(g, cfg_d, settings) for g in groups]
    index = {r: k for k, r in enumerate(refs)}
    results: list[list[dict[str, Any]] | None] = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        k = index[done[0]]
        try:
            results[k] = ray.get(done[0])
        except ray.exceptions.RayError as exc:  # the night's scores are published: keep them,
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"  # say why
            results[k] = [{"call_id": j["call_id"], "channel": j["channel"], "start_s": None,
                           "end_s": None, "text": None, "language": None, "error": why}
                          for j in groups[k]]
        if progress:
            progress(sum(len(g) for g, r in zip(groups, results) if r is not None), len(jobs))
    rows = [{**r, "run_id": run_id} for part in results for r in part or []]
    return pd.DataFrame(rows, columns=list(TRANSCRIPT_COLUMNS))
