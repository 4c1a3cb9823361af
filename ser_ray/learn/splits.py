"""Train/test folds that keep source recordings (and, by default, speakers) apart.

Every protocol groups by source recording (``source_id``): the blocks and augmented copies of one
recording always land on the same side. Every protocol except ``random-kfold`` also keeps whole
speakers on one side; ``random-kfold`` shares speakers on purpose (the optimistic protocol many
papers report) and says so in ``PROTOCOLS["random-kfold"].shares_speakers``. :func:`make_folds`
runs :func:`check_fold` on every fold it returns, so a leaky fold never reaches training.

Row indices are positions (0..len(meta)-1), not ``meta.index`` labels.

>>> for fold in make_folds(meta, "speaker-kfold", folds=5, seed=0):
...     fit(X[fold.train], y[fold.train]); score(X[fold.test], y[fold.test])
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, LeaveOneGroupOut, StratifiedGroupKFold


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make == ambiguous
class Fold:
    """One train/test split: ``train`` and ``test`` are int64 row positions into ``meta``.

    ``dropped`` (cross-corpus only) counts rows per label left out because the label is missing
    on one side; those rows are in neither ``train`` nor ``test``.
    """

    index: int
    name: str
    train: np.ndarray
    test: np.ndarray
    train_speakers: tuple[str, ...]
    test_speakers: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)


class LeakageError(ValueError):
    """A row, source recording or speaker is on both sides of a fold."""


# (name, train positions, test positions, dropped label counts) as a protocol returns them.
Part = tuple[str, np.ndarray, np.ndarray, dict]


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: ``split(meta, **options) -> list[Part]``."""

    name: str
    split: Callable[..., list[Part]]
    shares_speakers: bool                 # train and test may hold the same speaker
    covers_all: bool                      # every row is a test row in exactly one fold (k-fold)
    columns: tuple[str, ...] = ("source_id", "speaker", "label")


PROTOCOLS: dict[str, Protocol] = {}


def _register(name: str, *, shares_speakers: bool = False, covers_all: bool = True,
              columns: tuple[str, ...] = ("source_id", "speaker", "label")):
    def deco(fn):
        PROTOCOLS[name] = Protocol(name, fn, shares_speakers, covers_all, columns)
        return fn
    return deco


def _preview(values: Iterable, n: int = 8) -> str:
    values = sorted(map(str, values))
    return ", ".join(values[:n]) + (f", ... ({len(values)} in all)" if len(values) > n else "")


def _check_k(protocol: str, folds: int, n_groups: int, what: str, hint: str) -> None:
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"{protocol}: folds must be an integer >= 2, got {folds!r}")
    if folds > n_groups:
        raise ValueError(f"{protocol}: folds={folds} but meta has only {n_groups} {what}; {hint}")


def _kfold(cv, meta: pd.DataFrame, groups: pd.Series) -> list[Part]:
    splits = cv.split(np.zeros(len(meta)), meta["label"].to_numpy(), groups.to_numpy())
    return [(f"fold{i}", train, test, {}) for i, (train, test) in enumerate(splits)]


@_register("random-kfold", shares_speakers=True)
def _random_kfold(meta, *, folds, seed, **_) -> list[Part]:
    """Stratified k-fold over source recordings; speakers appear on both sides."""
    _check_k("random-kfold", folds, meta["source_id"].nunique(), "source recordings (source_id)",
             "use fewer folds")
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return _kfold(cv, meta, meta["source_id"])


@_register("speaker-kfold")
def _speaker_kfold(meta, *, folds, seed, **_) -> list[Part]:
    """k folds of whole speakers, label-stratified as far as whole speakers allow.

    StratifiedGroupKFold places speakers greedily in order of their label-count spread and the
    seed only reorders ties, so different seeds usually give the same speaker partition.
    """
    _check_k("speaker-kfold", folds, meta["speaker"].nunique(), "speakers",
             "use protocol 'loso' or fewer folds")
    cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return _kfold(cv, meta, meta["speaker"])


@_register("loso")
def _loso(meta, **_) -> list[Part]:
    """Leave one speaker out: one fold per speaker, in sorted speaker order."""
    speakers = meta["speaker"].astype(str)
    if speakers.nunique() < 2:
        raise ValueError(f"loso: needs at least 2 speakers, meta has {speakers.nunique()}")
    return [(f"speaker={speakers.iloc[test[0]]}", train, test, {})
            for train, test in LeaveOneGroupOut().split(meta, groups=speakers.to_numpy())]


