"""Model dirs: round trips, no pickle for torch weights, loading without the training code."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from ser_ray.models.artifact import FORMAT_VERSION, Predictor, load_predictor, save_model_dir
from ser_ray.models import build_model, model_config

LABELS = ["angry", "happy", "neutral", "sad"]
FEATURES = {"extractors": [{"name": "mfcc", "n_mfcc": 2, "pooling": "none"}], "combine": "concat",
            "audio": {"sample_rate": 16000}}
TORCH_NAME, TORCH_SHAPE, TORCH_CFG = "cnn2d_smote", (16, 12), {"filters": 4, "dense": 8}


@pytest.fixture
def torch_model():
    """A tiny cnn2d_smote whose BatchNorm running statistics have moved off their initial values."""
    torch.manual_seed(0)
    net = build_model(TORCH_NAME, TORCH_SHAPE, len(LABELS), **TORCH_CFG)
    net(3 + 2 * torch.randn(8, *TORCH_SHAPE))  # one train-mode pass updates the running stats
    return net.eval()


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(len(LABELS)), 10)
    X = (rng.normal(0, 3, (len(LABELS), 5))[y] + rng.normal(0, 1, (len(y), 5))) * [1, 10, 100, 1, 1]
    return X.astype(np.float32), y


def save_torch(path, model, normalisation=None):
    cfg = model_config(TORCH_NAME, **TORCH_CFG)
    return save_model_dir(path, model_name=TORCH_NAME, model_config=cfg,
                          input_shape=TORCH_SHAPE, labels=LABELS, model=model, feature_config=FEATURES,
                          normalisation=normalisation, metrics={"ua": np.float64(0.5)}, extra={"fold": 0})


def test_torch_round_trip_is_exact(tmp_path, torch_model):
    rng = np.random.default_rng(1)
    norm = {"mean": rng.normal(0, 1, TORCH_SHAPE[1]), "std": np.abs(rng.normal(1, 0.1, TORCH_SHAPE[1]))}
    out = save_torch(tmp_path / "m", torch_model, normalisation=norm)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.json", "weights.safetensors", "features.json", "normalisation.safetensors",
         "labels.json", "metrics.json", "versions.json"])
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp dir left behind
    assert json.loads((out / "model.json").read_text())["extra"] == {"fold": 0}
    assert {"python", "torch", "scikit-learn", "ser-ray"} <= set(json.loads((out / "versions.json").read_text()))

    X = rng.normal(0, 1, (7, *TORCH_SHAPE)).astype(np.float32)
    loaded = load_predictor(out)
    here = Predictor(TORCH_NAME, "torch", torch_model, LABELS, TORCH_SHAPE, normalisation=norm)
    proba = loaded.predict_proba(X)
    np.testing.assert_array_equal(proba, here.predict_proba(X))
    assert proba.shape == (7, 4) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)
    # The stored normalisation is applied before the model.
    with torch.no_grad():
        scaled = torch.from_numpy(((X - norm["mean"]) / norm["std"]).astype(np.float32))
        manual = torch.softmax(torch_model(scaled), 1)
    np.testing.assert_allclose(proba, manual.numpy(), rtol=1e-5, atol=1e-6)
    assert loaded.predict(X) == [LABELS[i] for i in proba.argmax(1)]
    assert (loaded.labels, loaded.input_shape, loaded.feature_config) == (LABELS, TORCH_SHAPE, FEATURES)
    assert loaded.metrics == {"ua": 0.5} and loaded.config["filters"] == 4
    assert loaded.extra == {"fold": 0}


def test_torch_weights_are_safetensors_not_pickle(tmp_path, torch_model):
    raw = (save_torch(tmp_path / "m", torch_model) / "weights.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert set(header) - {"__metadata__"} == set(torch_model.state_dict())
    assert not raw.startswith(b"\x80") and b"torch._utils" not in raw  # pickle / torch.save markers


def test_classical_round_trip_is_exact(tmp_path, vectors):
    X, y = vectors
    clf = build_model("svm", (5,), len(LABELS)).fit(X, y)
    out = save_model_dir(tmp_path / "svm", model_name="svm", model_config={"C": 30.0},
                         input_shape=(5,), labels=LABELS, model=clf, feature_config=FEATURES)
    assert (out / "model.skops").is_file() and not (out / "weights.safetensors").exists()
    loaded = load_predictor(out)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X).astype(np.float32))
    assert np.mean(np.array(loaded.predict(X)) == np.array(LABELS)[y]) >= 0.9


def test_classical_class_missing_from_training_gets_zero_column(tmp_path, vectors):
    X, y = vectors
    keep = y != 1
    clf = build_model("logreg", (5,), len(LABELS)).fit(X[keep], y[keep])
    out = save_model_dir(tmp_path / "lr", model_name="logreg", model_config={}, input_shape=(5,),
                         labels=LABELS, model=clf, feature_config=FEATURES)
    proba = load_predictor(out).predict_proba(X)
    assert proba.shape == (len(X), 4) and np.all(proba[:, 1] == 0)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)


LOAD_IN_FRESH_PROCESS = """
import json, sys
import numpy as np
from ser_ray.models.artifact import load_predictor
p = load_predictor(sys.argv[1])
X = np.load(sys.argv[2])
assert "ser_ray.learn.training" not in sys.modules, "loading imported the training code"
print(json.dumps(p.predict_proba(X).tolist()))
"""


def test_loads_in_a_fresh_process_without_training_code(tmp_path, torch_model):
    out = save_torch(tmp_path / "m", torch_model)
    X = np.random.default_rng(2).normal(0, 1, (3, *TORCH_SHAPE)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    cmd = [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(out), str(tmp_path / "x.npy")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    proba = np.array(json.loads(res.stdout), dtype=np.float32)
    np.testing.assert_array_equal(proba, load_predictor(out).predict_proba(X))


def test_incomplete_or_foreign_dirs_are_rejected(tmp_path, torch_model):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_predictor(tmp_path / "absent")
    out = save_torch(tmp_path / "m", torch_model)
    (out / "labels.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks \['labels.json'\]"):
        load_predictor(out)
    out = save_torch(tmp_path / "m", torch_model)  # overwrites the broken dir
    (out / "weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights.safetensors"):
        load_predictor(out)
    out = save_torch(tmp_path / "m", torch_model)
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match="format_version"):
        load_predictor(out)


def test_save_refuses_bad_inputs(tmp_path, torch_model, vectors):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a model dir"):
        save_torch(other, torch_model)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="4 labels"):
        save_model_dir(tmp_path / "x", model_name=TORCH_NAME, model_config=TORCH_CFG,
                       input_shape=TORCH_SHAPE, labels=LABELS, feature_config=FEATURES,
                       model=build_model(TORCH_NAME, TORCH_SHAPE, 3, **TORCH_CFG))
    with pytest.raises(ValueError, match="not understood"):
        save_torch(tmp_path / "x", torch_model, normalisation={"scale": np.ones(6)})
    with pytest.raises(ValueError, match="does not broadcast"):
        save_torch(tmp_path / "x", torch_model, normalisation={"mean": np.ones(7)})
    with pytest.raises(TypeError, match="torch model"):
        save_model_dir(tmp_path / "x", model_name=TORCH_NAME, model_config={}, input_shape=TORCH_SHAPE,
                       labels=LABELS, model=object(), feature_config=FEATURES)
    with pytest.raises(ValueError, match="not fitted"):
        save_model_dir(tmp_path / "x", model_name="svm", model_config={}, input_shape=(5,),
                       labels=LABELS, model=build_model("svm", (5,), 4), feature_config=FEATURES)
    with pytest.raises(ValueError, match="no field"):
        save_model_dir(tmp_path / "x", model_name=TORCH_NAME, model_config={"filtres": 4},
                       input_shape=TORCH_SHAPE, labels=LABELS, model=torch_model,
                       feature_config=FEATURES)
    assert not (tmp_path / "x").exists()


def test_predict_checks_the_input_shape(tmp_path, torch_model):
    p = load_predictor(save_torch(tmp_path / "m", torch_model))
    with pytest.raises(ValueError, match=r"X\[None\]"):
        p.predict_proba(np.zeros(TORCH_SHAPE, dtype=np.float32))
    assert p.predict_proba(np.zeros((0, *TORCH_SHAPE))).shape == (0, 4)


def test_zero_std_is_stored_as_one(tmp_path, torch_model):
    std = np.ones(TORCH_SHAPE[1])
    std[2] = 0
    p = load_predictor(save_torch(tmp_path / "m", torch_model, normalisation={"std": std}))
    assert p.normalisation["std"][2] == 1
    assert np.isfinite(p.predict_proba(np.ones((1, *TORCH_SHAPE)))).all()
