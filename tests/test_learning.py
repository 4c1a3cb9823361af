"""Learning plane end to end on a real local Ray: cv, leakage guarantees, Ray Train, artifacts.

The corpus is synthetic (tests/conftest.py ``learn_corpus``): 6 speakers x 4 emotions whose
emotion is carried by prosody, so a speaker-independent model can beat chance (0.25) clearly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ser_ray.learn import splits
from ser_ray.config import AugmentConfig, LearnConfig
from ser_ray.learn.data import load_features

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

CHANCE = 0.25


@pytest.fixture(scope="module")
def vectors(learn_corpus):
    return load_features(learn_corpus["prepared"], ["handcrafted94"])


@pytest.fixture(scope="module")
def arrays(learn_corpus):
    return load_features(learn_corpus["prepared"], ["mfcc"], frames=80)


def test_cv_command_writes_the_report_and_run_files(learn_corpus, tmp_path):
    from ser_ray.cli import main

    out = tmp_path / "cv"
    rc = main(["cv", "--features", str(learn_corpus["prepared"]), "--feature-set",
               "handcrafted94", "--model", "logreg", "--protocol", "speaker-kfold", "--folds",
               "3", "--output", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"] == "speaker-kfold" and m["shares_speakers"] is False
    for key in ("ua_mean", "ua_std", "wa_mean", "wa_std"):
        assert isinstance(m[key], float)
    assert len(m["folds"]) == 3
    speakers = set()
    for f in m["folds"]:
        assert {"ua", "wa", "train_speakers", "test_speakers"} <= set(f)
        assert not set(f["train_speakers"]) & set(f["test_speakers"])
        speakers |= set(f["test_speakers"])
    assert len(speakers) == 6  # every speaker tested exactly once over the folds
    assert m["ua_mean"] > CHANCE + 0.25, m["ua_mean"]
    for name in ("per_class.csv", "confusion.png", "summary.md", "config.yaml",
                 "label_map.json", "run.json"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "label_map.json").read_text()) == {
        "neutral": 0, "happy": 1, "sad": 2, "angry": 3}
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 0 and "torch" in run["versions"]
    assert "speaker-kfold" in (out / "summary.md").read_text()


def test_random_kfold_is_reported_as_sharing_speakers(vectors, tmp_path):
    from ser_ray.learn.experiment import run_cv

    cfg = LearnConfig(features=("handcrafted94",), model="logreg", protocol="random-kfold",
                      folds=3)
    m = run_cv(vectors, cfg, tmp_path / "cv")
    assert m["shares_speakers"] is True
    assert any(set(f["train_speakers"]) & set(f["test_speakers"]) for f in m["folds"])
    assert "optimistic" in (tmp_path / "cv" / "summary.md").read_text()


def test_oversampling_augmentation_and_scaling_never_touch_the_test_side(arrays, tmp_path):
    """Merged augmentation + SMOTE + normalisation through prepare_fold on real folds."""
    from ser_ray.learn.experiment import make_augmenter, prepare_fold

    cfg = LearnConfig(features=("mfcc",), frames=80, model="cnn1d", balance="smote",
                      augment=AugmentConfig(variant="merged", steps=({"name": "gain"},)),
                      protocol="speaker-kfold", folds=3)
    folds = splits.make_folds(arrays.meta, "speaker-kfold", folds=3)
    augmenter = make_augmenter(arrays, cfg, [f.train for f in folds])
    meta = arrays.meta
    for fold in folds:
        # Drop half of one class from the training side so SMOTE has something to do.
        train_idx = fold.train[~((arrays.y[fold.train] == 0) & (np.arange(len(fold.train)) % 2 == 0))]
        tr, va = splits.validation_split(meta, train_idx, fraction=0.25)
        p = prepare_fold(arrays, tr, va, cfg, augmenter, classical=False)
        test_sources = set(meta["source_id"].iloc[fold.test])
        used = set(p.meta_train["source_id"]) - {""}
        assert used <= set(meta["source_id"].iloc[tr]), "a training row came from outside train"
        assert not used & test_sources, "a test recording (or its augmented copy) was trained on"
        assert not used & set(meta["source_id"].iloc[va])
        assert (p.meta_train["augment"].fillna("none") != "none").any(), "no augmented rows"
        assert (p.meta_train["source_id"] == "").any(), "SMOTE made no synthetic rows"
        assert np.bincount(p.y_train).min() == np.bincount(p.y_train).max()
        # The test side is the original rows, normalised on the predict path with train-side
        # statistics (the ones a saved model dir keeps).
        from ser_ray.models.artifact import Predictor
        pred = Predictor("cnn1d", "torch", None, arrays.labels, arrays.X.shape[1:], normalisation=p.norm)
        Xn = (arrays.X[fold.test] - p.norm["mean"]) / p.norm["std"]
        np.testing.assert_allclose(pred.prepare(arrays.X[fold.test]), Xn, rtol=1e-5, atol=1e-5)
        # Statistics come from the training rows only: changing the test rows changes nothing.
        poisoned = arrays.subset(np.arange(len(arrays)))
        poisoned.X[fold.test] += 1000.0
        q = prepare_fold(poisoned, tr, va, cfg, augmenter, classical=False)
        np.testing.assert_array_equal(q.norm["mean"], p.norm["mean"])


def test_classical_scaler_is_fitted_on_the_training_rows_only(vectors, tmp_path):
    from ser_ray.learn.experiment import cross_validate

    cfg = LearnConfig(features=("handcrafted94",), model="logreg", balance="ros",
                      protocol="speaker-kfold", folds=2)
    m = cross_validate(vectors, cfg, tmp_path, keep_folds=True)
    for row in m["folds"]:
        p, fitted = row["_prepared"], row["_fitted"]
        scaler = fitted.model.named_steps["scale"]
        np.testing.assert_allclose(scaler.mean_, p.X_train.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-6)
        assert len(p.X_train) != len(vectors)  # not the whole dataset


def test_fit_torch_is_deterministic_on_both_trainers_and_resumes_after_a_failure(tmp_path):
    from ser_ray.learn.training import fit_torch

    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 20, 6)).astype(np.float32)
    y = (X[:, :, 0].mean(axis=1) > 0).astype(np.int64) + 2 * (X[:, :, 1].mean(axis=1) > 0)
    args = ("cnn1d", {"channels": [8], "dense": [8], "epochs": 4, "patience": 10, "lr": 3e-3},
            (20, 6), 4, (X[:72], y[:72]), (X[72:], y[72:]))
    kw = dict(storage_path=tmp_path, seed=1, cpus_per_worker=0.5, checkpoint_every_s=0)
    a = fit_torch(*args, run_name="a", **kw)  # auto: one CPU worker runs in this process
    assert a.trainer == "local" and 0 < a.loop_s <= a.wall_s
    assert [h["epoch"] for h in a.history] == [0, 1, 2, 3]

    def same_as_a(fit):
        for k in a.state_dict:
            assert np.array_equal(a.state_dict[k].numpy(), fit.state_dict[k].numpy()), k
        assert [h["val_loss"] for h in fit.history] == \
            pytest.approx([h["val_loss"] for h in a.history])

    # Each trainer fails after epoch 1, then resumes from its checkpoint to a's very weights:
    # Ray Train's epochs 0-1 and 2-3 both match the local loop's.
    for trainer in ("ray_train", "local"):
        with pytest.raises(Exception, match="injected failure"):
            fit_torch(*args, run_name=f"c-{trainer}", trainer=trainer, fail_at_epoch=1, **kw)
        c = fit_torch(*args, run_name=f"c-{trainer}", trainer=trainer, **kw)
        assert c.trainer == trainer
        assert [h["epoch"] for h in c.history] == [0, 1, 2, 3]  # 0-1 came from the checkpoint
        same_as_a(c)
        if trainer == "ray_train":
            assert c.startup_s > 0
    assert sorted(p.name for p in (tmp_path / "c-local").iterdir()) == \
        ["checkpoint_000002", "checkpoint_000003"]  # the last two kept
    with pytest.raises(ValueError, match="trainer=ray_train"):
        fit_torch(*args, run_name="d", trainer="local", num_workers=2, **kw)


def test_train_then_evaluate_a_saved_model(learn_corpus, tmp_path):
    from ser_ray.cli import main

    model = tmp_path / "model"
    rc = main(["train", "--features", str(learn_corpus["prepared"]), "--feature-set", "mfcc",
               "--model", "cnn1d", "--set", "frames=80", "--set", "cpus_per_worker=0.5",
               "--set", "model_options={channels: [16, 8], dense: [16], epochs: 12, lr: 0.003}",
               "--output", str(model)])
    assert rc == 0
    for name in ("weights.safetensors", "model.json", "features.json", "labels.json",
                 "normalisation.safetensors"):
        assert (model / name).exists(), name
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--features",
                 str(learn_corpus["prepared"]), "--output", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"] == "held-out" and m["shares_speakers"] is True  # same corpus: honest flag
    assert m["ua_mean"] > CHANCE + 0.15
    assert (out / "confusion.png").exists()


def test_bad_learning_arguments_exit_2_with_a_message(learn_corpus, tmp_path, capsys):
    from ser_ray.cli import main

    base = ["cv", "--features", str(learn_corpus["prepared"]), "--output", str(tmp_path / "x")]
    assert main(base + ["--model", "logreg", "--feature-set", "nosuch"]) == 2
    assert "no feature table 'nosuch'" in capsys.readouterr().err
    assert main(base + ["--model", "nosuch", "--feature-set", "handcrafted94"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main(base + ["--model", "logreg", "--feature-set", "handcrafted94", "--folds", "9",
                        "--protocol", "speaker-kfold"]) == 2
    assert "speaker" in capsys.readouterr().err
    assert main(base + ["--model", "logreg", "--feature-set", "mfcc"]) == 2
    assert "vector" in capsys.readouterr().err
    # Two tables and no --feature-set: name both, say how to choose.
    assert main(base + ["--model", "logreg"]) == 2
    err = capsys.readouterr().err
    assert "handcrafted94, mfcc" in err and "--feature-set" in err


# Every torch model at a small width: architecture as registered, widths cut so CI can run it.
TINY = {
    "cnn1d": {"channels": [32, 16], "dense": [32]},
    "cnn1d_tuned": {"channels": [32, 16], "dense": [48, 16]},
    "cnn1d_8": {"wide": 16, "mid": 16, "narrow": 8, "dense": [16], "pool": 2},
    "cnn2d_smote": {"filters": 8, "dense": 16, "lr": 1e-3, "patience": 8},
    "cnn2d_mel": {"channels": [8, 8, 8, 8], "lr": 1e-3},
    "lstm_v1": {"hidden": 64, "layers": 2},
    "lstm_v2": {"width": 64, "blocks": 1, "dense": [16]},
    "gru": {"hidden": 128, "layers": 1, "lr": 1e-3},
    "gru_lstm": {"hidden": 64, "gru_layers": 1, "lstm_layers": 1},
    "cnn_bilstm_attn": {"channels": [8, 16], "hidden": 16, "attention": 16},
}


def test_every_torch_model_is_covered():
    from ser_ray.models import available_models

    # the encoder heads learn from encoder/waveform tables, not MFCC: they train through the
    # CLI in tests/test_encoder_pipeline.py; imagenet_cnn on spectrogram blocks in
    # tests/test_imagenet.py; audio_text on encoder + text in tests/test_fusion.py
    assert set(available_models("torch")) == set(TINY) | {"layer_weighted", "encoder_finetune",
                                                          "imagenet_cnn", "audio_text"}


@pytest.mark.parametrize("model", sorted(TINY))
def test_every_torch_model_trains_through_cv_above_chance(model, learn_corpus, tmp_path):
    from ser_ray.cli import main

    options = {"epochs": 20, "batch_size": 16, "lr": 3e-3, "patience": 6, **TINY[model]}
    out = tmp_path / "cv"
    rc = main(["cv", "--features", str(learn_corpus["prepared"]), "--feature-set", "mfcc",
               "--model", model, "--protocol", "explicit", "--test-speakers",
               "ravdess:05,ravdess:06", "--set", "frames=80", "--set", "cpus_per_worker=1",
               "--set", f"model_options={json.dumps(options)}", "--output", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["folds"][0]["test_speakers"] == ["ravdess:05", "ravdess:06"]
    # 32 test clips: chance (0.25) reaches 0.40 with p < 1%
    assert m["ua_mean"] >= CHANCE + 0.15, f"{model}: UA {m['ua_mean']:.3f}"


def test_cv_scores_noisy_test_sets_at_each_snr(vectors, tmp_path):
    import soundfile as sf

    from ser_ray.learn.experiment import run_cv

    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    rng = np.random.default_rng(0)
    sf.write(noise_dir / "hum.wav", (0.3 * rng.standard_normal(16000 * 2)).astype(np.float32),
             16000)
    cfg = LearnConfig(features=("handcrafted94",), model="logreg", protocol="speaker-kfold",
                      folds=2, noisy_snr_db=(-5.0, 40.0), noise_dir=str(noise_dir))
    m = run_cv(vectors, cfg, tmp_path / "cv")
    assert set(m["noisy"]) == {"-5.0", "40.0"}
    for fold in m["folds"]:
        assert set(fold["noisy"]) == {"-5.0", "40.0"}
    # 40 dB noise barely changes the features; -5 dB buries the prosody
    assert abs(m["noisy"]["40.0"]["ua_mean"] - m["ua_mean"]) < 0.2
    assert m["noisy"]["-5.0"]["ua_mean"] < m["noisy"]["40.0"]["ua_mean"]
    assert "Noisy" in (tmp_path / "cv" / "summary.md").read_text()


def test_cross_corpus_cv_trains_on_one_corpus_and_tests_on_another(learn_corpus, tmp_path, capsys):
    """Two prepare outputs sharing 3 labels; happy (train side only) and fearful and disgust
    (test side only) are dropped and counted, and no prediction lands in them."""
    from ser_ray.cli import main
    from ser_ray.synth import synthesize_corpus

    tess, prepared = tmp_path / "tess", tmp_path / "tess-prepared"
    synthesize_corpus("tess", tess, per_emotion=3, sr=16000, seed=5,
                      emotions=["neutral", "sad", "angry", "fearful", "disgust"])
    assert main(["prepare", "--input", str(tess), "--features", "handcrafted94", "--output",
                 str(prepared), "--set", "audio.trim=true", "--set", "audio.normalise=rms",
                 "--no-progress"]) == 0
    out = tmp_path / "cv"
    # No --feature-set: handcrafted94 is the one table both folders hold.
    assert main(["cv", "--features", str(learn_corpus["prepared"]), str(prepared),
                 "--model", "logreg", "--protocol",
                 "cross-corpus", "--train-corpora", "ravdess", "--test-corpus", "tess",
                 "--set", "normalise=corpus", "--output", str(out)]) == 0
    assert "feature table 'handcrafted94'" in capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    (fold,) = m["folds"]
    assert fold["test_speakers"] == ["tess:OAF", "tess:YAF"]
    assert all(s.startswith("ravdess:") for s in fold["train_speakers"])
    assert fold["dropped_labels"] == {"disgust": 6, "fearful": 6, "happy": 24}
    assert fold["n_test"] == 2 * 3 * 3
    confusion = np.asarray(fold["confusion"])
    absent = [m["labels"].index(lab) for lab in ("happy", "fearful", "disgust")]
    assert confusion[:, absent].sum() == 0, confusion
    assert m["ua_mean"] > 1 / 3 + 0.2, m["ua_mean"]  # 3 tested classes: chance is 1/3
