"""The telephone channel: the line itself (band, rate, G.711, packet loss), the ``telephone``
augmentation step, the channel protocol of ``cv``, leave-one-corpus-out with corpus balancing,
and the contact-centre recipe (configs/contact_centre/) run exactly as the README gives it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ser_ray import audio
from ser_ray.channel import Line, conceal_losses, telephone
from ser_ray.learn.augment import Chain, available_steps, make_step, row_rng

REPO = Path(__file__).resolve().parent.parent


def _wideband(sr: int = 16000, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """White noise plus a voiced tone: energy from 0 Hz to the Nyquist rate."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    y = 0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 180 * t)
    return (y / np.abs(y).max() * 0.8).astype(np.float32)


def _share_above(y: np.ndarray, sr: int, hz: float) -> float:
    power = np.abs(np.fft.rfft(y)) ** 2
    return float(power[np.fft.rfftfreq(len(y), 1 / sr) > hz].sum() / power.sum())


@pytest.mark.parametrize("codec", ["mulaw", "alaw", "pcm16", "mp3", "opus"])
def test_nothing_above_4_khz_survives_the_line(codec):
    y = _wideband()
    assert _share_above(y, 16000, 4000) > 0.05  # the input has plenty there
    z = telephone(y, 16000, Line(codec=codec))
    assert z.shape == y.shape and z.dtype == np.float32
    assert 10 * np.log10(_share_above(z, 16000, 4000) + 1e-20) < -50, codec
    assert np.abs(z).max() > 0.05  # the speech band got through


