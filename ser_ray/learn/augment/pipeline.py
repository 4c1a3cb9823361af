"""The Ray stage (:func:`augmented_features`, :func:`noisy_features`) decodes each manifest row with
prepare's own path (``audio.decode`` + ``audio.condition`` with the prepare run's AudioConfig),
applies the chain per copy with a generator seeded by (seed, sha256(utterance_id), copy), splits
blocks and extracts features exactly as prepare does, and sorts its output, so a result depends
on the seed only, never on the number of workers. Augment the training split only: copies keep
``source_id``, so a split grouped by it keeps them on the side of their recording."""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ser_ray import audio
from ser_ray.config import AudioConfig, S3Config, from_dict, to_dict
from ser_ray.learn.augment.noise import AugmentError, read_sources
from ser_ray.learn.augment.steps import Chain, row_rng
from ser_ray.storage import Storage


# Manifest columns every output row carries over (the learning plane's meta contract).
KEEP_COLUMNS = ("utterance_id", "source_id", "speaker", "sex", "corpus", "label")
META_COLUMNS = (*KEEP_COLUMNS, "block_index", "start_s", "end_s", "augment", "copy")
ORIGINAL = "none"  # the `augment` value of un-augmented rows; their `copy` is -1


Rows = tuple[Any, pd.DataFrame]  # (X: ndarray (n, ...) or list of n arrays, meta with n rows)


def _mark_original(rows: Rows) -> Rows:
    x, meta = rows
    meta = meta.copy()
    if "augment" not in meta:
        meta["augment"] = ORIGINAL
    if "copy" not in meta:
        meta["copy"] = -1
    return x, meta


def _concat(a: Rows, b: Rows) -> Rows:
    (xa, ma), (xb, mb) = a, b
    if (isinstance(xa, np.ndarray) and isinstance(xb, np.ndarray)
            and xa.shape[1:] == xb.shape[1:]):
        x = np.concatenate([xa, xb])
    else:
        x = list(xa) + list(xb)
    return x, pd.concat([ma, mb], ignore_index=True)


def _need(variant: str, augmented: Rows | None) -> Rows:
    if augmented is None:
        raise ValueError(f"variant {variant!r} needs augmented rows: run augmented_features on "
                         f"the training split first, or choose variant 'none'")
    return augmented


VARIANTS: dict[str, Callable[[Rows, Rows | None], Rows]] = {
    "none": lambda orig, aug: _mark_original(orig),
    "augmented": lambda orig, aug: _need("augmented", aug),
    "merged": lambda orig, aug: _concat(_mark_original(orig), _need("merged", aug)),
}


