"""Model registry, tiny builds of every architecture, and the classical pipelines."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn

from ser_ray.models import OPTIMIZERS, available_models, build_model, get_model_spec, model_config

# Small widths so every architecture builds and runs in milliseconds, and two plausible input
# shapes per model: a vector or (time, features) matrix, and a second orientation or size.
TINY = {
    "cnn2d_smote": ({"filters": 4, "dense": 8}, [(16, 12), (24, 9)]),
    "cnn2d_mel": ({"channels": (4, 4, 4, 4)}, [(16, 16), (20, 33)]),
    "cnn1d": ({"channels": (4, 4), "dense": (8, 8)}, [(30,), (20, 6)]),
    "cnn1d_tuned": ({"channels": (4, 4), "dense": (8,)}, [(30,), (20, 6)]),
    "cnn1d_8": ({"wide": 4, "mid": 4, "narrow": 4, "dense": (8, 8)}, [(30,), (20, 6)]),
    "lstm_v1": ({"hidden": 8}, [(30,), (20, 6)]),
    "lstm_v2": ({"width": 8, "dense": (8, 8)}, [(30,), (20, 6)]),
    "gru": ({"hidden": 8}, [(30,), (20, 6)]),
    "gru_lstm": ({"hidden": 8}, [(30,), (20, 6)]),
    "cnn_bilstm_attn": ({"channels": (4, 4), "hidden": 8, "attention": 8}, [(16, 12), (12, 20)]),
    "layer_weighted": ({"hidden": (8,)}, [(3, 8)]),
    "imagenet_cnn": ({"arch": "resnet18"}, [(32, 32), (40, 36)]),  # each arch: test_imagenet
    "audio_text": ({"hidden": (8,)}, [(30,), (12,)]),  # audio + text vectors: test_fusion
}
# torch models on a pretrained encoder: built from a model folder in tests/test_encoders.py
PRETRAINED = ("encoder_finetune",)
CLASSICAL = {
    "svm": {},
    "knn": {"k": 3},
    "mlp": {"hidden": (16,), "lr": 0.01},
    "logreg": {},
    "random_forest": {"n_estimators": 20},
    "gradient_boosting": {"max_iter": 20, "min_samples_leaf": 2},
}
TORCH_CASES = [(n, shape) for n, (_, shapes) in TINY.items() for shape in shapes]


def test_registry_lists_every_model_with_its_kind():
    assert available_models() == sorted([*TINY, *PRETRAINED, *CLASSICAL])
    assert available_models("torch") == sorted([*TINY, *PRETRAINED])
    assert available_models("classical") == sorted(CLASSICAL)
    for name in available_models():
        spec = get_model_spec(name)
        assert spec.name == name and spec.kind in ("torch", "classical")
        assert re.search(r"Input \(", spec.doc), f"{name}: docstring must state its input shape"
        cfg = model_config(name)
        assert cfg.optimizer in OPTIMIZERS and cfg.lr > 0 and cfg.batch_size >= 1 and cfg.epochs >= 1


@pytest.mark.parametrize("name,shape", TORCH_CASES, ids=[f"{n}-{s}" for n, s in TORCH_CASES])
def test_torch_model_forward_and_backward(name, shape):
    torch.manual_seed(0)
    overrides, _ = TINY[name]
    net = get_model_spec(name).build(shape, 5, **overrides)
    x = torch.randn(3, *shape)
    logits = net(x)
    assert logits.shape == (3, 5)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 4]))
    if hasattr(net, "regularization_loss"):
        loss = loss + net.regularization_loss()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"


def test_time_axis_reads_features_time_matrices():
    """(features, time) with time_axis=1 gives the same net as the transposed (time, features)."""
    torch.manual_seed(0)
    a = build_model("gru", (20, 6), 3, hidden=8)
    b = build_model("gru", (6, 20), 3, hidden=8, time_axis=1)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 20, 6)
    assert torch.allclose(a(x), b(x.transpose(1, 2)))
    with pytest.raises(ValueError, match="time_axis"):
        model_config("gru", time_axis=2)


def test_cnn2d_smote_matches_the_paper():
    cfg = model_config("cnn2d_smote")
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.optimizer) == (0.01, 64, 100, "adam")
    assert cfg.patience >= cfg.epochs  # the paper has no early stopping
    net = build_model("cnn2d_smote", (40, 120), 4)
    mods = list(net.modules())
    convs = [m for m in mods if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    assert all(c.out_channels == 64 and c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert [type(m) for m in mods if isinstance(m, (nn.MaxPool2d, nn.BatchNorm2d))] == [
        nn.MaxPool2d, nn.BatchNorm2d, nn.MaxPool2d, nn.BatchNorm2d, nn.MaxPool2d]
    assert sum(isinstance(m, nn.Flatten) for m in mods) == 1
    assert sum(isinstance(m, nn.LeakyReLU) for m in mods) == 4
    linears = [m for m in mods if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 5 * 15, 64), (64, 4)]
    assert [m.p for m in mods if isinstance(m, nn.Dropout)] == [0.5]
    reg = net.regularization_loss()
    expected = 0.01 * (net.hidden.weight.pow(2).sum() + net.hidden.bias.pow(2).sum())
    assert reg.item() > 0 and torch.isclose(reg, expected)
    reg.backward()
    assert net.hidden.weight.grad is not None and net.hidden.bias.grad is not None
    assert convs[0].weight.grad is None  # the penalty touches only the dense-64 layer


def test_paper_widths_are_the_defaults():
    assert model_config("cnn1d").channels == (256, 128, 64, 32)
    assert model_config("cnn1d_tuned").dense == (480, 128, 128, 32)
    assert model_config("cnn1d").patience == 5
    mel = model_config("cnn2d_mel")
    assert (mel.channels, mel.kernel, mel.lr) == ((256, 256, 128, 64), 5, 5e-5)
    assert (mel.batch_size, mel.patience) == (32, 10)
    assert model_config("lstm_v2").width == 1024
    net = build_model("cnn1d_8", (40,), 3)
    widths = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv1d)]
    assert widths == [256, 256, 128, 128, 128, 128, 64, 64]
    assert {m.p for m in net.modules() if isinstance(m, nn.Dropout)} == {0.6}


def test_torch_input_errors_are_clear():
    with pytest.raises(ValueError, match="2-D"):
        build_model("cnn2d_smote", (120,), 4)
    with pytest.raises(ValueError, match="too small"):
        build_model("cnn2d_smote", (4, 120), 4, filters=4, dense=8)
    with pytest.raises(ValueError, match="n_classes"):
        build_model("gru", (10, 3), 1)


def test_unknown_model_and_field_errors():
    with pytest.raises(ValueError, match="unknown model 'nope'.*svm"):
        build_model("nope", (3,), 2)
    with pytest.raises(ValueError, match=r"no field\(s\) \['widht'\].*valid fields.*width"):
        model_config("lstm_v2", widht=8)
    with pytest.raises(ValueError, match="optimizer"):
        model_config("cnn1d", optimizer="rmsprop")
    with pytest.raises(ValueError, match="metric"):
        model_config("knn", metric="cosine")


def test_config_round_trips_through_plain_dicts():
    cfg = model_config("cnn1d_tuned", channels=[4, 4], lr=0.5)
    assert cfg.channels == (4, 4)
    assert model_config("cnn1d_tuned", **dataclasses.asdict(cfg)) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def blobs(n_per_class=20, d=6, n_classes=3, seed=0):
    """Well-separated Gaussian blobs with features on very different scales."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (n_classes, d))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centres[y] + rng.normal(0, 0.5, (len(y), d))
    return (X * np.logspace(0, 3, d)).astype(np.float32), y


