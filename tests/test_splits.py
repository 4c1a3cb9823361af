"""Split protocols: no source recording (and, except random-kfold, no speaker) crosses a fold."""

import numpy as np
import pandas as pd
import pytest

from ser_ray.learn.splits import (PROTOCOLS, Fold, LeakageError, check_fold, make_folds,
                                  validation_split)


def make_meta(seed=0) -> pd.DataFrame:
    """Two corpora, 10 speakers, 1-3 blocks per source recording, imbalanced labels; corpus "a"
    alone has "surprised", corpus "b" alone has "calm". Rows shuffled."""
    rng = np.random.default_rng(seed)
    rows = []
    for corpus, n_spk, labels, p in [("a", 6, ["angry", "sad", "neutral", "surprised"], [.5, .2, .2, .1]),
                                     ("b", 4, ["angry", "sad", "neutral", "calm"], [.4, .3, .2, .1])]:
        for s in range(n_spk):
            speaker = f"{corpus}:{s:02d}"
            for r in range(12):
                label = labels[r % len(labels)] if r < len(labels) else rng.choice(labels, p=p)
                source = f"{speaker}/rec{r}"
                for b in range(rng.integers(1, 4)):
                    rows.append(dict(utterance_id=source, source_id=source, speaker=speaker,
                                     corpus=corpus, sex="female", label=label, block=b))
    meta = pd.DataFrame(rows)
    return meta.sample(frac=1, random_state=seed).reset_index(drop=True)


META = make_meta()
OPTIONS = {
    "random-kfold": dict(folds=5),
    "speaker-kfold": dict(folds=4),
    "loso": {},
    "explicit": dict(test_speakers=["a:01", "b:02"]),
    "cross-corpus": dict(train_corpora=["a"], test_corpus="b"),
    "leave-one-corpus-out": {},
}


def shared(fold, col, meta=META):
    values = meta[col].to_numpy()
    return set(values[fold.train]) & set(values[fold.test])


def test_every_protocol_is_tested():
    assert set(OPTIONS) == set(PROTOCOLS)


@pytest.mark.filterwarnings("ignore:cross-corpus")
@pytest.mark.parametrize("protocol", sorted(OPTIONS))
def test_no_source_crosses_and_speakers_only_where_allowed(protocol):
    folds = make_folds(META, protocol, seed=1, **OPTIONS[protocol])
    assert [f.index for f in folds] == list(range(len(folds)))
    for f in folds:
        assert f.train.dtype == np.int64 and len(f.train) and len(f.test)
        assert not set(f.train) & set(f.test)
        assert not shared(f, "source_id")
        if not PROTOCOLS[protocol].shares_speakers:
            assert not shared(f, "speaker")
            assert not set(f.train_speakers) & set(f.test_speakers)
        assert f.test_speakers == tuple(sorted(set(META.speaker[f.test])))


@pytest.mark.parametrize("protocol", ["random-kfold", "speaker-kfold", "loso"])
def test_kfold_protocols_test_every_row_once(protocol):
    assert PROTOCOLS[protocol].covers_all
    folds = make_folds(META, protocol, **OPTIONS[protocol])
    assert np.array_equal(np.sort(np.concatenate([f.test for f in folds])), np.arange(len(META)))
    for f in folds:
        assert np.array_equal(np.sort(np.concatenate([f.train, f.test])), np.arange(len(META)))


def test_kfold_counts_and_names():
    assert [f.name for f in make_folds(META, "random-kfold", folds=5)] == [f"fold{i}" for i in range(5)]
    assert len(make_folds(META, "speaker-kfold", folds=4)) == 4


def test_random_kfold_shares_speakers_unlike_speaker_kfold():
    assert PROTOCOLS["random-kfold"].shares_speakers
    assert not any(PROTOCOLS[p].shares_speakers for p in PROTOCOLS if p != "random-kfold")
    assert all(shared(f, "speaker") for f in make_folds(META, "random-kfold", folds=5))