def select_variant(variant: str, original: Rows, augmented: Rows | None = None) -> Rows:
    """(X, meta) of a dataset variant: ``none`` (originals), ``augmented`` (copies only) or
    ``merged`` (originals then copies). Originals get ``augment="none"`` and ``copy=-1``.

    Pass training-split rows only; test rows are never augmented.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown augmentation variant {variant!r}; choose one of "
                         f"{sorted(VARIANTS)}")
    return VARIANTS[variant](original, augmented)


class AugmentWorker:
    """Ray Data callable class: builds storage, extractor and chains once per actor.

    ``jobs``: one dict per output variant of each row: ``chain`` (config list), ``label``,
    ``copy`` (written to meta), ``rng_copy`` (the copy index the generator is seeded with) and
    optional ``extra`` columns.
    """

    def __init__(self, audio_cfg: dict, extractors: list[dict], jobs: list[dict], seed: int,
                 s3: dict):
        from ser_ray.features import get_extractor
        from ser_ray.features.warmup import warm_up

        self.audio_cfg = from_dict(AudioConfig, audio_cfg)
        self.extractors = []
        for extractor in extractors:
            ext = dict(extractor)
            self.extractors.append(get_extractor(ext.pop("name"), **ext))
        warm_up(self.extractors)  # compile librosa's numba kernels one process at a time
        self.storage = Storage(from_dict(S3Config, s3))
        self.jobs = [(Chain.from_config(j["chain"], name=j.get("label")), j) for j in jobs]
        self.seed = seed
        self.max_bytes = int(self.audio_cfg.max_file_mb * 2**20)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from ser_ray.prepare.units import block_features

        sr = self.audio_cfg.sample_rate
        data = read_sources(self.storage, list(batch["uri"]), self.max_bytes)
        out: list[dict] = []
        for row in batch.to_dict("records"):
            uri, utt = row["uri"], row["utterance_id"]
            try:
                y = audio.condition(audio.decode(data[uri]), self.audio_cfg)
            except audio.AudioError as exc:
                raise AugmentError(f"augment: {uri} ({utt}) no longer decodes: {exc}; prepare "
                                   f"accepted it, so the file changed: rerun prepare") from None
            keep = {k: row[k] for k in KEEP_COLUMNS}
            for chain, job in self.jobs:
                y2 = chain(y, sr, row_rng(self.seed, utt, job["rng_copy"]))
                try:
                    # prepare's own cutting and extraction; every copy on its own (nothing
                    # deferred, an encoder included)
                    named = block_features(y2, self.audio_cfg,
                                           {e.name: e for e in self.extractors})
                except audio.AudioError as exc:
                    raise AugmentError(f"augment: {uri} ({utt}) copy {job['copy']} of "
                                       f"{chain.name}: {exc}") from None
                per = [named[e.name] for e in self.extractors]  # the same cuts for each
                for i, (start, end, _) in enumerate(per[0]):
                    arrays = {}
                    for k, blocks in enumerate(per):
                        arr = blocks[i][2].astype(np.float32)
                        arrays[f"values_{k}"], arrays[f"shape_{k}"] = arr.tobytes(), list(arr.shape)
                    out.append({**keep, "block_index": i, "start_s": start, "end_s": end,
                                "augment": chain.name, "copy": job["copy"],
                                **job.get("extra", {}), **arrays})
        return pd.DataFrame(out)


def _run(rows: pd.DataFrame, jobs: list[dict], audio_cfg: AudioConfig, extractor, seed: int,
         storage: Storage | None, num_workers: int | None,
         extra_columns: tuple[str, ...] = ()) -> tuple[list, pd.DataFrame]:
    """The Ray stage. ``extractor``: one extractor (X[i] is its array) or a list of them (X[i]
    is a tuple of their arrays, in order, for ``features.inputs.join_features``)."""
    import ray
    from ray.data import ActorPoolStrategy

    from ser_ray.features import extractor_config
    from ser_ray.runtime import init_ray

    missing = [c for c in ("uri", *KEEP_COLUMNS) if c not in rows.columns]
    if missing:
        raise ValueError(f"augment: manifest rows lack column(s) {missing}; pass rows of the "
                         f"prepare run's manifest/ table")
    if seed < 0:
        raise ValueError(f"augment: seed={seed} must be >= 0")
    columns = [*META_COLUMNS, *extra_columns]
    if rows.empty:
        return [], pd.DataFrame(columns=columns)
    # Check the chains here, where a bad config fails fast, not inside an actor.
    for j in jobs:
        Chain.from_config(j["chain"])
    several = isinstance(extractor, (list, tuple))
    extractors = list(extractor) if several else [extractor]
    items = rows[["uri", *KEEP_COLUMNS]]
    items = items.astype(object).where(items.notna(), None)
    init_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = max(1, min(num_workers or cpus, len(items)))
    ds = ray.data.from_items(items.to_dict("records"),
                             override_num_blocks=min(len(items), 4 * workers))
    s3 = to_dict((storage or Storage()).s3cfg)
    try:
        out = ds.map_batches(
            AugmentWorker, batch_format="pandas", batch_size=None,
            fn_constructor_kwargs={"audio_cfg": to_dict(audio_cfg),
                                   "extractors": [extractor_config(e) for e in extractors],
                                   "jobs": jobs,
                                   "seed": int(seed), "s3": s3},
            compute=ActorPoolStrategy(size=workers), num_cpus=1).to_pandas()
    except Exception as exc:
        # Ray wraps a worker's error in its own; surface ours (it names the file) as itself.
        found = re.search(r"AugmentError: (augment: [^\n]*)", str(exc))
        if found:
            raise AugmentError(found.group(1)) from exc
        raise
    out = out.sort_values(["utterance_id", "block_index", "augment", "copy"],
                          kind="stable").reset_index(drop=True)
    parts = [[np.frombuffer(v, dtype=np.float32).reshape([int(d) for d in s]).copy()
              for v, s in zip(out[f"values_{k}"], out[f"shape_{k}"])]
             for k in range(len(extractors))]
    xs = list(zip(*parts)) if several else parts[0]
    meta = out[columns].copy()
    meta["block_index"] = meta["block_index"].astype(np.int32)
    meta["copy"] = meta["copy"].astype(np.int64)
    return xs, meta


def augmented_features(manifest_rows: pd.DataFrame, *, audio_cfg: AudioConfig, extractor,
                       chain: Chain | Sequence[dict], copies: int = 1, seed: int = 0,
                       storage: Storage | None = None, num_workers: int | None = None,
                       ) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Features of ``copies`` augmented copies of each manifest row, on a Ray actor pool.

    ``manifest_rows``: rows of prepare's manifest (uri, utterance_id, source_id, speaker, sex,
    corpus, label); ``audio_cfg``: the prepare run's AudioConfig, so copies are conditioned and
    split into blocks exactly like the originals. Returns (X, meta): X[i] is the float32 feature
    of meta row i; meta has :data:`META_COLUMNS` (``augment`` = chain name, ``copy`` = 0..copies-1)
    sorted by utterance_id, block_index, copy. Raises :class:`AugmentError` naming the uri of a
    file that no longer reads or decodes. Call it on training rows only.
    """
    if copies < 1:
        raise ValueError(f"augment: copies={copies} must be >= 1")
    chain = chain if isinstance(chain, Chain) else Chain.from_config(chain)
    jobs = [{"chain": chain.to_config(), "label": chain.name, "copy": k, "rng_copy": k}
            for k in range(copies)]
    return _run(manifest_rows, jobs, audio_cfg, extractor, seed, storage, num_workers)


