"""Audio + transcript fusion with tiny random models built here (a Whisper encoder, a Whisper
ASR with a byte-level tokenizer, a BERT): the ``transcript`` and ``text`` extractors (Whisper
once per clip for both), then through the CLI: prepare encoder, transcript and text on Ray,
cv, train and evaluate ``audio_text`` on ``encoder,text``, score a backlog with it (the run
record names every model its features come from), and late fusion of two saved models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import ser_ray_cli
from encoder_helpers import make_tiny_bert, make_tiny_encoder, make_tiny_whisper_asr

EMOTIONS = ["neutral", "happy", "sad", "angry"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion-models")
    return {"asr": make_tiny_whisper_asr(root / "asr"), "bert": make_tiny_bert(root / "bert"),
            "whisper": make_tiny_encoder("whisper", root / "whisper")}


def test_transcript_rows_round_trip_text_and_language():
    from ser_ray.features.text import decode, encode

    for text, lang in [("Der Lappen liegt auf dem Eisschrank.", "de"), ("", None), ("ß ü", "de")]:
        assert decode(encode(text, lang)) == (text, lang)


def test_transcript_and_text_run_whisper_once_per_clip(tiny, monkeypatch):
    from ser_ray.features import get_extractor
    from ser_ray.features import text as text_mod
    from ser_ray.transcribe import Transcriber

    calls = []
    real = Transcriber.transcribe

    def counting(self, clips):
        calls.append(len(clips))
        return real(self, clips)

    monkeypatch.setattr(Transcriber, "transcribe", counting)
    text_mod._MEMO.clear()
    common = {"asr": str(tiny["asr"]), "max_new_tokens": 8}
    tr = get_extractor("transcript", **common)
    tx = get_extractor("text", text_model=str(tiny["bert"]), **common)
    rng = np.random.default_rng(0)
    ys = [rng.normal(0, 0.1, 16000 + 800 * k).astype(np.float32) for k in range(3)]
    rows = tr.many(ys, 16000)
    emb = tx.many(ys + [ys[0]], 16000)
    assert calls == [3]  # text found every clip's transcript in the memo
    assert [a.shape for a in emb] == [(32,)] * 4 and np.allclose(emb[0], emb[3])
    a, b = tx.embed(["der lappen", "liegt auf dem eisschrank."])  # a random Whisper's texts
    assert not np.allclose(a, b)                                   # may all be alike
    texts = [text_mod.decode(r) for r in rows]
    assert all(lang in ("en", "de") for _, lang in texts)
    # the embedding is the text encoder's mean over the transcript's tokens
    np.testing.assert_allclose(emb[1], tx.embed([texts[1][0]])[0], rtol=1e-5, atol=1e-6)


def test_text_extractor_errors_are_clear(tiny):
    from ser_ray.features import get_extractor

    with pytest.raises(ValueError, match="set its asr"):
        get_extractor("text", text_model=str(tiny["bert"]))
    with pytest.raises(ValueError, match="set its text_model"):
        get_extractor("text", asr=str(tiny["asr"]))
    bad = get_extractor("text", asr=str(tiny["bert"]), text_model=str(tiny["bert"]))
    with pytest.raises(ValueError, match="Whisper"):
        bad.many([np.zeros(16000, np.float32)], 16000)


def test_audio_text_needs_text_and_an_audio_feature():
    from ser_ray.learn.data import _check_needs
    from ser_ray.models import build_model

    net = build_model("audio_text", (96,), 4)
    assert net[-1].in_features == 96  # the published linear head
    assert build_model("audio_text", (96,), 4, hidden=(16,))[0].out_features == 16
    for features in (["encoder"], ["text"]):
        with pytest.raises(ValueError, match="encoder,text"):
            _check_needs(features, "audio_text")
    _check_needs(["encoder", "text"], "audio_text")


# ------------------------------------------------------------------------- through the CLI
def _cli(*args: str, ok: bool = True):
    return ser_ray_cli(*args, check=ok)  # in this process, on the module's Ray


@pytest.fixture(scope="module")
def world(ray_session, tiny, tmp_path_factory):
    from ser_ray.synth import synthesize_backlog, synthesize_corpus

    root = tmp_path_factory.mktemp("fusion")
    synthesize_corpus("ravdess", root / "corpus", n_speakers=4, per_emotion=2, emotions=EMOTIONS,
                      sr=16000, seed=3)
    synthesize_backlog(root / "calls", n_calls=2, seed=4, minutes=(0.25, 0.3), sr=8000,
                       stereo_share=0.5, bad=False)
    asr = ["--set", f"feature_options.transcript.asr={tiny['asr']}",
           "--set", "feature_options.transcript.max_new_tokens=8",
           "--set", f"feature_options.text.asr={tiny['asr']}",
           "--set", "feature_options.text.max_new_tokens=8",
           "--set", f"feature_options.text.text_model={tiny['bert']}"]
    prep = ["prepare", "--input", str(root / "corpus"), "--corpus", "ravdess", "--features",
            "encoder,transcript,text", "--set", f"feature_options.encoder.model={tiny['whisper']}",
            *asr, "--set", "audio.trim=true", "--no-progress"]
    _cli(*prep, "--output", str(root / "prepared"))
    # the same on Ray Data (where prepare runs batched extractors on GPU actors)
    _cli(*prep, "--set", "engine=data", "--output", str(root / "prepared-data"))
    return root


pipeline = pytest.mark.slow


@pipeline
def test_prepare_writes_transcripts_and_text_embeddings(world):
    from ser_ray.learn.data import load_features
    from ser_ray.features.text import read_prepared_transcripts

    tx = read_prepared_transcripts(world / "prepared")
    assert len(tx) == 32 and tx["utterance_id"].is_unique
    assert tx["language"].isin(["en", "de"]).all() and tx["text"].map(type).eq(str).all()
    data = load_features(world / "prepared", ["encoder", "text"], model="audio_text")
    # encoder's middle state (mean + std of width 32) joined with the 32-wide text embedding
    assert data.X.shape == (32, 64 + 32)
    assert data.feature_config["layers"]["feature"] == "encoder"
    on_data = load_features(world / "prepared-data", ["encoder", "text"], model="audio_text")
    at = {u: i for i, u in enumerate(on_data.meta["utterance_id"])}
    np.testing.assert_allclose(on_data.X[[at[u] for u in data.meta["utterance_id"]]], data.X,
                               rtol=1e-4, atol=1e-5)
    assert read_prepared_transcripts(world / "prepared-data").set_index("utterance_id")["text"].equals(
        tx.set_index("utterance_id")["text"])
    alone = load_features(world / "prepared", ["encoder"], model="logreg")
    order = {u: i for i, u in enumerate(alone.meta["utterance_id"])}
    idx = [order[u] for u in data.meta["utterance_id"]]
    np.testing.assert_array_equal(data.X[:, :64], alone.X[idx])


@pipeline
def test_audio_text_trains_evaluates_and_scores(world, tiny, tmp_path):
    from ser_ray.score import read_calls

    opts = "model_options={epochs: 3, batch_size: 8, hidden: [16]}"
    _cli("cv", "--features", str(world / "prepared"), "--feature-set", "encoder,text",
         "--model", "audio_text", "--protocol", "explicit", "--test-speakers", "ravdess:04",
         "--set", "cpus_per_worker=1", "--set", opts, "--output", str(tmp_path / "cv"))
    m = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert m["model"] == "audio_text" and m["features"] == ["encoder", "text"]
    r = _cli("cv", "--features", str(world / "prepared"), "--feature-set", "encoder",
             "--model", "audio_text", "--output", str(tmp_path / "bad"), ok=False)
    assert r.returncode == 2 and "encoder,text" in r.stderr
    model = tmp_path / "model"
    _cli("train", "--features", str(world / "prepared"), "--feature-set", "encoder,text",
         "--model", "audio_text", "--set", "cpus_per_worker=1", "--set", opts,
         "--output", str(model))
    _cli("evaluate", "--model", str(model), "--features", str(world / "prepared"),
         "--output", str(tmp_path / "eval"))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["folds"][0]["n_test"] == 32
    out = tmp_path / "reports"
    _cli("score", "--model", str(model), "--input", str(world / "calls"), "--output", str(out),
         "--run-date", "2026-12-01", "--no-progress")
    calls = read_calls(out)
    assert len(calls) == 2 and (calls["status"] == "scored").all()
    run = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert run["feature_models"] == {"encoder": {"model": str(tiny["whisper"])},
                                     "text": {"asr": str(tiny["asr"]),
                                              "text_model": str(tiny["bert"])}}


@pipeline
def test_late_fusion_of_two_saved_models_evaluates(world, tmp_path):
    from ser_ray.learn.evaluate import evaluate_model

    models = {}
    for feature, model in (("encoder", "logreg"), ("text", "logreg")):
        models[feature] = tmp_path / f"m-{feature}"
        _cli("train", "--features", str(world / "prepared"), "--feature-set", feature,
             "--model", model, "--output", str(models[feature]))
    fused = tmp_path / "late"
    _cli("fuse", "--model", str(models["encoder"]), "--model", str(models["text"]),
         "--weights", "3,1", "--output", str(fused))
    spec = json.loads((fused / "fusion.json").read_text())
    assert spec["weights"] == [0.75, 0.25] and spec["member_features"] == [["encoder"], ["text"]]
    m = evaluate_model(fused, [str(world / "prepared")], tmp_path / "eval")
    assert m["late_fusion"]["utterances_left_out"] == 0 and m["folds"][0]["n_test"] == 32
    # the fused accuracy is that of the weighted mean of the members' own probabilities
    from ser_ray.learn.evaluate import _utterances
    from ser_ray.models.late_fusion import load_late_fusion

    fusion = load_late_fusion(fused)
    (ia, pa, ya, _), (ib, pb, yb, _) = (_utterances(p, [str(world / "prepared")])
                                        for p in fusion.members)
    order = np.argsort(ib)[np.searchsorted(np.sort(ib), ia)]
    p = 0.75 * pa[:, fusion.columns(0)] + 0.25 * pb[order][:, fusion.columns(1)]
    assert m["wa_mean"] == pytest.approx(float(np.mean(p.argmax(1) == ya)))
    r = _cli("score", "--model", str(fused), "--input", str(world / "calls"), "--output",
             str(tmp_path / "s"), ok=False)
    assert r.returncode == 2 and "late-fusion" in r.stderr
    r = _cli("fuse", "--model", str(models["encoder"]), "--output", str(tmp_path / "one"),
             ok=False)
    assert r.returncode == 2 and "at least two" in r.stderr