def test_random_kfold_is_stratified():
    overall = META.label.value_counts(normalize=True)
    for f in make_folds(META, "random-kfold", folds=3):
        part = META.label.iloc[f.test].value_counts(normalize=True)
        assert (part.reindex(overall.index, fill_value=0) - overall).abs().max() < 0.1


@pytest.mark.parametrize("protocol", ["random-kfold", "speaker-kfold"])
def test_deterministic_for_a_seed(protocol):
    def tests(seed, meta=META):
        ids = meta.index.to_numpy()
        return [sorted(ids[f.test]) for f in make_folds(meta, protocol, seed=seed, **OPTIONS[protocol])]

    assert tests(3) == tests(3)
    if protocol == "random-kfold":  # see make_folds: for speaker-kfold the seed only breaks ties
        assert tests(3) != tests(4)
    # Row order does not change which rows are tested together.
    shuffled = META.sample(frac=1, random_state=9)
    assert tests(3) == tests(3, shuffled)


def test_loso_one_fold_per_speaker_in_sorted_order():
    folds = make_folds(META, "loso")
    speakers = sorted(META.speaker.unique())
    assert [f.name for f in folds] == [f"speaker={s}" for s in speakers]
    assert [f.test_speakers for f in folds] == [(s,) for s in speakers]


def test_explicit_tests_exactly_the_given_speakers():
    (fold,) = make_folds(META, "explicit", test_speakers=["b:02", "a:01"])
    assert fold.test_speakers == ("a:01", "b:02")
    assert set(fold.train_speakers) == set(META.speaker) - {"a:01", "b:02"}
    assert len(fold.train) + len(fold.test) == len(META)


def test_cross_corpus_drops_one_sided_labels_with_counts():
    with pytest.warns(UserWarning, match="dropped"):
        (fold,) = make_folds(META, "cross-corpus", train_corpora="a", test_corpus="b")
    assert fold.name == "a->b"
    assert set(META.corpus[fold.train]) == {"a"} and set(META.corpus[fold.test]) == {"b"}
    assert set(META.label[fold.train]) == set(META.label[fold.test]) == {"angry", "sad", "neutral"}
    expected = {lab: int((META.label == lab).sum()) for lab in ("calm", "surprised")}
    assert fold.dropped == expected
    assert len(fold.train) + len(fold.test) + sum(fold.dropped.values()) == len(META)


def test_other_protocols_drop_nothing():
    assert all(f.dropped == {} for f in make_folds(META, "speaker-kfold", folds=3))


def test_non_default_index_gives_positions():
    meta = META.set_index(META.index * 10 + 7)
    for f in make_folds(meta, "speaker-kfold", folds=3):
        assert f.test.max() < len(meta)
        assert not shared(f, "speaker", meta)


# --------------------------------------------------------------------------- check_fold
def leaky(train, test):
    return Fold(0, "hand-made", np.array(train), np.array(test), (), ())


def test_check_fold_raises_on_leaks():
    src = META.source_id.to_numpy()
    spk = META.speaker.to_numpy()
    dup = next(s for s in pd.unique(src) if (src == s).sum() > 1)
    i, j = np.flatnonzero(src == dup)[:2]
    with pytest.raises(LeakageError, match="source_id"):
        check_fold(META, leaky([i], [j]), allow_shared_speakers=True)
    # Two recordings of one speaker: a speaker leak only.
    a, b = (np.flatnonzero(src == s)[0] for s in pd.unique(src[spk == spk[i]])[:2])
    with pytest.raises(LeakageError, match="speaker"):
        check_fold(META, leaky([a], [b]))
    check_fold(META, leaky([a], [b]), allow_shared_speakers=True)
    with pytest.raises(LeakageError, match="both train and test"):
        check_fold(META, leaky([a, b], [b]), allow_shared_speakers=True)
    other = np.flatnonzero(spk != spk[i])[0]
    check_fold(META, leaky([i, j], [other]))