def noisy_features(manifest_rows: pd.DataFrame, *, audio_cfg: AudioConfig, extractor,
                   noise: str | Sequence[str], snr_db: float | Sequence[float] = (15, 20, 40),
                   seed: int = 0, storage: Storage | None = None,
                   num_workers: int | None = None) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Noisy test sets: each row mixed with a noise-bank recording at each SNR in ``snr_db``.

    Same output as :func:`augmented_features` plus an ``snr_db`` column; ``augment`` is
    ``noise-snr<SNR>dB`` and ``copy`` 0. One utterance gets the same noise clip and offset at
    every SNR, so levels differ only in lambda.
    """
    snrs = [float(snr_db)] if isinstance(snr_db, (int, float)) else [float(s) for s in snr_db]
    if not snrs:
        raise ValueError("noisy_features: give at least one snr_db")
    noise_t = (noise,) if isinstance(noise, str) else tuple(noise)
    jobs = [{"chain": [{"name": "background_noise", "noise": list(noise_t), "snr_db": [s]}],
             "label": f"noise-snr{s:g}dB", "copy": 0, "rng_copy": 0, "extra": {"snr_db": s}}
            for s in snrs]
    return _run(manifest_rows, jobs, audio_cfg, extractor, seed, storage, num_workers,
                extra_columns=("snr_db",))


def channel_features(manifest_rows: pd.DataFrame, *, audio_cfg: AudioConfig, extractor,
                     codecs: Sequence[str], kbps: float = 16.0, seed: int = 0,
                     storage: Storage | None = None, num_workers: int | None = None
                     ) -> tuple[list[np.ndarray], pd.DataFrame]:
    """Telephone test sets: each row through a clean telephone line (band-pass, 8 kHz, the codec;
    no loss, clipping or level change) once per codec in ``codecs``.

    Same output as :func:`augmented_features` plus a ``channel`` column (the codec); ``augment``
    is ``telephone-<codec>`` and ``copy`` 0."""
    if not codecs:
        raise ValueError("channel_features: give at least one codec")
    jobs = [{"chain": [{"name": "telephone", "codecs": [c], "min_kbps": float(kbps),
                        "max_kbps": float(kbps), "gain_p": 0.0, "clip_p": 0.0, "loss_p": 0.0}],
             "label": f"telephone-{c}", "copy": 0, "rng_copy": 0, "extra": {"channel": c}}
            for c in codecs]
    return _run(manifest_rows, jobs, audio_cfg, extractor, seed, storage, num_workers,
                extra_columns=("channel",))
