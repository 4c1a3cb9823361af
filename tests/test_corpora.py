"""Corpus naming schemes, detection and manifests, on real-looking names (no audio needed)."""

import json

import pyarrow as pa
import pytest

from ser_ray.corpora import (CORPORA, UnrecognisedName, Utterance, detect_corpus, get_corpus,
                             load_manifest, utterance_from_fields)
from ser_ray.labels import CANONICAL_LABELS


def reader(root):
    """read_text over a local directory, FileNotFoundError when absent (as the real readers do)."""
    return lambda rel: (root / rel).read_text()


def parse(corpus, relpath, read_text=None):
    utt = get_corpus(corpus).parse(relpath, read_text)
    json.dumps(utt.extra)  # extra must be JSON-serialisable for the manifest's extra column
    return utt


# --- registry ---------------------------------------------------------------------------------

def test_registry_and_aliases():
    assert set(CORPORA) == {"ravdess", "cremad", "tess", "savee", "emodb", "iemocap"}
    assert get_corpus("crema-d").name == "cremad"
    assert get_corpus("RAVDESS").name == "ravdess"
    assert get_corpus("iemocap") is not get_corpus("iemocap")  # caches are per instance
    with pytest.raises(ValueError, match="unknown corpus 'timit'.*emodb"):
        get_corpus("timit")


# --- RAVDESS ----------------------------------------------------------------------------------

def test_ravdess_speech():
    u = parse("ravdess", "Actor_12/03-01-05-02-01-02-12.wav")
    assert u == Utterance("ravdess:12", "female", "05", "angry", {
        "modality": "audio-only", "vocal_channel": "speech", "intensity": "strong",
        "statement": 1, "repetition": 2})


def test_ravdess_song_odd_actor_kaggle_nesting_and_upper_case_extension():
    u = parse("ravdess", "ravdess/Audio_Song_Actors_01-24/Actor_01/03-02-06-01-02-01-01.WAV")
    assert (u.speaker, u.sex, u.label, u.extra["vocal_channel"]) == ("ravdess:01", "male", "fearful", "song")


@pytest.mark.parametrize("code, label", [("01", "neutral"), ("02", "calm"), ("03", "happy"), ("04", "sad"),
                                         ("07", "disgust"), ("08", "surprised")])
def test_ravdess_emotion_codes(code, label):
    assert parse("ravdess", f"03-01-{code}-01-01-01-24.wav").label == label


@pytest.mark.parametrize("name", [
    "03-01-09-01-01-01-01.wav",   # no emotion 09
    "03-01-05-01-01-01-25.wav",   # 24 actors
    "03-01-05-01-01-01.wav",      # a field missing
    "03-01-05-01-01-01-01.txt",   # not audio
    "Actor_01/notes.wav",
])
def test_ravdess_rejects(name):
    with pytest.raises(UnrecognisedName, match="ravdess.*MM-VV-EE"):
        parse("ravdess", name)


# --- CREMA-D ----------------------------------------------------------------------------------

def test_cremad_without_demographics():
    u = parse("cremad", "AudioWAV/1001_DFA_ANG_XX.wav")
    assert u == Utterance("cremad:1001", None, "ANG", "angry", {"sentence": "DFA", "level": "unspecified"})
    assert parse("cremad", "1091_TSI_FEA_HI.wav").extra["level"] == "high"


def test_cremad_sex_from_demographics(tmp_path):
    (tmp_path / "VideoDemographics.csv").write_text(
        "\ufeffActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
        "1002,21,Female,Caucasian,Not Hispanic\n")
    corpus = get_corpus("cremad")
    assert corpus.parse("AudioWAV/1001_IEO_HAP_LO.wav", reader(tmp_path)).sex == "male"
    u = corpus.parse("AudioWAV/1002_IEO_NEU_MD.wav", reader(tmp_path))
    assert (u.sex, u.label, u.extra["level"]) == ("female", "neutral", "medium")
    assert corpus.parse("AudioWAV/1003_IEO_SAD_MD.wav", reader(tmp_path)).sex is None  # not listed