@_register("explicit", covers_all=False)
def _explicit(meta, *, test_speakers, **_) -> list[Part]:
    """One fold: the given speakers are the test side, every other speaker trains."""
    if not test_speakers:
        raise ValueError("explicit: pass test_speakers=[...] (speaker ids such as 'emodb:03')")
    wanted = {test_speakers} if isinstance(test_speakers, str) else set(test_speakers)
    speakers = meta["speaker"].astype(str)
    missing = wanted - set(speakers)
    if missing:
        raise ValueError(f"explicit: test_speakers {_preview(missing)} are not in meta; "
                         f"speakers present: {_preview(set(speakers))}")
    is_test = speakers.isin(wanted).to_numpy()
    if is_test.all():
        raise ValueError("explicit: every speaker in meta is a test speaker; leave some to train")
    return [("explicit", np.flatnonzero(~is_test), np.flatnonzero(is_test), {})]


@_register("cross-corpus", covers_all=False, columns=("source_id", "speaker", "label", "corpus"))
def _cross_corpus(meta, *, train_corpora, test_corpus, **_) -> list[Part]:
    """One fold: train on ``train_corpora``, test on ``test_corpus``.

    Only labels present on both sides are kept; rows of other labels are dropped and counted in
    ``Fold.dropped`` (with a warning). Rows of corpora named on neither side are not used and not
    counted.
    """
    if not train_corpora or not test_corpus:
        raise ValueError("cross-corpus: pass train_corpora=[...] and test_corpus=...")
    if isinstance(train_corpora, str):
        train_corpora = [train_corpora]
    train_corpora = sorted(set(train_corpora))
    if test_corpus in train_corpora:
        raise ValueError(f"cross-corpus: test_corpus {test_corpus!r} is also in train_corpora")
    corpus, label = meta["corpus"], meta["label"]
    missing = set(train_corpora + [test_corpus]) - set(corpus)
    if missing:
        raise ValueError(f"cross-corpus: corpora {_preview(missing)} are not in meta; "
                         f"corpora present: {_preview(set(corpus))}")
    is_train, is_test = corpus.isin(train_corpora).to_numpy(), (corpus == test_corpus).to_numpy()
    shared = set(label[is_train]) & set(label[is_test])
    name = f"{'+'.join(train_corpora)}->{test_corpus}"
    if not shared:
        raise ValueError(f"cross-corpus {name}: no label occurs in both train and test corpora")
    keep = label.isin(shared).to_numpy()
    dropped = dict(sorted(Counter(label[(is_train | is_test) & ~keep]).items()))
    if dropped:
        warnings.warn(f"cross-corpus {name}: dropped rows of labels not on both sides: {dropped}",
                      stacklevel=3)
    return [(name, np.flatnonzero(is_train & keep), np.flatnonzero(is_test & keep), dropped)]


@_register("leave-one-corpus-out", covers_all=False,
           columns=("source_id", "speaker", "label", "corpus"))
def _leave_one_corpus_out(meta, **_) -> list[Part]:
    """One fold per corpus, in sorted order: train on every other corpus, test on this one
    (labels kept as in ``cross-corpus``: those on both sides of the fold)."""
    corpora = sorted(set(meta["corpus"].astype(str)))
    if len(corpora) < 2:
        raise ValueError(f"leave-one-corpus-out: needs at least 2 corpora, meta has "
                         f"{_preview(corpora)}; prepare several corpora and pass each folder to "
                         f"--features")
    parts = []
    for held in corpora:
        _, train, test, dropped = _cross_corpus(
            meta, train_corpora=[c for c in corpora if c != held], test_corpus=held)[0]
        parts.append((f"held out={held}", train, test, dropped))
    return parts