def test_the_band_pass_keeps_300_to_3400_hz():
    sr = 16000
    t = np.arange(sr) / sr

    def gain(hz: float) -> float:
        y = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        z = telephone(y, sr, Line(codec="pcm16"))
        return float(np.sqrt(np.mean(z[sr // 4:] ** 2)) / np.sqrt(np.mean(y[sr // 4:] ** 2)))

    assert gain(1000) > 0.8
    assert gain(60) < 0.1       # mains hum and rumble are gone
    assert gain(3800) < 0.3     # above the band


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_round_trip_error_is_within_the_laws_quantisation_step(law):
    """G.711 quantises each sample to 8 bits on a companding curve: within segment k the step
    is at most 1/16 of the segment's lower edge, and the smallest step is 1/2048 of full scale
    (A-law; mu-law's is finer). So |error| <= |x| / 16 + 1/2048 for every sample, and a
    speech-level signal keeps an SNR near G.711's ~38 dB: quantised, not bypassed."""
    rng = np.random.default_rng(1)
    x = np.concatenate([np.linspace(-0.99, 0.99, 16001),
                        rng.choice([-1, 1], 16000) * 10 ** rng.uniform(-4, 0, 16000)])
    x = x.astype(np.float32)
    z = audio.round_trip(x, 8000, law)
    err = np.abs(z.astype(np.float64) - x)
    assert (err <= np.abs(x) / 16 + 1 / 2048).all(), float((err - np.abs(x) / 16).max())
    speech = _wideband(8000, 1.0) * 0.3
    e = audio.round_trip(speech, 8000, law) - speech
    snr = 10 * np.log10(np.mean(speech ** 2) / np.mean(e ** 2))
    assert 30 < snr < 45, snr


def test_packet_loss_repeats_the_last_frame_at_falling_level():
    sr, n = 8000, 160  # 20 ms frames at 8 kHz
    y = np.random.default_rng(0).standard_normal(sr).astype(np.float32)
    z, lost = conceal_losses(y, sr, 0.3, np.random.default_rng(5))
    frames = len(y) // n
    assert 0.15 * frames < lost < 0.45 * frames
    gone = [k for k in range(frames) if not np.array_equal(z[k * n:(k + 1) * n], y[k * n:(k + 1) * n])]
    assert len(gone) == lost
    for k in gone:
        if k > 0 and k - 1 not in gone:  # the first of a run: the last good frame, halved
            np.testing.assert_allclose(z[k * n:(k + 1) * n], 0.5 * y[(k - 1) * n:k * n])
    same, none = conceal_losses(y, sr, 0.0, np.random.default_rng(5))
    assert none == 0 and same is y


def test_the_telephone_step_is_registered_seeded_and_checked():
    assert "telephone" in available_steps()
    chain = Chain.from_config([{"name": "telephone"}])
    assert Chain.from_config(chain.to_config()) == chain
    y = _wideband()
    a, b = (chain(y, 16000, row_rng(0, "emodb/wav/03a01Fa", 0)) for _ in range(2))
    np.testing.assert_array_equal(a, b)  # the same (seed, utterance, copy): the same line
    c = chain(y, 16000, row_rng(0, "emodb/wav/03a01Fa", 1))
    assert not np.array_equal(a, c)
    step = make_step("telephone")
    lines = [step.line(np.random.default_rng(s)) for s in range(200)]
    assert {ln.codec for ln in lines} == {"mulaw", "alaw", "mp3", "opus"}
    assert 0.15 < np.mean([ln.loss > 0 for ln in lines]) < 0.45   # loss_p 0.3
    assert 0.1 < np.mean([ln.clip is not None for ln in lines]) < 0.3  # clip_p 0.2
    assert all(8 <= ln.kbps <= 16 for ln in lines)
    for bad, match in [({"codecs": ["g729"]}, "not among"), ({"codecs": []}, "empty"),
                       ({"min_kbps": 16, "max_kbps": 8}, "swap"), ({"loss_p": 2}, "loss_p"),
                       ({"high_hz": 5000}, "rate/2")]:
        with pytest.raises(ValueError, match=match):
            make_step("telephone", **bad)


@pytest.mark.usefixtures("ray_session")
def test_channel_features_make_one_test_set_per_codec(tmp_path):
    import soundfile as sf

    from ser_ray.config import AudioConfig
    from ser_ray.features import get_extractor
    from ser_ray.learn.augment import channel_features

    rows = []
    for i in range(2):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, _wideband(seed=i), 16000)
        rows.append({"uri": str(path), "utterance_id": f"c/u{i}", "source_id": f"c/u{i}",
                     "speaker": "c:1", "sex": None, "corpus": "c", "label": "angry"})
    xs, meta = channel_features(pd.DataFrame(rows), audio_cfg=AudioConfig(),
                                extractor=get_extractor("logmel"), codecs=["mulaw", "opus"])
    assert sorted(meta["channel"]) == ["mulaw", "mulaw", "opus", "opus"]
    assert set(meta["augment"]) == {"telephone-mulaw", "telephone-opus"}
    clean = get_extractor("logmel")(_wideband(seed=0), 16000)
    for x, (_, m) in zip(xs, meta.iterrows()):
        assert x.shape == clean.shape
        if m["utterance_id"] == "c/u0":  # the high mel bands are empty after the line
            assert x[-10:].mean() < clean[-10:].mean() - 3


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_channel_protocol_trains_both_modes_and_reports_each_codec(learn_corpus, tmp_path):
    from cli_helpers import ser_ray_cli

    out = tmp_path / "cv"
    ser_ray_cli("cv", "--features", str(learn_corpus["prepared"]), "--feature-set",
                "handcrafted94", "--model", "logreg", "--protocol", "speaker-kfold", "--folds",
                "2", "--set", "channel_protocol.codecs=[mulaw,opus]", "--output", str(out))
    m = json.loads((out / "metrics.json").read_text())
    ch = m["channel"]
    assert ch["codecs"] == ["mulaw", "opus"] and set(ch["modes"]) == {"clean", "telephone"}
    assert ch["training"]["clean"] == "none" and "telephone" in ch["training"]["telephone"]
    for fold in m["folds"]:
        assert set(fold["channel"]) == {"clean", "telephone"}
        # the configured (clean) model's clean cell is the fold's own figure
        assert fold["channel"]["clean"]["clean"]["ua"] == fold["ua"]
        for cells in fold["channel"].values():
            assert set(cells) == {"clean", "mulaw", "opus"}
            assert cells["mulaw"]["n"] == fold["n_test"]
    # the line costs the clean model more than the model that trained on it
    drop = {mode: cells["clean"]["ua_mean"] - min(cells[c]["ua_mean"] for c in ("mulaw", "opus"))
            for mode, cells in ch["modes"].items()}
    assert drop["telephone"] < drop["clean"], drop
    summary = (out / "summary.md").read_text()
    assert "## Telephone channel" in summary and "trained with telephone copies" in summary
    assert "G.711 mu-law" in summary and "Opus 16 kbit/s" in summary


def test_the_other_training_mode_flips_telephone_copies():
    from ser_ray.config import AugmentConfig, LearnConfig, from_dict
    from ser_ray.learn.conditions import mode_name, other_mode

    clean = from_dict(LearnConfig, {"model": "logreg",
                                    "channel_protocol": {"codecs": ["mulaw"], "copies": 2}})
    tel = other_mode(clean)
    assert mode_name(clean) == "clean" and mode_name(tel) == "telephone"
    assert tel.augment.variant == "merged" and tel.augment.copies == 2
    assert tel.augment.steps[0]["name"] == "telephone"
    assert mode_name(other_mode(tel)) == "clean" and other_mode(tel).augment == AugmentConfig()
    with pytest.raises(ValueError, match="channel_protocol.codecs"):
        from_dict(LearnConfig, {"model": "logreg", "channel_protocol": {"codecs": ["g729"]}})


# --------------------------------------------------------------------------- several corpora

@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Three small synthetic corpora of different sizes, prepared (handcrafted94)."""
    from cli_helpers import ser_ray_cli
    from ser_ray.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("corpora")
    emotions = ["neutral", "happy", "sad", "angry"]
    made = {}
    for layout, speakers, per, seed in (("ravdess", 4, 3, 3), ("emodb", 2, 2, 4),
                                        ("cremad", 2, 2, 5)):
        synthesize_corpus(layout, root / layout, n_speakers=speakers, per_emotion=per,
                          emotions=emotions, seed=seed)
        ser_ray_cli("prepare", "--input", str(root / layout), "--corpus", layout, "--features",
                    "handcrafted94", "--set", "audio.trim=true", "--set", "audio.normalise=rms",
                    "--output", str(root / f"p-{layout}"), "--no-progress")
        made[layout] = root / f"p-{layout}"
    return made


@pytest.mark.usefixtures("ray_session")
def test_leave_one_corpus_out_tests_each_corpus_unseen_and_prints_the_matrix(corpora, tmp_path):
    from cli_helpers import ser_ray_cli

    out = tmp_path / "loco"
    ser_ray_cli("cv", "--features", *map(str, corpora.values()), "--feature-set",
                "handcrafted94", "--model", "logreg", "--protocol", "leave-one-corpus-out",
                "--set", "normalise=corpus", "--set", "balance_corpora=true", "--output", str(out))
    m = json.loads((out / "metrics.json").read_text())
    assert [f["name"] for f in m["folds"]] == [f"held out={c}" for c in sorted(corpora)]
    for fold in m["folds"]:
        held = fold["name"].split("=")[1]
        assert {s.split(":")[0] for s in fold["test_speakers"]} == {held}
        assert held not in {s.split(":")[0] for s in fold["train_speakers"]}
    matrix = m["corpus_matrix"]
    assert matrix["corpora"] == sorted(corpora)
    assert [r["trained_on"] for r in matrix["rows"]] == [*sorted(corpora), "all the others"]
    for row in matrix["rows"][:-1]:
        assert row["trained_on"] not in row["ua"] and len(row["ua"]) == 2
    assert matrix["rows"][-1]["ua"] == {f["name"].split("=")[1]: f["ua"] for f in m["folds"]}
    summary = (out / "summary.md").read_text()
    assert "## Across corpora" in summary and "| all the others |" in summary
    assert "leave-one-corpus-out" in summary


def test_leave_one_corpus_out_needs_two_corpora():
    from ser_ray.learn import splits

    meta = pd.DataFrame({"source_id": ["a", "b"], "speaker": ["x:1", "x:2"],
                         "label": ["sad", "sad"], "corpus": ["x", "x"]})
    with pytest.raises(ValueError, match="at least 2 corpora"):
        splits.make_folds(meta, "leave-one-corpus-out")


@pytest.mark.usefixtures("ray_session")
def test_corpus_balancing_gives_every_corpus_the_largest_ones_rows(corpora):
    from ser_ray.config import LearnConfig
    from ser_ray.learn.balance import balance_groups
    from ser_ray.learn.data import load_features
    from ser_ray.learn.experiment import prepare_fold

    data = load_features(list(corpora.values()), ["handcrafted94"])
    sizes = data.meta["corpus"].value_counts()
    assert sizes.nunique() > 1
    idx = np.arange(len(data))
    for balanced in (False, True):
        cfg = LearnConfig(model="logreg", normalise="corpus", balance_corpora=balanced)
        p = prepare_fold(data, idx, np.zeros(0, np.int64), cfg, None, classical=True)
        counts = p.meta_train["corpus"].value_counts()
        if balanced:
            assert set(counts) == {sizes.max()} and len(counts) == 3
            # copies only: every row is an original row of its own corpus
            assert set(map(tuple, p.X_train.round(5))) <= set(map(tuple, p.X_train[:len(data)].round(5)))
        else:
            assert counts.to_dict() == sizes.to_dict()
    keep = balance_groups(np.array(["a"] * 5 + ["b"] * 2), seed=0)
    assert sorted(keep[:7]) == list(range(7)) and len(keep) == 10
    assert (keep[7:] >= 5).all()  # the copies are b's rows


# --------------------------------------------------------------------------- the recipe

@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_the_contact_centre_recipe_runs_as_documented(tmp_path):
    """prepare with configs/contact_centre/prepare.yaml (encoder folder on the command line),
    then cv, train and score with configs/contact_centre/learn.yaml."""
    from cli_helpers import ser_ray_cli
    from encoder_helpers import make_tiny_encoder
    from ser_ray.score import read_calls
    from ser_ray.synth import synthesize_backlog, synthesize_corpus

    learn = yaml.safe_load((REPO / "configs/contact_centre/learn.yaml").read_text())
    assert learn["augment"]["steps"][0]["name"] == "telephone" and learn["normalise"] == "corpus"
    encoder = make_tiny_encoder("whisper", tmp_path / "whisper")
    emotions = ["neutral", "happy", "sad", "angry", "fearful"]
    prepared = []
    for layout, seed in (("ravdess", 3), ("emodb", 4)):
        synthesize_corpus(layout, tmp_path / layout, n_speakers=2, per_emotion=1,
                          emotions=emotions, seed=seed)
        out = tmp_path / f"p-{layout}"
        ser_ray_cli("prepare", "--config", "configs/contact_centre/prepare.yaml", "--input",
                    str(tmp_path / layout), "--corpus", layout, "--set",
                    f"feature_options.encoder.model={encoder}", "--output", str(out),
                    "--no-progress")
        prepared.append(str(out))
    test = ["emodb:03", "ravdess:01"]
    ser_ray_cli("cv", "--config", "configs/contact_centre/learn.yaml", "--features", *prepared,
                "--protocol", "explicit", "--test-speakers", ",".join(test),
                "--output", str(tmp_path / "cv"))
    m = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert sorted(m["labels"]) == ["angry", "happy", "neutral", "sad"]  # shared; fearful dropped
    assert m["folds"][0]["test_speakers"] == sorted(test)
    assert set(m["channel"]["modes"]) == {"telephone", "clean"}
    # the configured model trained on telephone copies of every training recording
    assert m["folds"][0]["n_train"] >= 2 * m["folds"][0]["n_train_clean"]
    ser_ray_cli("train", "--config", "configs/contact_centre/learn.yaml", "--features", *prepared,
                "--output", str(tmp_path / "model"))
    record = json.loads((tmp_path / "model" / "model.json").read_text())["extra"]["config"]
    assert record["augment"]["steps"][0]["name"] == "telephone"  # the record names it
    synthesize_backlog(tmp_path / "calls", n_calls=2, seed=1, sr=8000, bad=False,
                       minutes=(0.3, 0.4), metadata=False)
    ser_ray_cli("score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "calls"),
                "--output", str(tmp_path / "scored"), "--run-date", "2026-12-01")
    calls = read_calls(tmp_path / "scored")
    assert len(calls) == 2 and (calls["status"] == "scored").all()
    assert set(calls["sample_rate"]) == {8000}