@pytest.mark.parametrize("name", sorted(CLASSICAL))
def test_classical_model_fits_with_scaler_first(name):
    X, y = blobs()
    clf = build_model(name, (X.shape[1],), 3, **CLASSICAL[name])
    assert isinstance(clf.steps[0][1], StandardScaler)
    clf.fit(X[::2], y[::2])
    np.testing.assert_allclose(clf.steps[0][1].mean_, X[::2].mean(0), rtol=1e-5)  # train rows only
    assert (clf.predict(X) == y).mean() >= 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CLASSICAL))
def test_classical_sample_weight_support_is_declared(name):
    """A model that declares sample weights fits differently with them: rows of class 0 weighed
    fifty times as much pull its probabilities towards class 0. One that does not, refuses."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1.0, (3, 4))
    y = np.repeat(np.arange(3), 30)
    X, X_new = ((centres[y] + rng.normal(0, 1.5, (len(y), 4))).astype(np.float32) for _ in "ab")
    weights = np.where(y == 0, 50.0, 1.0)

    def proba(w):  # on rows it did not see: overlapping classes, where weights decide
        clf = build_model(name, (X.shape[1],), 3, **CLASSICAL[name])
        clf.fit(X, y, model__sample_weight=w)
        return clf.predict_proba(X_new)

    if get_model_spec(name).config.supports_sample_weight:
        even, heavy = proba(np.ones(len(y))), proba(weights)
        assert not np.allclose(even, heavy)
        assert heavy[:, 0].mean() > even[:, 0].mean()
    else:
        with pytest.raises(TypeError):
            proba(weights)


@pytest.mark.parametrize("name", sorted(CLASSICAL))
def test_classical_model_rejects_matrices(name):
    with pytest.raises(ValueError, match="pooling=\"mean_std\""):
        build_model(name, (50, 40), 3)


def test_classical_seed_is_explicit():
    X, y = blobs()
    a = build_model("random_forest", (6,), 3, n_estimators=5, seed=1).fit(X, y).predict_proba(X)
    b = build_model("random_forest", (6,), 3, n_estimators=5, seed=1).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