def test_leakage_error_is_a_value_error():
    assert issubclass(LeakageError, ValueError)


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("meta, protocol, kwargs, match", [
    (META, "stratified", {}, r"unknown split protocol 'stratified'.*speaker-kfold.*loso"),
    (META, "speaker-kfold", dict(folds=11), r"folds=11 but meta has only 10 speakers.*loso"),
    (META, "speaker-kfold", dict(folds=1), r"folds must be an integer >= 2"),
    (META.drop(columns="source_id"), "loso", {}, r"lacks column\(s\) \['source_id'\]"),
    (META.drop(columns="corpus"), "cross-corpus", dict(train_corpora="a", test_corpus="b"),
     r"lacks column\(s\) \['corpus'\]"),
    (META, "explicit", dict(test_speakers=["a:01", "zz:99"]), r"zz:99 are not in meta.*a:00"),
    (META, "explicit", {}, r"pass test_speakers"),
    (META, "explicit", dict(test_speakers=list(META.speaker.unique())), r"every speaker"),
    (META, "cross-corpus", dict(train_corpora=["a", "c"], test_corpus="d"), r"corpora c, d are not in meta"),
    (META, "cross-corpus", dict(train_corpora="a"), r"pass train_corpora"),
    (META, "cross-corpus", dict(train_corpora="a", test_corpus="a"), r"also in train_corpora"),
    (META[META.speaker == "a:00"], "loso", {}, r"at least 2 speakers"),
    (META.assign(speaker=lambda m: np.where(m.index % 2, "a:00", "a:01")), "loso", {},
     r"several speakers"),
    (META.assign(label=None), "random-kfold", {}, r"'label' has \d+ missing"),
])
def test_bad_inputs_raise_clear_errors(meta, protocol, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_folds(meta, protocol, **kwargs)


@pytest.mark.filterwarnings("ignore:cross-corpus")
def test_leave_one_corpus_out_holds_each_corpus_out_in_turn():
    folds = make_folds(META, "leave-one-corpus-out")
    assert [f.name for f in folds] == ["held out=a", "held out=b"]
    for f, held in zip(folds, "ab"):
        assert set(META.corpus[f.test]) == {held} and held not in set(META.corpus[f.train])
        # labels on one side only (a's surprised, b's calm) are dropped and counted
        assert set(META.label[f.test]) == set(META.label[f.train]) == {"angry", "sad", "neutral"}
        assert set(f.dropped) == {"surprised", "calm"}


def test_cross_corpus_without_shared_labels():
    meta = META[(META.corpus == "a") | (META.label == "calm")]
    with pytest.raises(ValueError, match="no label occurs in both"):
        make_folds(meta, "cross-corpus", train_corpora="a", test_corpus="b")


# --------------------------------------------------------------------------- validation_split
def test_validation_split_holds_out_whole_speakers():
    fold = make_folds(META, "speaker-kfold", folds=4)[0]
    tr, va = validation_split(META, fold.train, fraction=0.25, seed=0)
    assert len(tr) and len(va)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.sort(fold.train))
    assert not set(META.speaker[tr]) & set(META.speaker[va])
    assert META.speaker[va].nunique() == round(0.25 * META.speaker[fold.train].nunique())
    again = validation_split(META, fold.train, fraction=0.25, seed=0)
    assert np.array_equal(again[1], va)
    assert any(not np.array_equal(validation_split(META, fold.train, seed=s)[1], va) for s in (1, 2, 3))


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_validation_split_never_empty_with_two_groups(fraction):
    two = np.flatnonzero(META.speaker.isin(["a:00", "b:00"]).to_numpy())
    tr, va = validation_split(META, two, fraction=fraction)
    assert META.speaker[tr].nunique() == 1 and META.speaker[va].nunique() == 1
    assert set(META.speaker[tr]) != set(META.speaker[va])


def test_validation_split_falls_back_to_source_id():
    one = np.flatnonzero((META.speaker == "a:00").to_numpy())
    tr, va = validation_split(META, one, fraction=0.25)
    assert len(tr) and len(va)
    assert not set(META.source_id[tr]) & set(META.source_id[va])
    single = np.flatnonzero((META.source_id == META.source_id[0]).to_numpy())
    with pytest.raises(ValueError, match="need at least 2"):
        validation_split(META, single)
    with pytest.raises(ValueError, match="fraction"):
        validation_split(META, one, fraction=1.0)