def get_protocol(name: str) -> Protocol:
    """The protocol registered as ``name``; ValueError listing the valid names otherwise."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _check_meta(meta: pd.DataFrame, columns: Iterable[str], who: str) -> None:
    missing = [c for c in columns if c not in meta.columns]
    if missing:
        raise ValueError(f"{who}: meta lacks column(s) {missing}; it has {list(meta.columns)}")
    for c in columns:
        n = int(meta[c].isna().sum())
        if n:
            raise ValueError(f"{who}: column {c!r} has {n} missing values; fill or drop those rows")
    per_source = meta.groupby("source_id")["speaker"].nunique()
    if (per_source > 1).any():
        raise ValueError(f"{who}: source_id(s) {_preview(per_source.index[per_source > 1])} have "
                         "rows of several speakers; a source recording must have one speaker")


def make_folds(meta: pd.DataFrame, protocol: str, *, folds: int = 5, seed: int = 0,
               test_speakers: Iterable[str] | None = None,
               train_corpora: Iterable[str] | str | None = None,
               test_corpus: str | None = None) -> list[Fold]:
    """Folds of ``meta`` (one row per X row) under ``protocol``; see ``PROTOCOLS``.

    ``folds`` and ``seed`` apply to the k-fold protocols, ``test_speakers`` to "explicit",
    ``train_corpora``/``test_corpus`` to "cross-corpus". The same inputs and seed give the same
    folds, whatever the row order (for "speaker-kfold" the seed rarely matters: it only breaks
    ties). Every fold has passed :func:`check_fold`.
    """
    spec = get_protocol(protocol)
    _check_meta(meta, spec.columns, protocol)
    meta = meta.reset_index(drop=True)
    parts = spec.split(meta, folds=folds, seed=seed, test_speakers=test_speakers,
                       train_corpora=train_corpora, test_corpus=test_corpus)
    speakers = meta["speaker"].astype(str).to_numpy()
    out = []
    for i, (name, train, test, dropped) in enumerate(parts):
        train, test = np.asarray(train, np.int64), np.asarray(test, np.int64)
        fold = Fold(i, name, train, test, tuple(sorted(set(speakers[train]))),
                    tuple(sorted(set(speakers[test]))), dropped)
        check_fold(meta, fold, allow_shared_speakers=spec.shares_speakers)
        out.append(fold)
    return out


def check_fold(meta: pd.DataFrame, fold: Fold, *, allow_shared_speakers: bool = False) -> None:
    """Raise :class:`LeakageError` if a row, a ``source_id`` or (unless allowed) a speaker is on
    both sides of ``fold``. Indices are row positions into ``meta``."""
    train, test = np.asarray(fold.train, np.int64), np.asarray(fold.test, np.int64)
    both = np.intersect1d(train, test)
    if both.size:
        raise LeakageError(f"fold {fold.name!r}: {both.size} row(s) in both train and test, "
                           f"e.g. positions {both[:5].tolist()}")
    for col in ("source_id",) if allow_shared_speakers else ("source_id", "speaker"):
        values = meta[col].to_numpy()
        shared = set(values[train]) & set(values[test])
        if shared:
            raise LeakageError(f"fold {fold.name!r}: {len(shared)} {col} value(s) on both sides: "
                               f"{_preview(shared)}")


def validation_split(meta: pd.DataFrame, train_idx: np.ndarray, *, fraction: float = 0.2,
                     seed: int = 0, by: str = "speaker") -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole ``by`` groups of ``train_idx`` for early stopping -> (train_idx, val_idx).

    About ``fraction`` of the groups (rounded, at least 1 and at most all but 1) go to
    validation, so both sides are non-empty whenever the train side has 2+ groups. With fewer
    than 2 distinct ``by`` values it groups by ``source_id`` instead. Deterministic for a seed;
    ValueError when the train side holds a single source recording.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation_split: fraction must be in (0, 1), got {fraction}")
    _check_meta(meta, dict.fromkeys((by, "source_id", "speaker")), "validation_split")
    train_idx = np.asarray(train_idx, np.int64)
    groups = meta[by].to_numpy()[train_idx]
    if len(set(groups)) < 2:
        groups = meta["source_id"].to_numpy()[train_idx]
    n = len(set(groups))
    if n < 2:
        raise ValueError(f"validation_split: the {len(train_idx)} train rows come from {n} source "
                         "recording(s); need at least 2 to hold out a validation set")
    n_val = min(max(round(fraction * n), 1), n - 1)
    tr, va = next(GroupShuffleSplit(1, test_size=n_val, random_state=seed)
                  .split(train_idx, groups=groups.astype(str)))
    return train_idx[tr], train_idx[va]
