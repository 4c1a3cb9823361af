"""Augmentation steps, chains, SNR mixing, dataset variants and the Ray Data stage."""

from __future__ import annotations

import io as pyio
import random
import tarfile

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ser_ray import audio

from ser_ray.storage import Storage
from ser_ray.learn.augment import (DEFAULT_CHAIN, VARIANTS, AugmentError, Chain, Gain, Pitch, Shift,
                                   Stretch, augmented_features, available_steps, make_step,
                                   mix_at_snr, noisy_features, read_sources, row_rng,
                                   select_variant)
from ser_ray.config import AudioConfig
from ser_ray.features import get_extractor

SR = 16000


def tone(seconds=1.0, freq=220.0, sr=SR, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speechy(seconds, seed, sr=SR):
    """A tone with harmonics, an amplitude envelope and a little noise: enough for MFCCs."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * seed
    y = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    y *= 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    y = y + 0.01 * rng.standard_normal(t.size)
    return (0.4 * y / np.max(np.abs(y))).astype(np.float32)


def dominant_hz(y, sr=SR):
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spec)]


def measured_snr(clean, mixed):
    noise = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise ** 2))


# ------------------------------------------------------------------------------------- steps
def test_shift_rolls_by_the_drawn_fraction():
    y = speechy(1.0, 0)
    out = Shift(min_shift=0.25, max_shift=0.25).apply(y, SR, np.random.default_rng(0))
    np.testing.assert_array_equal(out, np.roll(y, 4000))
    cut = Shift(min_shift=-0.25, max_shift=-0.25, rollover=False).apply(
        y, SR, np.random.default_rng(0))
    np.testing.assert_array_equal(cut[:-4000], y[4000:])
    assert not cut[-4000:].any()


def test_gain_scales_by_the_db():
    y = speechy(0.5, 1)
    out = Gain(min_db=6.0, max_db=6.0).apply(y, SR, np.random.default_rng(0))
    np.testing.assert_allclose(out, y * 10 ** (6 / 20), rtol=1e-5, atol=1e-7)


def test_stretch_keeps_length_by_default_and_changes_it_when_asked():
    y = speechy(1.0, 2)
    kept = Stretch(min_rate=1.25, max_rate=1.25).apply(y, SR, np.random.default_rng(0))
    assert kept.shape == y.shape and not np.allclose(kept, y)
    fast = Stretch(min_rate=1.25, max_rate=1.25, keep_length=False).apply(
        y, SR, np.random.default_rng(0))
    slow = Stretch(min_rate=0.8, max_rate=0.8, keep_length=False).apply(
        y, SR, np.random.default_rng(0))
    assert abs(len(fast) - len(y) / 1.25) <= 0.01 * len(y)
    assert abs(len(slow) - len(y) / 0.8) <= 0.01 * len(y)


def test_pitch_keeps_length_and_moves_the_frequency():
    y = tone(1.0, 220.0)
    up = Pitch(min_semitones=12, max_semitones=12).apply(y, SR, np.random.default_rng(0))
    assert up.shape == y.shape and up.dtype == np.float32
    assert abs(dominant_hz(up) - 440.0) < 10.0


def test_noise_steps_stay_within_their_amplitude():
    y = speechy(0.5, 3)
    peak = np.max(np.abs(y))
    noise = make_step("uniform_noise").apply(y, SR, np.random.default_rng(0)) - y
    assert 0 < np.max(np.abs(noise)) <= 0.035 * peak + 1e-6
    assert np.std(noise) == pytest.approx(0.035 * peak / np.sqrt(3), rel=0.05)
    absolute = make_step("uniform_noise", relative=False).apply(y, SR, np.random.default_rng(0))
    assert np.max(np.abs(absolute - y)) > 0.035 * peak  # not scaled by the 0.4 peak
    g = make_step("gaussian_noise", min_amplitude=0.01, max_amplitude=0.02)
    std = np.std(g.apply(y, SR, np.random.default_rng(0)) - y)
    assert 0.0095 < std < 0.021


def test_probability_zero_skips_a_step():
    y = speechy(0.5, 4)
    chain = Chain.from_config([{"name": "gain", "p": 0.0}, {"name": "uniform_noise", "p": 0}])
    np.testing.assert_array_equal(chain(y, SR, np.random.default_rng(0)), y)


def test_chain_is_deterministic_per_seed_and_leaves_global_random_alone():
    y = speechy(1.0, 5)
    chain = Chain.from_config([{"name": "uniform_noise"}, {"name": "shift"},
                               {"name": "stretch"}, {"name": "pitch"}, {"name": "gain"}])
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    a = chain(y, SR, np.random.default_rng(1))
    assert random.random() == expected_next  # audiomentations' draws were undone
    b = chain(y, SR, np.random.default_rng(1))
    c = chain(y, SR, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == y.shape and not np.allclose(a, c)


def test_default_chain_builds_and_keeps_length():
    chain = Chain.from_config(DEFAULT_CHAIN)
    assert [s.name for s in chain.steps] == ["uniform_noise", "shift", "stretch", "pitch", "gain"]
    y = speechy(0.5, 6)
    outs = [chain(y, SR, np.random.default_rng(k)) for k in range(3)]
    assert all(o.shape == y.shape and not np.allclose(o, y) for o in outs)


def test_row_rng_is_stable_and_distinct_per_copy():
    draw = lambda *k: row_rng(*k).random(4)  # noqa: E731
    np.testing.assert_array_equal(draw(0, "ravdess/a", 1), draw(0, "ravdess/a", 1))
    assert not np.allclose(draw(0, "ravdess/a", 0), draw(0, "ravdess/a", 1))
    assert not np.allclose(draw(0, "ravdess/a", 0), draw(0, "ravdess/b", 0))
    assert not np.allclose(draw(0, "ravdess/a", 0), draw(1, "ravdess/a", 0))


# --------------------------------------------------------------------------------- mixing
@pytest.mark.parametrize("snr", [0.0, 15.0, 20.0, 40.0])
@pytest.mark.parametrize("noise_len", [3000, 40000])  # looped and cropped
def test_mix_at_snr_hits_the_target(snr, noise_len):
    clean = speechy(1.0, 6)
    noise = np.random.default_rng(9).uniform(-1, 1, noise_len).astype(np.float32)
    mixed = mix_at_snr(clean, noise, snr, np.random.default_rng(0), normalise=False)
    assert mixed.shape == clean.shape
    assert measured_snr(clean, mixed) == pytest.approx(snr, abs=0.1)
    normed = mix_at_snr(clean, noise, snr, np.random.default_rng(0))
    assert np.max(np.abs(normed)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(normed, mixed / np.max(np.abs(mixed)), atol=1e-6)


def test_mix_at_snr_uses_the_rng_for_the_noise_offset():
    clean, noise = speechy(0.5, 7), np.random.default_rng(1).standard_normal(20000)
    a = mix_at_snr(clean, noise, 10, np.random.default_rng(0))
    assert np.array_equal(a, mix_at_snr(clean, noise, 10, np.random.default_rng(0)))
    assert not np.allclose(a, mix_at_snr(clean, noise, 10, np.random.default_rng(5)))
    silent = np.zeros(100, np.float32)
    np.testing.assert_array_equal(mix_at_snr(silent, noise, 10, np.random.default_rng(0)), silent)


def test_background_noise_step_reads_a_folder(tmp_path):
    bank = tmp_path / "noise"
    bank.mkdir()
    rng = np.random.default_rng(0)
    sf.write(bank / "hum.wav", 0.1 * rng.standard_normal(8000), 8000)  # resampled to 16 kHz
    sf.write(bank / "hiss.flac", 0.2 * rng.standard_normal(12000), SR)
    chain = Chain.from_config([{"name": "background_noise", "noise": str(bank), "snr_db": [20]}])
    y = speechy(1.0, 8)
    out = chain(y, SR, np.random.default_rng(0))
    assert out.shape == y.shape and np.max(np.abs(out)) == pytest.approx(1.0, abs=1e-6)
    # Undo the peak normalisation (least squares gain) and the rest is noise ~20 dB down.
    k = np.dot(out, y) / np.dot(y, y)
    assert measured_snr(y, out / k) == pytest.approx(20.0, abs=1.0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Chain.from_config([{"name": "background_noise", "noise": str(tmp_path / "nowhere")}])(
            y, SR, np.random.default_rng(0))


# --------------------------------------------------------------------------------- config
def test_unknown_step_and_field_errors_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown augment step 'pich'.*pitch"):
        Chain.from_config([{"name": "pich"}])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['semis'\].*max_semitones"):
        Chain.from_config([{"name": "pitch", "semis": 3}])
    with pytest.raises(ValueError, match="'name' key"):
        Chain.from_config([{"pitch": {}}])
    with pytest.raises(ValueError, match="min_db=6.0 > max_db=0.0"):
        make_step("gain", min_db=6, max_db=0)
    with pytest.raises(ValueError, match="p=1.5"):
        make_step("shift", p=1.5)
    with pytest.raises(ValueError, match="no steps"):
        Chain.from_config([])
    assert set(available_steps()) >= {"uniform_noise", "gaussian_noise", "shift", "stretch",
                                      "pitch", "gain", "background_noise"}


def test_chain_from_config_round_trips_with_a_stable_name():
    cfg = [{"name": "pitch", "min_semitones": -2, "max_semitones": 2, "p": 0.5},
           {"name": "background_noise", "noise": ["a.wav", "b.wav"], "snr_db": [15, 40]}]
    chain = Chain.from_config(cfg)
    assert isinstance(chain.steps[0], Pitch) and chain.steps[0].min_semitones == -2.0
    assert chain.steps[1].snr_db == (15.0, 40.0) and chain.steps[1].noise == ("a.wav", "b.wav")
    assert Chain.from_config(chain.to_config()) == chain
    assert chain.name == Chain.from_config(cfg).name
    assert chain.name.startswith("pitch+background_noise-")
    cfg[0]["max_semitones"] = 3
    assert Chain.from_config(cfg).name != chain.name
    assert Chain.from_config(cfg, name="mine").name == "mine"


# -------------------------------------------------------------------------------- variants
def test_select_variant():
    meta = pd.DataFrame({"utterance_id": ["a", "b"], "source_id": ["a", "b"]})
    orig = (np.zeros((2, 3), np.float32), meta)
    aug = (np.ones((4, 3), np.float32),
           pd.DataFrame({"utterance_id": list("aabb"), "source_id": list("aabb"),
                         "augment": ["c"] * 4, "copy": [0, 1, 0, 1]}))
    x, m = select_variant("none", orig, aug)
    assert len(x) == 2 and list(m["augment"]) == ["none"] * 2 and list(m["copy"]) == [-1, -1]
    x, m = select_variant("augmented", orig, aug)
    assert x.sum() == 12 and len(m) == 4
    x, m = select_variant("merged", orig, aug)
    assert x.shape == (6, 3) and list(m["augment"]) == ["none"] * 2 + ["c"] * 4
    x, _ = select_variant("merged", ([np.zeros((5, 3))], meta[:1]), ([np.ones((7, 3))], aug[1][:1]))
    assert [a.shape for a in x] == [(5, 3), (7, 3)]  # ragged arrays stay a list
    with pytest.raises(ValueError, match="needs augmented rows"):
        select_variant("merged", orig)
    with pytest.raises(ValueError, match="one of"):
        select_variant("both", orig, aug)
    assert set(VARIANTS) == {"none", "augmented", "merged"}


def test_read_sources_reads_tar_members_and_names_missing_files(tmp_path):
    buf = pyio.BytesIO()
    sf.write(buf, tone(0.2), SR, format="WAV")
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        info = tarfile.TarInfo("x/utt1.wav")
        info.size = len(buf.getvalue())
        tf.addfile(info, pyio.BytesIO(buf.getvalue()))
    got = read_sources(Storage(), [f"{shard}#x/utt1.wav"])
    assert got[f"{shard}#x/utt1.wav"] == buf.getvalue()
    with pytest.raises(AugmentError, match="gone.wav"):
        read_sources(Storage(), [str(tmp_path / "gone.wav")])
    with pytest.raises(AugmentError, match="x/utt2.wav"):
        read_sources(Storage(), [f"{shard}#x/utt2.wav"])


# ------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("wavs")
    rows = []
    for i, seconds in enumerate([1.2, 0.7, 1.0]):
        path = root / f"spk{i % 2}_utt{i}.wav"
        sf.write(path, speechy(seconds, i), SR)
        utt = f"demo/spk{i % 2}_utt{i}"
        rows.append({"utterance_id": utt, "source_id": utt,
                     "uri": str(path), "corpus": "demo", "speaker": f"demo:{i % 2}",
                     "sex": None if i == 2 else "female", "label": ["angry", "sad", "happy"][i]})
    return pd.DataFrame(rows)


def clean_blocks(manifest, cfg, ext):
    """Features of the originals, computed the way prepare does (condition -> blocks -> ext)."""
    out = {}
    for r in manifest.itertuples():
        y = audio.condition(audio.decode(open(r.uri, "rb").read()), cfg)
        for i, (_, seg) in enumerate(audio.split_blocks(y, cfg.sample_rate, cfg.block_s)):
            out[(r.utterance_id, i)] = ext(seg, cfg.sample_rate)
    return out


def test_augmented_features_on_ray(ray_session, tiny_manifest):
    cfg = AudioConfig(block_s=0.5, normalise="peak")
    ext = get_extractor("mfcc")
    chain = Chain.from_config([{"name": "uniform_noise"},
                               {"name": "pitch", "min_semitones": -2, "max_semitones": 2},
                               {"name": "gain", "min_db": -3, "max_db": 3}])
    xs, meta = augmented_features(tiny_manifest, audio_cfg=cfg, extractor=ext, chain=chain,
                                  copies=2, seed=7)
    clean = clean_blocks(tiny_manifest, cfg, ext)
    assert len(clean) == 5  # 1.2 s -> 2 blocks, 0.7 s -> 1 (0.2 s tail dropped), 1.0 s -> 2
    assert len(xs) == len(meta) == 2 * len(clean)
    assert list(meta.columns[:6]) == ["utterance_id", "source_id", "speaker", "sex", "corpus",
                                      "label"]
    assert set(meta["augment"]) == {chain.name} and sorted(set(meta["copy"])) == [0, 1]
    assert (meta["source_id"] == meta["utterance_id"]).all()  # kept from the manifest
    assert meta["sex"].isna().sum() == 2 * 2  # utt2's two blocks, both copies
    by_utt = tiny_manifest.set_index("utterance_id")
    assert (meta["label"].to_numpy() == by_utt.loc[meta["utterance_id"], "label"].to_numpy()).all()
    keys = list(zip(meta["utterance_id"], meta["block_index"], meta["copy"]))
    assert keys == sorted(keys)
    for x, (utt, block, copy) in zip(xs, keys):
        ref = clean[(utt, block)]
        assert x.dtype == np.float32 and x.shape == ref.shape
        assert not np.allclose(x, ref, atol=1e-3)
    copies = {k[2]: x for x, k in zip(xs, keys) if k[:2] == keys[0][:2]}
    assert not np.allclose(copies[0], copies[1])

    xs2, meta2 = augmented_features(tiny_manifest, audio_cfg=cfg, extractor=ext, chain=chain,
                                    copies=2, seed=7, num_workers=1)
    pd.testing.assert_frame_equal(meta, meta2)
    for a, b in zip(xs, xs2):
        np.testing.assert_array_equal(a, b)

    xs3, _ = augmented_features(tiny_manifest[:1], audio_cfg=cfg, extractor=ext,
                                chain=chain.to_config(), copies=1, seed=8)
    assert not np.allclose(xs3[0], xs[0])  # another seed, another copy


def test_noisy_features_on_ray(ray_session, tiny_manifest, tmp_path):
    sf.write(tmp_path / "babble.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 6000), SR)
    cfg = AudioConfig(block_s=0.5, normalise="peak")
    ext = get_extractor("mfcc", pooling="mean")
    rows = tiny_manifest[:2]
    xs, meta = noisy_features(rows, audio_cfg=cfg, extractor=ext, noise=str(tmp_path),
                              snr_db=[15, 40], seed=0)
    clean = clean_blocks(rows, cfg, ext)
    assert len(xs) == 2 * len(clean) and sorted(set(meta["snr_db"])) == [15.0, 40.0]
    assert set(meta["augment"]) == {"noise-snr15dB", "noise-snr40dB"}
    for (utt, block), ref in clean.items():
        sel = (meta["utterance_id"] == utt) & (meta["block_index"] == block)
        d = {s: np.linalg.norm(xs[i] - ref) for i, s in zip(np.flatnonzero(sel),
                                                             meta.loc[sel, "snr_db"])}
        assert d[40.0] < d[15.0]  # more noise, further from the clean features


def test_augmented_features_names_a_file_that_no_longer_decodes(ray_session, tiny_manifest,
                                                               tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt " + b"\0" * 8)
    rows = tiny_manifest[:1].assign(uri=str(bad))
    with pytest.raises(AugmentError, match=r"broken.wav \(demo/spk0_utt0\) no longer decodes"):
        augmented_features(rows, audio_cfg=AudioConfig(), extractor=get_extractor("mfcc"),
                           chain=[{"name": "gain"}], seed=0)


def test_babble_mixes_voices_into_a_noise_bank(tmp_path):
    import soundfile as sf

    from ser_ray.learn.augment import babble, noise_bank

    rng = np.random.default_rng(0)
    src = tmp_path / "speech"
    src.mkdir()
    for k in range(3):  # three "talkers" at very different levels
        t = np.arange(8000 + 4000 * k) / 16000
        y = (10.0 ** -k) * np.sin(2 * np.pi * (150 + 50 * k) * t) * (1 + rng.random(t.size))
        sf.write(src / f"v{k}.wav", (0.5 * y / np.abs(y).max() * 10.0 ** -k).astype(np.float32),
                 16000)
    paths = babble([str(src)], str(tmp_path / "bank"), files=2, voices=3, seconds=2.0, seed=1)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["babble-00.wav", "babble-01.wav"]
    bank = noise_bank((str(tmp_path / "bank"),), 16000)
    assert [len(y) for y in bank] == [32000, 32000]
    assert all(abs(np.abs(y).max() - 0.9) < 1e-3 for y in bank)
    spec = np.abs(np.fft.rfft(bank[0]))
    # every voice at the same RMS: the quietest talker's tone is as strong as the loudest's
    f = np.fft.rfftfreq(32000, 1 / 16000)
    peaks = [spec[np.argmin(np.abs(f - hz))] for hz in (150, 200, 250)]
    assert max(peaks) / min(peaks) < 10  # at their own levels they would differ 100x
    again = babble([str(src)], str(tmp_path / "bank2"), files=2, voices=3, seconds=2.0, seed=1)
    assert np.array_equal(sf.read(again[0])[0], sf.read(paths[0])[0])
    with pytest.raises(ValueError, match="voices"):
        babble([str(src)], str(tmp_path / "x"), voices=0)
