"""Balancing the train split: SMOTE, random oversampling, class weights."""

import numpy as np
import pytest

from ser_ray.learn.balance import SAMPLERS, class_weights, fit_resample


def data(counts=(30, 8, 6), shape=(4, 3), seed=0):
    """Imbalanced float32 X (n, *shape), each class around its own centre; y int64 (n,)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(counts)), counts)
    X = (rng.normal(size=(len(y), *shape)) + 5 * y.reshape(-1, *[1] * len(shape))).astype(np.float32)
    return X, y


def on_a_segment(x, pts, tol=1e-4):
    """x == a + t (b - a) for some rows a, b of pts and t in [0, 1]."""
    for a in pts:
        for b in pts:
            d = b - a
            if not d.any():
                continue
            t = float(np.dot(x - a, d) / np.dot(d, d))
            if -tol <= t <= 1 + tol and np.allclose(a + t * d, x, atol=tol):
                return True
    return False


def test_registry():
    assert set(SAMPLERS) == {"none", "smote", "ros", "class_weights"}
    assert [n for n, s in SAMPLERS.items() if s.weighted_loss] == ["class_weights"]
    with pytest.raises(ValueError, match=r"unknown balancing method 'adasyn'; choose one of .*smote"):
        fit_resample("adasyn", *data())


@pytest.mark.parametrize("method", ["smote", "ros"])
@pytest.mark.parametrize("shape", [(6,), (4, 3), (2, 3, 2)])
def test_balanced_counts_shape_and_origin(method, shape):
    X, y = data(shape=shape)
    X2, y2, origin = fit_resample(method, X, y, seed=0)
    assert X2.shape[1:] == X.shape[1:] and X2.dtype == X.dtype
    assert y2.dtype == origin.dtype == np.int64 and len(X2) == len(y2) == len(origin)
    assert np.bincount(y2).tolist() == [30, 30, 30]
    assert np.array_equal(X2[: len(X)], X) and np.array_equal(origin[: len(X)], np.arange(len(X)))
    real = origin >= 0
    assert np.array_equal(X2[real], X[origin[real]]) and np.array_equal(y2[real], y[origin[real]])
    if method == "ros":
        assert real.all()
    else:
        assert (~real).sum() == 22 + 24


def test_smote_rows_are_interpolations_inside_their_class():
    X, y = data(counts=(20, 6, 4), shape=(3, 2))
    X2, y2, origin = fit_resample("smote", X, y, seed=1, k_neighbors=3)
    synth = origin == -1
    flat, flat2 = X.reshape(len(X), -1), X2.reshape(len(X2), -1)
    for c in (1, 2):
        rows = flat2[synth & (y2 == c)]
        assert len(rows)
        real = flat[y == c]
        assert (rows >= real.min(0) - 1e-5).all() and (rows <= real.max(0) + 1e-5).all()
        assert all(on_a_segment(r, real) for r in rows)
        # Genuinely new points, not copies.
        assert not any((np.abs(real - r).max(1) < 1e-6).any() for r in rows)


@pytest.mark.parametrize("method", ["smote", "ros"])
def test_seeded_determinism(method):
    X, y = data()
    a, b, c = (fit_resample(method, X, y, seed=s) for s in (3, 3, 4))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_smote_lowers_k_for_small_classes():
    X, y = data(counts=(30, 3, 2))
    with pytest.warns(UserWarning, match="class 2 has 2 rows.*using k_neighbors=1"):
        X2, y2, origin = fit_resample("smote", X, y, k_neighbors=5)
    assert np.bincount(y2).tolist() == [30, 30, 30]
    assert (origin[len(X):] == -1).all()


def test_smote_copies_a_single_row_class():
    X, y = data(counts=(10, 4, 1))
    with pytest.warns(UserWarning, match="single row"):
        X2, y2, origin = fit_resample("smote", X, y, k_neighbors=2)
    assert np.bincount(y2).tolist() == [10, 10, 10]
    lone = np.flatnonzero(y == 2)[0]
    assert (origin[y2 == 2] == lone).all()
    assert (X2[y2 == 2] == X[lone]).all()
    assert (origin[y2 == 1][4:] == -1).all()


@pytest.mark.parametrize("method", ["none", "class_weights"])
def test_none_and_class_weights_leave_data_alone(method):
    X, y = data()
    X2, y2, origin = fit_resample(method, X, y)
    assert np.array_equal(X2, X) and np.array_equal(y2, y)
    assert np.array_equal(origin, np.arange(len(y)))
    one = np.zeros(5, np.int64)
    assert len(fit_resample(method, X[:5], one)[0]) == 5


@pytest.mark.parametrize("method", ["smote", "ros"])
def test_single_class_is_a_clear_error(method):
    X, _ = data()
    with pytest.raises(ValueError, match="single class"):
        fit_resample(method, X, np.zeros(len(X), np.int64))


@pytest.mark.parametrize("X, y, match", [
    (np.zeros((3, 2)), np.array([0, 1]), "y"),
    (np.zeros((0, 2)), np.zeros(0, np.int64), "n > 0"),
    (np.zeros((2, 2)), np.array([0.0, 1.0]), "integer class indices"),
])
def test_bad_inputs(X, y, match):
    with pytest.raises(ValueError, match=match):
        fit_resample("smote", X, y)


def test_class_weights_balanced_formula():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.dtype == np.float32
    assert np.allclose(w, [4 / (2 * 3), 4 / (2 * 1), 0.0])
    assert np.allclose(class_weights(np.array([0, 1, 2]), 3), 1.0)
    with pytest.raises(ValueError, match="n_classes"):
        class_weights(np.array([0, 3]), 3)
