"""Feature extractors and the array codec, on tiny generated audio."""

from __future__ import annotations

import pickle
import subprocess
import sys

import librosa
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ser_ray.features import available, extractor_config, get_extractor
from ser_ray.features.arrays import column_to_numpy, decode, encode, stack, to_arrow_columns
from ser_ray.schema import FEATURE_SCHEMA

SR = 16000


def tone(seconds: float = 2.0, f0: float = 220.0, seed: int = 0) -> np.ndarray:
    """Harmonic tone with vibrato plus a little noise: enough structure for every feature."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * f0 * t + 3 * np.sin(2 * np.pi * 5 * t)
    y = sum(0.3 / k * np.sin(k * phase) for k in (1, 2, 3))
    y = y + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return y.astype(np.float32)


def noise_burst(seconds: float = 2.0, seed: int = 1) -> np.ndarray:
    """High-passed noise with a decaying envelope: spectrally unlike :func:`tone`."""
    n = int(seconds * SR)
    y = np.diff(np.random.default_rng(seed).standard_normal(n + 1)) * np.exp(-np.arange(n) / SR)
    return (0.2 * y).astype(np.float32)


EXPECTED_SHAPES = {
    "mfcc": (201, 120),  # 1 + 32000 // 160 frames, 40 MFCC x (1 + 2 deltas)
    "logmel": (128, 201),
    "stft": (257, 501),  # a whole 2 s clip; the 1 s block case is tested separately
    "handcrafted173": (173,),
    "handcrafted94": (94,),
    "egemaps": (88,),
    "waveform": (32000,),  # the conditioned 2 s clip itself
}
# extractors that need pretrained weights: tested with tiny models in tests/test_encoders.py
# (encoder) and tests/test_fusion.py (transcript, text)
NEEDS_WEIGHTS = ("encoder", "transcript", "text")


def test_registry_lists_every_extractor():
    assert available() == sorted([*EXPECTED_SHAPES, *NEEDS_WEIGHTS])


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_shape_dtype_finite(name):
    x = get_extractor(name)(tone(), SR)
    assert x.shape == EXPECTED_SHAPES[name]
    assert x.dtype == np.float32
    assert np.all(np.isfinite(x))


def test_stft_one_second_block_is_257_by_251():
    e = get_extractor("stft")
    assert e.block_s == 1.0
    assert e(tone(1.0), SR).shape == (257, 251)
    db = get_extractor("stft", scale="db")(tone(1.0), SR)
    assert db.shape == (257, 251) and db.max() == pytest.approx(0.0) and db.min() >= -80.0


@pytest.mark.parametrize(
    "name, overrides, shape",
    [
        ("mfcc", {"n_mfcc": 13, "deltas": 0}, (201, 13)),
        ("mfcc", {"deltas": 1}, (201, 80)),
        ("mfcc", {"pooling": "mean"}, (120,)),
        ("mfcc", {"pooling": "mean_std", "n_mfcc": 20}, (120,)),
        ("logmel", {"n_mels": 64, "hop_length": 320}, (64, 101)),
        ("stft", {"n_fft": 256, "hop_length": 128}, (129, 126)),
        ("handcrafted173", {"tonnetz_chroma": "stft", "mel_db": True}, (173,)),
        ("handcrafted94", {"n_mels": 40, "n_mfcc": 13}, (67,)),
    ],
)
def test_overrides_change_shape(name, overrides, shape):
    e = get_extractor(name, **overrides)
    assert extractor_config(e) == {**extractor_config(get_extractor(name)), **overrides}
    assert e(tone(2.0 if name != "stft" else 1.0), SR).shape == shape


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="available: .*'logmel'.*'mfcc'"):
        get_extractor("mfcc2")
    with pytest.raises(ValueError, match="no field.*'n_mfccs'.*valid fields: .*'n_mfcc'"):
        get_extractor("mfcc", n_mfccs=13)
    with pytest.raises(ValueError, match="pooling='max'"):
        get_extractor("mfcc", pooling="max")
    with pytest.raises(ValueError, match="tonnetz_chroma"):
        get_extractor("handcrafted173", tonnetz_chroma="vqt")


def test_config_is_plain_data_with_name():
    cfg = extractor_config(get_extractor("mfcc", n_mfcc=13))
    assert cfg["name"] == "mfcc" and cfg["n_mfcc"] == 13 and cfg["block_s"] is None
    assert get_extractor(**cfg) == get_extractor("mfcc", n_mfcc=13)  # a written config rebuilds it


def test_mfcc_delta_blocks_in_order():
    y = tone()
    x = get_extractor("mfcc", n_mfcc=20)(y, SR)
    m, d1, d2 = x[:, :20].T, x[:, 20:40].T, x[:, 40:].T
    ref = librosa.feature.mfcc(
        y=y, sr=SR, n_mfcc=20, n_fft=512, hop_length=160, win_length=400, n_mels=64
    )
    np.testing.assert_allclose(m, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d1, librosa.feature.delta(m), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d2, librosa.feature.delta(m, order=2), rtol=1e-5, atol=1e-5)
    assert not np.allclose(d1, d2)  # the blocks are distinguishable, so a swap would be caught
    pooled = get_extractor("mfcc", n_mfcc=20, pooling="mean_std")(y, SR)
    np.testing.assert_allclose(pooled, np.concatenate([x.mean(0), x.std(0)]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seconds", [2.0, 0.1, 0.0805])  # 0.08 s = 9 frames, delta's minimum
def test_spectral_features_equal_librosa_functions(seconds):
    """MFCC/log-mel/STFT (float32 FFT over strided frames) equal librosa's own functions to
    float32 rounding: within 1e-3 dB / cepstral units, and 1e-5 of the peak magnitude."""
    from ser_ray.features import spectral

    y = tone(seconds)
    x = get_extractor("mfcc")(y, SR)
    ref = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=40, n_fft=512, hop_length=160,
                               win_length=400, n_mels=64)
    np.testing.assert_allclose(x[:, :40].T, ref, rtol=1e-5, atol=1e-3)
    assert x.flags.c_contiguous and x.shape == (1 + len(y) // 160, 120)  # time-major, no copy
    for order in (1, 2):  # same filter; the edge fit differs only by float32 rounding
        np.testing.assert_allclose(x[:, 40 * order:40 * (order + 1)].T,
                                   librosa.feature.delta(ref, order=order), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(spectral.delta(ref[:, :9], order=order),
                                   librosa.feature.delta(ref[:, :9], order=order),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="width=9 cannot exceed the 8 frames"):
        spectral.delta(ref[:, :8])
    if seconds >= 1024 / SR:
        opts = {"n_mels": 40, "fmin": 50.0, "fmax": 7000.0}
        mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=1024, hop_length=160,
                                             win_length=400, **opts)
        np.testing.assert_allclose(get_extractor("logmel", **opts)(y, SR),
                                   librosa.power_to_db(mel, ref=np.max, top_db=80.0), atol=1e-3)
    stft = np.abs(librosa.stft(y, n_fft=512, hop_length=64, win_length=256, window="hamming"))
    np.testing.assert_allclose(get_extractor("stft")(y, SR), stft, rtol=1e-4,
                               atol=1e-5 * stft.max())


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [
    (16000, 512, 64, 0.0, None), (16000, 1024, 128, 0.0, None), (22050, 2048, 128, 0.0, 8000.0),
    (8000, 256, 40, 50.0, 3800.0), (44100, 2048, 96, 20.0, None)])
def test_numpy_definitions_equal_librosa_and_scipy(sr, n_fft, n_mels, fmin, fmax):
    """The mel bank, windows, dB conversion and Savitzky-Golay filter that spectral.py computes
    without importing librosa are librosa's / scipy's, bit for bit where the arithmetic is the
    same and to float64 rounding for the least-squares filter."""
    import scipy.signal

    from ser_ray.features import spectral

    np.testing.assert_array_equal(spectral.mel_basis(sr, n_fft, n_mels, fmin, fmax),
                                  librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels,
                                                      fmin=fmin, fmax=fmax))
    hz = np.array([0.0, 300.0, 999.9, 1000.0, 1000.1, 4000.0, sr / 2])
    np.testing.assert_array_equal(spectral.hz_to_mel(hz), librosa.hz_to_mel(hz))
    np.testing.assert_array_equal(spectral.mel_to_hz(spectral.hz_to_mel(hz)),
                                  librosa.mel_to_hz(librosa.hz_to_mel(hz)))
    for name in ("hann", "hamming", "blackman"):
        for n in (1, 2, 255, 400, n_fft):
            np.testing.assert_array_equal(spectral.analysis_window(name, n),
                                          scipy.signal.get_window(name, n, fftbins=True))
    power = np.random.default_rng(sr).gamma(0.5, size=(n_mels, 50)).astype(np.float32) ** 4
    power[0, :3] = 0.0  # floored at amin
    for kw in ({}, {"ref": np.max, "top_db": 80.0}, {"ref": 3.0, "top_db": None}):
        np.testing.assert_array_equal(spectral.power_to_db(power, **kw),
                                      librosa.power_to_db(power, **kw))
    for width in (3, 5, 9, 11):
        for order in (1, 2):
            np.testing.assert_allclose(spectral.savgol_coeffs(width, order),
                                       scipy.signal.savgol_coeffs(width, order, deriv=order),
                                       rtol=1e-12, atol=1e-14)
    x = np.random.default_rng(1).normal(size=(3, 40, 2))  # float64 in, float64 out, any axis
    for order in (1, 2):
        d = spectral.delta(x, order=order, width=5, axis=1)
        assert d.dtype == np.float64 and d.shape == x.shape
        np.testing.assert_allclose(d, librosa.feature.delta(x, order=order, width=5, axis=1),
                                   rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="odd integer"):
        spectral.delta(x, width=4, axis=1)


def test_spectral_features_do_not_import_librosa_kernels():
    """A fresh worker computing mfcc/logmel/stft (magnitude) never loads numba or scipy.signal:
    importing those costs each Ray worker seconds of start-up (see spectral.py)."""
    code = ("import sys, numpy as np\n"
            "from ser_ray.features import get_extractor\n"
            "y = np.random.default_rng(0).normal(size=16000).astype(np.float32)\n"
            "for name in ('mfcc', 'logmel', 'stft'):\n"
            "    assert np.isfinite(get_extractor(name)(y, 16000)).all()\n"
            "print(sorted(m for m in ('numba', 'scipy.signal', 'librosa.core', 'librosa.util')\n"
            "             if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_mel_basis_and_window_are_built_once_and_read_only():
    from ser_ray.features import spectral

    a = spectral.mel_basis(SR, 512, 64, 0.0, None)
    assert spectral.mel_basis(SR, 512, 64, 0.0, None) is a
    np.testing.assert_array_equal(a, librosa.filters.mel(sr=SR, n_fft=512, n_mels=64))
    w = spectral.analysis_window("hann", 400)
    assert spectral.analysis_window("hann", 400) is w
    for arr in (a, w):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1.0


def test_handcrafted173_separates_different_sounds():
    e = get_extractor("handcrafted173", tonnetz_chroma="stft")
    a, b = e(tone(), SR), e(noise_burst(), SR)
    assert not np.allclose(a, b, rtol=0.05)
    np.testing.assert_array_equal(a, e(tone(), SR))  # deterministic
    # the MFCC block is what the paper's librosa.feature.mfcc(y=...) call gives
    paper = librosa.feature.mfcc(y=tone(), sr=SR, n_mfcc=20).mean(axis=1)
    np.testing.assert_allclose(a[:20], paper, rtol=1e-4, atol=1e-3)


def test_handcrafted173_mel_db_removes_level():
    y = tone()
    e = get_extractor("handcrafted173", tonnetz_chroma="stft")
    raw, raw_quiet = e(y, SR), e(0.1 * y, SR)
    np.testing.assert_allclose(raw_quiet[20:148], raw[20:148] * 0.01, rtol=1e-3)  # power scales
    e = get_extractor("handcrafted173", tonnetz_chroma="stft", mel_db=True)
    db, db_quiet = e(y, SR), e(0.1 * y, SR)
    np.testing.assert_allclose(db_quiet[20:148], db[20:148], atol=1e-2)  # level-invariant
    assert db[20:148].max() <= 0.0 and db[20:148].min() < -10.0


def test_logmel_is_level_invariant():
    e = get_extractor("logmel")
    y = tone()
    loud, quiet = e(y, SR), e(0.1 * y, SR)
    assert loud.max() == pytest.approx(0.0)
    np.testing.assert_allclose(quiet, loud, atol=1e-3)
    assert not np.allclose(e(noise_burst(), SR), loud, atol=1.0)  # and not constant


def test_egemaps_88_and_picklable_before_and_after_use():
    e = get_extractor("egemaps")
    e2 = pickle.loads(pickle.dumps(e))  # as shipped into a Ray actor, before first use
    x = e2(tone(), SR)
    assert x.shape == (88,) and np.all(np.isfinite(x))
    assert "_smile_obj" not in e2.__getstate__()  # after use: the native handle stays behind
    e3 = pickle.loads(pickle.dumps(e2))
    np.testing.assert_array_equal(e3(tone(), SR), x)
    assert not np.allclose(e2(noise_burst(), SR), x)


def test_input_validation():
    with pytest.raises(ValueError, match="22050 Hz.*expects 16000 Hz"):
        get_extractor("mfcc")(tone(), 22050)
    assert get_extractor("mfcc", sample_rate=22050)(tone(), 22050).ndim == 2
    with pytest.raises(ValueError, match="mono"):
        get_extractor("logmel")(np.stack([tone(), tone()]), SR)
    with pytest.raises(ValueError, match="NaN"):
        get_extractor("logmel")(np.full(4000, np.nan, np.float32), SR)


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_short_input_works_at_minimum_and_fails_clearly_below(name):
    e = get_extractor(name)
    n = e.min_samples(SR)
    y = tone(0.5)
    assert np.all(np.isfinite(e(y[:n], SR)))
    with pytest.raises(ValueError, match=f"{name}: input has {n - 1} samples .* at least {n}"):
        e(y[: n - 1], SR)


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_silence_gives_finite_output(name):
    assert np.all(np.isfinite(get_extractor(name)(np.zeros(SR, np.float32), SR)))


# ---- array codec -------------------------------------------------------------------------------

def _arrays():
    rng = np.random.default_rng(7)
    return [
        rng.standard_normal(173).astype(np.float32),
        rng.standard_normal((5, 3)).astype(np.float32) * 1e-30,
        rng.standard_normal((2, 3, 4)).astype(np.float32) * 1e30,
        np.zeros((0, 4), np.float32),
        np.array([np.finfo(np.float32).tiny, -0.0, 1.0], np.float32),
    ]


def test_encode_decode_exact():
    for a in _arrays():
        values, shape = encode(a)
        assert values.dtype == np.float32 and values.ndim == 1 and shape == list(a.shape)
        np.testing.assert_array_equal(decode(values, shape), a)
    # non-contiguous input is flattened in logical (C) order
    t = np.arange(6, dtype=np.float32).reshape(2, 3).T
    np.testing.assert_array_equal(encode(t)[0], [0, 3, 1, 4, 2, 5])


def test_parquet_round_trip_exact(tmp_path):
    arrays = _arrays()
    values, shape = to_arrow_columns(arrays)
    assert values.type == FEATURE_SCHEMA.field("values").type
    assert shape.type == FEATURE_SCHEMA.field("shape").type
    path = tmp_path / "f.parquet"
    table = pa.table({"id": list(range(len(arrays))), "values": values, "shape": shape})
    pq.write_table(table, path, row_group_size=2)
    table = pq.read_table(path)
    assert table.column("values").num_chunks > 1  # exercises chunk handling
    back = column_to_numpy(table)
    assert len(back) == len(arrays)
    for a, b in zip(arrays, back):
        assert b.dtype == np.float32 and b.shape == a.shape
        assert a.tobytes() == b.tobytes()  # bit-exact, -0.0 included
    # a sliced table (offsets not starting at 0) decodes the right rows
    sliced = column_to_numpy(table.combine_chunks().slice(1, 2))
    assert [s.shape for s in sliced] == [(5, 3), (2, 3, 4)]
    np.testing.assert_array_equal(sliced[1], arrays[2])


def test_stack_same_shapes_and_ragged_error():
    same = [np.full((2, 3), i, np.float32) for i in range(4)]
    table = pa.table(dict(zip(["values", "shape"], to_arrow_columns(same))))
    out = stack(table)
    assert out.shape == (4, 2, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0, 0], [0, 1, 2, 3])
    ragged = pa.table(dict(zip(["values", "shape"], to_arrow_columns(same + [np.zeros((2, 4))]))))
    with pytest.raises(ValueError, match="different shapes"):
        stack(ragged)
    with pytest.raises(ValueError, match="empty"):
        stack(ragged.slice(0, 0))


def test_column_to_numpy_rejects_inconsistent_shape():
    table = pa.table({
        "values": pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32())),
        "shape": pa.array([[2, 2]], pa.list_(pa.int32())),
    })
    with pytest.raises(ValueError, match="row 0: 3 values do not fill shape"):
        column_to_numpy(table)