def test_cremad_demographics_absent(tmp_path):
    assert parse("cremad", "AudioWAV/1001_DFA_DIS_XX.wav", reader(tmp_path)).sex is None


@pytest.mark.parametrize("name", ["1001_DFA_CAL_XX.wav", "1001_DFA_ANG.wav", "101_DFA_ANG_XX.wav",
                                  "1001_DFA_ANG_ZZ.wav"])
def test_cremad_rejects(name):
    with pytest.raises(UnrecognisedName, match="AAAA_SSS_EEE_LL"):
        parse("cremad", name)


def test_cremad_metadata():
    corpus = get_corpus("cremad")
    assert corpus.is_metadata("VideoDemographics.csv")
    assert corpus.is_metadata("processedResults/tabulatedVotes.csv")
    assert corpus.is_metadata("VideoFlash/1001_DFA_ANG_XX.flv")
    assert not corpus.is_metadata("AudioWAV/1001_DFA_ANG_XX.wav")


# --- TESS -------------------------------------------------------------------------------------

def test_tess_older_and_younger():
    assert parse("tess", "OAF_angry/OAF_back_angry.wav") == Utterance(
        "tess:OAF", "female", "angry", "angry", {"word": "back"})
    u = parse("tess", "YAF_fear/YAF_youth_fear.wav")
    assert (u.speaker, u.label, u.extra["word"]) == ("tess:YAF", "fearful", "youth")


def test_tess_quirks():
    # Kaggle parent folders and folder case; "ps" is pleasant surprise.
    u = parse("tess", "TESS Toronto emotional speech set data/OAF_Pleasant_surprise/OAF_bite_ps.wav")
    assert (u.speaker, u.raw_label, u.label) == ("tess:OAF", "ps", "surprised")
    # One distributed file says "OA_" for "OAF_": same speaker.
    assert parse("tess", "OAF_neutral/OA_bite_neutral.wav").speaker == "tess:OAF"
    assert parse("tess", "yaf_sad/YAF_DOOR_SAD.WAV").label == "sad"


@pytest.mark.parametrize("name", ["OAF_back_bored.wav", "XAF_back_angry.wav", "OAF_angry.wav"])
def test_tess_rejects(name):
    with pytest.raises(UnrecognisedName, match="tess"):
        parse("tess", name)


# --- SAVEE ------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, label", [("a", "angry"), ("d", "disgust"), ("f", "fearful"), ("h", "happy"),
                                         ("n", "neutral"), ("sa", "sad"), ("su", "surprised")])
def test_savee_codes_both_layouts(code, label):
    flat = parse("savee", f"ALL/JK_{code}07.wav")
    nested = parse("savee", f"AudioData/JK/{code}07.wav")
    assert flat == nested == Utterance("savee:JK", "male", code, label, {"sentence": 7})


def test_savee_case_changes():
    assert parse("savee", "kl/SA15.WAV").speaker == "savee:KL"
    assert parse("savee", "dc_Su01.wav").label == "surprised"


@pytest.mark.parametrize("name", ["DC_s01.wav", "XX_a01.wav", "a01.wav", "AudioData/a01.wav", "DC_a1.wav"])
def test_savee_rejects(name):
    with pytest.raises(UnrecognisedName, match="savee"):
        parse("savee", name)


# --- EmoDB ------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, label", [("W", "angry"), ("L", "boredom"), ("E", "disgust"), ("A", "fearful"),
                                         ("F", "happy"), ("T", "sad"), ("N", "neutral")])
def test_emodb_codes(code, label):
    assert parse("emodb", f"wav/03a01{code}a.wav").label == label


