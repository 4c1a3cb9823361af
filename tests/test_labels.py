"""Label sets and label normalisation."""

import pytest

from ser_ray.labels import CANONICAL_LABELS, LABEL_SETS, LabelSet, get_label_set, normalise_label


def test_canonical_labels():
    assert CANONICAL_LABELS == ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust",
                                "surprised", "boredom", "excited", "frustrated")


def test_every_required_set_is_registered_with_valid_labels():
    assert set(LABEL_SETS) == {"ravdess8", "merged8", "ekman7", "iemocap4", "iemocap4-aesn", "gender16", "all"}
    for name, ls in LABEL_SETS.items():
        assert ls.name == name
        assert len(set(ls.labels)) == len(ls.labels)
        for canonical in ls.mapping:
            assert ls.apply(canonical, "female") in ls.labels


@pytest.mark.parametrize("name, labels", [
    ("ravdess8", {"neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"}),
    ("merged8", {"neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"}),
    ("ekman7", {"calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"}),
    ("iemocap4", {"angry", "happy", "sad", "neutral"}),
    ("iemocap4-aesn", {"angry", "excited", "sad", "neutral"}),
    ("all", set(CANONICAL_LABELS)),
])
def test_set_members(name, labels):
    assert set(get_label_set(name).labels) == labels


def test_identity_sets_and_outside_labels():
    r8 = get_label_set("ravdess8")
    assert r8.apply("calm", None) == "calm"
    assert r8.apply("boredom", None) is None
    assert r8.apply(None, "male") is None
    assert get_label_set("ekman7").apply("neutral", None) is None
    assert get_label_set("merged8").apply("excited", None) is None
    assert get_label_set("all").apply("frustrated", None) == "frustrated"


def test_iemocap4_folds_excited_into_happy():
    ls = get_label_set("iemocap4")
    assert ls.apply("excited", None) == "happy"
    assert ls.apply("happy", None) == "happy"
    assert ls.apply("frustrated", None) is None
    assert ls.apply("surprised", None) is None


def test_iemocap4_aesn_keeps_excited_and_drops_happy():
    ls = get_label_set("iemocap4-aesn")
    assert ls.apply("excited", None) == "excited"
    assert ls.apply("happy", None) is None


def test_gender16_needs_sex():
    ls = get_label_set("gender16")
    assert ls.needs_sex and len(ls.labels) == 16
    assert ls.labels[0] == "female_angry" and ls.labels[-1] == "male_surprised"
    assert ls.apply("angry", "female") == "female_angry"
    assert ls.apply("calm", "male") == "male_calm"
    assert ls.apply("angry", None) is None
    assert ls.apply("boredom", "male") is None
    assert not get_label_set("merged8").needs_sex


def test_get_label_set_error_names_choices():
    with pytest.raises(ValueError, match="unknown label set 'iemocap5'.*gender16.*iemocap4-aesn"):
        get_label_set("iemocap5")


def test_label_set_rejects_non_canonical_mapping():
    with pytest.raises(ValueError, match="joy"):
        LabelSet("bad", ("joy",), {"joy": "joy"})


@pytest.mark.parametrize("raw, expected", [
    ("ANG", "angry"), ("anger", "angry"), ("Angry", "angry"), ("wut", "angry"),
    ("hap", "happy"), ("Happiness", "happy"), ("joy", "happy"),
    ("exc", "excited"), ("fru", "frustrated"), ("NEU", "neutral"), ("neutral", "neutral"),
    ("sad", "sad"), ("sadness", "sad"), ("sa", "sad"),
    ("FEA", "fearful"), ("fear", "fearful"), ("fearful", "fearful"),
    ("dis", "disgust"), ("DISGUST", "disgust"),
    ("sur", "surprised"), ("surprise", "surprised"), ("ps", "surprised"), ("su", "surprised"),
    ("pleasant_surprise", "surprised"), ("Pleasant Surprise", "surprised"), ("pleasant-surprised", "surprised"),
    ("calm", "calm"), ("bor", "boredom"), ("Boredom", "boredom"), (" angry ", "angry"),
])
def test_normalise_label(raw, expected):
    assert normalise_label(raw) == expected


@pytest.mark.parametrize("raw", ["xxx", "oth", "", "contempt", None, "a", "05"])
def test_normalise_label_unknown(raw):
    assert normalise_label(raw) is None


def test_every_canonical_label_normalises_to_itself():
    assert [normalise_label(label) for label in CANONICAL_LABELS] == list(CANONICAL_LABELS)