def test_emodb_speakers_and_extra():
    assert parse("emodb", "wav/03a01Fa.wav") == Utterance(
        "emodb:03", "male", "F", "happy", {"text": "a01", "version": "a"})
    for spk in ("03", "10", "11", "12", "15"):
        assert parse("emodb", f"{spk}b10Wc.wav").sex == "male"
    for spk in ("08", "09", "13", "14", "16"):
        assert parse("emodb", f"{spk}b10Wc.wav").sex == "female"
    # A lower-cased copy still parses: the field's position, not its case, identifies it.
    assert parse("emodb", "emo-db/WAV/16b10wb.wav").raw_label == "W"


@pytest.mark.parametrize("name", ["01a01Fa.wav", "03a01Xa.wav", "03c01Fa.wav", "03a01F.wav"])
def test_emodb_rejects(name):
    with pytest.raises(UnrecognisedName, match="SSTTTEV"):
        parse("emodb", name)


def test_emodb_metadata():
    corpus = get_corpus("emodb")
    assert corpus.is_metadata("erkennung.txt") and corpus.is_metadata("erklaerung.txt")
    assert corpus.is_metadata("lablaut/03a01Fa.lablaut")
    assert corpus.is_metadata("silb/03a01Fa.silb")
    assert not corpus.is_metadata("wav/03a01Fa.wav")


# --- IEMOCAP ----------------------------------------------------------------------------------

LABELS_IMPRO = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E2:\tNeutral;\t()
A-E3:\tval 3; act 2; dom  2;\t()

[10.0100 - 11.3925]\tSes01F_impro01_M013\texc\t[3.5000, 3.0000, 3.0000]
[12.0 - 13.5]\tSes01F_impro01_F001\txxx\t[2.0000, 2.5000, 2.0000]
"""
LABELS_SCRIPT = "[1.0 - 2.0]\tSes05M_script02_2_F014\tfru\t[2.0, 3.5, 3.5]\n"


@pytest.fixture
def iemocap_root(tmp_path):
    for session, dialog, text in [(1, "Ses01F_impro01", LABELS_IMPRO), (5, "Ses05M_script02_2", LABELS_SCRIPT)]:
        d = tmp_path / "IEMOCAP_full_release" / f"Session{session}" / "dialog" / "EmoEvaluation"
        d.mkdir(parents=True)
        (d / f"{dialog}.txt").write_text(text)
    return tmp_path


WAV = "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/{}.wav"


def test_iemocap_improvised(iemocap_root):
    u = parse("iemocap", WAV.format("Ses01F_impro01_M013"), reader(iemocap_root))
    assert u == Utterance("iemocap:Ses01M", "male", "exc", "excited", {
        "session": 1, "dialog": "Ses01F_impro01", "improvised": True, "start_s": 10.01, "end_s": 11.3925,
        "valence": 3.5, "arousal": 3.0, "dominance": 3.0})
    u = parse("iemocap", WAV.format("Ses01F_impro01_F000"), reader(iemocap_root))
    assert (u.speaker, u.sex, u.label) == ("iemocap:Ses01F", "female", "neutral")


def test_iemocap_scripted_session5(iemocap_root):
    u = parse("iemocap", "IEMOCAP_full_release/Session5/sentences/wav/Ses05M_script02_2/Ses05M_script02_2_F014.wav",
              reader(iemocap_root))
    assert (u.speaker, u.sex, u.label, u.extra["improvised"], u.extra["session"]) == (
        "iemocap:Ses05F", "female", "frustrated", False, 5)


def test_iemocap_no_agreement_has_no_label(iemocap_root):
    u = parse("iemocap", WAV.format("Ses01F_impro01_F001"), reader(iemocap_root))
    assert (u.raw_label, u.label) == ("xxx", None)


def test_iemocap_label_file_read_once_per_dialog(iemocap_root):
    reads = []

    def counting(rel):
        reads.append(rel)
        return reader(iemocap_root)(rel)

    corpus = get_corpus("iemocap")
    for utt in ("Ses01F_impro01_F000", "Ses01F_impro01_M013", "Ses01F_impro01_F001"):
        corpus.parse(WAV.format(utt), counting)
    assert reads == ["IEMOCAP_full_release/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"]


def test_iemocap_missing_line_and_missing_file(iemocap_root):
    with pytest.raises(UnrecognisedName, match="no line for 'Ses01F_impro01_M099'"):
        parse("iemocap", WAV.format("Ses01F_impro01_M099"), reader(iemocap_root))
    with pytest.raises(UnrecognisedName, match="label file .*Ses02F_impro03.txt' not found"):
        parse("iemocap", "IEMOCAP_full_release/Session2/sentences/wav/Ses02F_impro03/Ses02F_impro03_F000.wav",
              reader(iemocap_root))


def test_iemocap_layout_errors(iemocap_root):
    corpus = get_corpus("iemocap")
    with pytest.raises(UnrecognisedName, match="SessionN/sentences/wav"):
        corpus.parse("Ses01F_impro01/Ses01F_impro01_F000.wav", reader(iemocap_root))
    with pytest.raises(UnrecognisedName, match="Ses01F_impro01_M013"):
        corpus.parse("Session1/sentences/wav/Ses01F_impro01/foo.wav", reader(iemocap_root))
    with pytest.raises(ValueError, match="needs read_text"):
        corpus.parse(WAV.format("Ses01F_impro01_F000"))
    assert corpus.matches(WAV.format("Ses01F_impro01_F000"))  # no labels needed to match
    assert not corpus.matches("Session1/dialog/wav/Ses01F_impro01.wav")


def test_iemocap_metadata():
    corpus = get_corpus("iemocap")
    for path in ["Session1/dialog/EmoEvaluation/Ses01F_impro01.txt", "Session1/dialog/avi/DivX/Ses01F_impro01.avi",
                 "Session1/dialog/wav/Ses01F_impro01.wav", "Session1/dialog/transcriptions/Ses01F_impro01.txt",
                 "Session1/sentences/ForcedAlignment/Ses01F_impro01/Ses01F_impro01_F000.wdseg",
                 "README.txt", "Documentation/IEMOCAP.pdf"]:
        assert corpus.is_metadata(path), path
    assert not corpus.is_metadata(WAV.format("Ses01F_impro01_F000"))


# --- metadata common to every corpus ----------------------------------------------------------

@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_common_metadata(corpus):
    c = get_corpus(corpus)
    for path in ["README.md", "LICENSE", "docs/paper.pdf", "__MACOSX/x/03a01Fa.wav", "wav/._03a01Fa.wav",
                 "wav/.DS_Store"]:
        assert c.is_metadata(path), path


def test_rejection_message_names_path_and_pattern():
    with pytest.raises(UnrecognisedName) as err:
        parse("emodb", "wav/hello.wav")
    assert "'wav/hello.wav'" in str(err.value) and "03a01Fa" in str(err.value)


def test_every_parsed_label_is_canonical():
    examples = {"ravdess": "03-01-08-01-01-01-01.wav", "cremad": "1001_DFA_FEA_XX.wav", "tess": "YAF_dog_ps.wav",
                "savee": "DC_su01.wav", "emodb": "03a01La.wav"}
    for corpus, name in examples.items():
        assert parse(corpus, name).label in CANONICAL_LABELS


# --- detection --------------------------------------------------------------------------------

LISTINGS = {
    "ravdess": ["audio_speech_actors_01-24/Actor_01/03-01-01-01-01-01-01.wav",
                "audio_speech_actors_01-24/Actor_02/03-01-05-02-01-02-02.wav",
                "Actor_03/03-02-03-01-01-01-03.wav", "README.md"],
    "cremad": ["AudioWAV/1001_DFA_ANG_XX.wav", "AudioWAV/1002_IEO_HAP_HI.wav", "VideoDemographics.csv",
               "finishedResponses.csv"],
    "tess": ["TESS Toronto emotional speech set data/OAF_angry/OAF_back_angry.wav",
             "TESS Toronto emotional speech set data/YAF_pleasant_surprised/YAF_back_ps.wav",
             "tess toronto emotional speech set data/TESS Toronto emotional speech set data/OAF_Fear/OA_bite_fear.wav"],
    "savee": ["ALL/DC_a01.wav", "ALL/JE_sa02.wav", "AudioData/KL/su03.wav", "AudioData/JK/n30.wav"],
    "emodb": ["wav/03a01Fa.wav", "wav/16b10Wb.wav", "erkennung.txt", "erklaerung.txt", "lablaut/03a01Fa.lablaut"],
    "iemocap": ["IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav",
                "IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M001.wav",
                "IEMOCAP_full_release/Session1/dialog/wav/Ses01F_impro01.wav",
                "IEMOCAP_full_release/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"],
}


@pytest.mark.parametrize("corpus", sorted(LISTINGS))
def test_detect_corpus(corpus):
    assert detect_corpus(LISTINGS[corpus]) == corpus


def test_detect_corpus_tolerates_a_minority_of_odd_files():
    listing = LISTINGS["savee"] + ["ALL/stray.wav"]
    assert detect_corpus(listing) == "savee"


def test_detect_corpus_failure_lists_scores():
    mixed = ["a.wav", "b.wav", "c.flac", "wav/03a01Fa.wav"]
    with pytest.raises(ValueError, match=r"4 audio files .*emodb 25%.*ravdess 0%"):
        detect_corpus(mixed)
    with pytest.raises(ValueError, match="no audio files"):
        detect_corpus(["README.md", "wav/._03a01Fa.wav"])


# --- manifests --------------------------------------------------------------------------------

def test_load_manifest_paths_and_fields():
    table = pa.table({
        "path": ["clips/a.wav", "./b.wav", "/data/c.wav", "s3://other/d.wav"],
        "label": ["Angry", "joy", "contempt", "NEU"],
        "speaker": ["s1", None, "s2", "ravdess:12"],
        "sex": ["F", "male", None, "x"],
        "take": [1, 2, 3, 4],
        "room": ["a", "b", "c", "d"],
    })
    rows = load_manifest(table, "/corpus/root/")
    assert [uri for uri, _ in rows] == ["/corpus/root/clips/a.wav", "/corpus/root/b.wav", "/data/c.wav",
                                        "s3://other/d.wav"]
    utts = [u for _, u in rows]
    assert utts[0] == Utterance("manifest:s1", "female", "Angry", "angry", {"take": 1, "room": "a"})
    assert (utts[1].speaker, utts[1].sex, utts[1].label) == ("manifest:unknown", "male", "happy")
    assert (utts[2].raw_label, utts[2].label, utts[2].sex) == ("contempt", None, None)
    assert utts[3].speaker == "ravdess:12"


def test_load_manifest_aliases_and_s3_base():
    table = pa.table({"File": ["x/1.flac"], "emotion": ["sad"]})
    [(uri, utt)] = load_manifest(table, "s3://bucket/prefix")
    assert uri == "s3://bucket/prefix/x/1.flac"
    assert (utt.label, utt.extra) == ("sad", {})


def test_load_manifest_missing_columns():
    with pytest.raises(ValueError, match=r"path column.*label column.*\['path', 'mood'\]"):
        load_manifest(pa.table({"path": ["a.wav"], "mood": ["sad"]}), "/r")
    with pytest.raises(ValueError, match="row 1"):
        load_manifest(pa.table({"wav": ["a.wav", None], "label": ["sad", "sad"]}), "/r")


def test_utterance_from_sidecar_fields():
    u = utterance_from_fields({"label": "ps", "speaker": 7, "sex": "Female", "path": "x.wav", "lang": "en"})
    assert u == Utterance("sidecar:7", "female", "ps", "surprised", {"lang": "en"})
    with pytest.raises(ValueError, match="no label field"):
        utterance_from_fields({"path": "x.wav"})
