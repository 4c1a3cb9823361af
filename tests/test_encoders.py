"""Pretrained speech encoders: extraction, layer selection, heads and fine-tuning modules, with
tiny random models of each family built here and loaded by path (no Ray in this module)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder_helpers import FAMILIES, WHISPER_BASE, make_tiny_encoder
from ser_ray.features.inputs import layer_selection, select_layers
from ser_ray.features import get_extractor

SR = 16000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {f: str(make_tiny_encoder(f, root / f)) for f in FAMILIES}


def _clips(*seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = [np.arange(int(s * SR)) / SR for s in seconds]
    # a voiced-like tone plus noise: non-trivial for every encoder
    return [(0.3 * np.sin(2 * np.pi * (150 + 40 * i) * x) + rng.normal(0, 0.02, len(x)))
            .astype(np.float32) for i, x in enumerate(t)]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_is_pooled_and_a_batch_matches_one_clip_at_a_time(tiny, family):
    e = get_extractor("encoder", model=tiny[family], batch_size=4)
    clips = _clips(0.7, 1.3, 1.0, 2.1)
    alone = [e(y, SR) for y in clips]
    together = e.many(clips, SR)
    assert alone[0].shape == (3, 64)  # embeddings + 2 layers, mean and std of width 32
    for a, b in zip(alone, together):
        assert np.all(np.isfinite(b))
        # the same to float noise: a clip's features never depend on what it was batched with
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())
    # the std half is a spread, and the layers differ from one another
    assert np.all(together[1][:, 32:] >= 0)
    assert not np.allclose(together[1][0], together[1][2])
    # different audio, different features
    assert not np.allclose(together[0], together[3])


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_a_long_clip_is_encoded_in_chunks_and_pooled_over_all_of_them(tiny, family):
    (half,) = _clips(1.0)
    twice = np.concatenate([half, half])
    e = get_extractor("encoder", model=tiny[family], chunk_s=1.0)
    # two identical 1 s chunks: the same frames twice, so the same mean and std as one
    np.testing.assert_allclose(e(twice, SR), e(half, SR), rtol=1e-4, atol=1e-4)
    whole = get_extractor("encoder", model=tiny[family], chunk_s=30.0)(twice, SR)
    assert not np.allclose(whole, e(twice, SR), atol=1e-3)  # one 2 s pass attends across


def test_whisper_is_capped_at_its_window_and_padded_input_is_offered(tiny):
    from ser_ray.encoders import SpeechEncoder

    enc = SpeechEncoder(tiny["whisper"], chunk_s=120)
    assert enc.window_s == pytest.approx(30.0) and enc.chunk_s == pytest.approx(30.0)
    (y,) = _clips(1.5)
    unpadded = get_extractor("encoder", model=tiny["whisper"])(y, SR)
    padded = get_extractor("encoder", model=tiny["whisper"], whisper_input="padded")(y, SR)
    assert padded.shape == unpadded.shape and not np.allclose(padded, unpadded, atol=1e-3)


def test_bad_models_and_options_are_clear_errors(tiny, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE when it is imported; without its constant too, the
    # hub id below is fetched with HTTP retries and back-off (23 s here)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (y,) = _clips(0.5)
    with pytest.raises(ValueError, match="set its model"):
        get_extractor("encoder")
    with pytest.raises(ValueError, match="pass model=DIR"):
        get_extractor("encoder", model="no-such-org/no-such-model")(y, SR)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_extractor("encoder", model=str(tmp_path / "missing"))(y, SR)
    with pytest.raises(ValueError, match="whisper_input"):
        get_extractor("encoder", model=tiny["whisper"], whisper_input="sometimes")
    with pytest.raises(ValueError, match="needs a GPU"):
        get_extractor("encoder", model=tiny["whisper"], dtype="fp16", device="cpu")(y, SR)
    with pytest.raises(ValueError, match="16000 Hz"):
        get_extractor("encoder", model=tiny["whisper"], sample_rate=8000)
    (tmp_path / "bert").mkdir()
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="supported"):
        get_extractor("encoder", model=str(tmp_path / "bert"))(y, SR)


def test_auto_engine_is_ray_data_only_for_encoders_on_gpus(monkeypatch):
    import ray

    from ser_ray.config import PrepareConfig
    from ser_ray.prepare.engines import engine_for

    gpus = {"GPU": 0}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4, **gpus})
    opts = {"encoder": {"model": "unused"}}

    def cfg(**kw):
        return PrepareConfig(features=["mfcc", "encoder"], feature_options=opts, **kw)

    assert engine_for(cfg()) == "tasks"  # CPU cluster: the task engine was the faster one
    assert engine_for(cfg(gpus_per_worker=1.0)) == "tasks"  # asks for GPUs, cluster has none
    gpus["GPU"] = 2
    assert engine_for(cfg(gpus_per_worker=1.0)) == "data"
    assert engine_for(cfg()) == "tasks"  # GPUs there, not asked for
    assert engine_for(PrepareConfig(features=["mfcc"], gpus_per_worker=1.0)) == "tasks"
    assert engine_for(cfg(engine="data")) == "data"
    with pytest.raises(ValueError, match="engine='spark'"):
        engine_for(cfg(engine="spark"))


def test_layer_selection():
    x = np.arange(2 * 7 * 4, dtype=np.float32).reshape(2, 7, 4)
    auto = layer_selection("auto", 7, stack=False)
    assert auto["index"] == [3]
    assert select_layers(x, auto).shape == (2, 4)
    np.testing.assert_array_equal(select_layers(x, auto), x[:, 3])
    assert layer_selection("auto", 7, stack=True)["index"] == list(range(7))
    rng = layer_selection("2-4", 7, stack=False)
    np.testing.assert_array_equal(select_layers(x, rng), x[:, 2:5].reshape(2, 12))
    assert select_layers(x, layer_selection("2-4", 7, stack=True)).shape == (2, 3, 4)
    assert layer_selection("-1", 7, False)["index"] == [6]
    assert layer_selection("all", 7, False)["index"] == list(range(7))
    # the mean half of each state only (columns [mean | std])
    mean = layer_selection("2-3:mean", 7, stack=False)
    assert mean["index"] == [2, 3] and mean["spec"] == "2-3:mean"
    np.testing.assert_array_equal(select_layers(x, mean), x[:, 2:4, :2].reshape(2, 4))
    assert select_layers(x, layer_selection("auto:mean", 7, stack=True)).shape == (2, 7, 2)
    for bad in ("9", "x", "5-2", "3:std"):
        with pytest.raises(ValueError, match="layers="):
            layer_selection(bad, 7, False)
    with pytest.raises(ValueError, match="another encoder"):
        select_layers(np.zeros((2, 5, 4)), auto)


def test_layer_weighted_learns_weights_over_the_states():
    from ser_ray.models import build_model

    net = build_model("layer_weighted", (3, 8), n_classes=2, hidden=[8])
    np.testing.assert_allclose(net.layer_weights(), [1 / 3] * 3, rtol=1e-6)
    # only state 1 carries the class: training moves weight onto it
    rng = np.random.default_rng(0)
    X = rng.normal(size=(128, 3, 8)).astype(np.float32)
    y = rng.integers(0, 2, 128)
    X[:, 1, 0] += 3 * (2 * y - 1)
    X[:, 0] *= 4  # louder noise in state 0
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y)).backward()
        opt.step()
    w = net.layer_weights()
    assert w.argmax() == 1 and w[1] > 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_trains_the_transformer_not_the_frozen_parts_and_saves_a_hf_backbone(
        tiny, family, tmp_path):
    from ser_ray.models.artifact import BACKBONE, load_predictor, save_model_dir
    from ser_ray.models import build_model, model_config

    opts = {"model": tiny[family], "freeze_layers": 1, "pooling": "attentive"}
    net = build_model("encoder_finetune", (SR,), n_classes=3, **opts)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert any(".layers.0." in n for n in frozen) and not any(".layers.1." in n for n in frozen)
    assert any(("conv1" in n or "feature_extractor" in n) for n in frozen)
    clips = _clips(1.0, 0.6, 1.0, 0.8, seed=1)
    X = np.zeros((4, SR), np.float32)
    for i, c in enumerate(clips):
        X[i, : len(c)] = c
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    net.train()
    torch.nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not (changed & frozen)
    assert any(".layers.1." in n for n in changed) and any(n.startswith("head") for n in changed)
    # zero padding after a clip is not part of it: a padded clip predicts as the clip alone
    net.eval()
    with torch.no_grad():
        short = net(torch.from_numpy(X[1:2, : len(clips[1])]))
        padded = net(torch.from_numpy(X[1:2]))
    torch.testing.assert_close(short, padded, atol=1e-3, rtol=1e-3)
    out = save_model_dir(tmp_path / "model", model_name="encoder_finetune",
                         model_config=model_config("encoder_finetune", **opts),
                         input_shape=(SR,), labels=["a", "b", "c"], model=net,
                         feature_config={"features": ["waveform"]})
    assert (out / BACKBONE / "model.safetensors").exists()
    assert (out / BACKBONE / "preprocessor_config.json").exists()
    from safetensors.torch import load_file

    assert not any(k.startswith("backbone.") for k in load_file(str(out / "weights.safetensors")))
    pred = load_predictor(out)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(X)), 1).numpy()
    np.testing.assert_allclose(pred.predict_proba(X), want, atol=1e-5)


@pytest.mark.skipif(not WHISPER_BASE.is_dir(), reason="../shared/models/whisper-base is absent")
def test_real_whisper_base_separates_a_loud_tone_from_quiet_noise():
    e = get_extractor("encoder", model=str(WHISPER_BASE))
    (tone,) = _clips(2.0)
    noise = np.random.default_rng(0).normal(0, 0.01, 2 * SR).astype(np.float32)
    a, b = e.many([tone, noise], SR)
    assert a.shape == (7, 1024)
    assert np.all(np.isfinite(a)) and not np.allclose(a, b, atol=1e-2)
    # the real weights are loaded, not a random initialisation: the last layer is normalised
    assert abs(float(e.encoder().backbone.layer_norm.weight.detach().float().mean()) - 1.0) > 1e-3


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per hidden state (rows of ``(states, d)``): the cosine of two pooled vectors."""
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_int8_features_stay_close_to_fp32_and_the_linear_layers_are_int8(tiny, family):
    from ser_ray.encoders import resolve_precision

    clips = _clips(1.0, 1.1, 1.6)
    fp32 = get_extractor("encoder", model=tiny[family], batch_size=4)
    int8 = get_extractor("encoder", model=tiny[family], batch_size=4, precision="int8")
    a, b = fp32.many(clips, SR), int8.many(clips, SR)
    assert int8.encoder().precision == "int8" and fp32.encoder().precision == "fp32"
    # the Linear weights are int8 tensors now, the fp32 model's are not
    kinds = {type(m.weight).__name__ for m in int8.encoder().backbone.modules()
             if isinstance(m, torch.nn.Linear)}
    assert kinds and "Parameter" not in kinds and "Tensor" not in kinds, kinds
    assert {type(m.weight).__name__ for m in fp32.encoder().backbone.modules()
            if isinstance(m, torch.nn.Linear)} == {"Parameter"}
    for x, y in zip(a, b):
        assert not np.allclose(x, y, atol=1e-6)  # a different computation
        assert _cosine(x, y).min() >= 0.99, _cosine(x, y)
    assert resolve_precision("auto", "auto", "cpu") == "int8"
    assert resolve_precision("auto", "auto", "cuda") == "fp16"
    assert resolve_precision("fp32", "bf16", "cuda") == "bf16"
    with pytest.raises(ValueError, match="CPU path"):
        resolve_precision("int8", "auto", "cuda")
    # what prepare stores and score compares: a setting the extractor accepts
    from ser_ray.features.encoder import resolve_encoder_precision as stored

    assert stored({"precision": "auto"}, gpu=True) == "fp32"  # fp16 by dtype, the float path
    assert stored({"precision": "auto"}, gpu=False) == "int8"
    assert stored({}, gpu=False) == "fp32"  # a folder from before the setting
    assert stored({"precision": "fp32"}, gpu=False, want="int8") == "int8"
    with pytest.raises(ValueError, match="precision"):
        get_extractor("encoder", model=tiny[family], precision="int4")


def test_whisper_buckets_clips_of_near_lengths_and_each_matches_it_alone(tiny):
    from ser_ray.encoders import SpeechEncoder

    enc = SpeechEncoder(tiny["whisper"], batch_size=8)
    clips = _clips(1.0, 1.05, 1.12, 1.2, 2.0, 2.1, seed=4)
    assert enc.exact_batches([len(c) for c in clips], 8) == [[0, 1, 2, 3], [4, 5]]
    together = enc.pooled(clips)
    assert enc.work.summary()["clips_per_batch"] == 3.0
    assert 0 < enc.work.summary()["padding_share"] < 0.2 and enc.work.single == 0
    for y, b in zip(clips, together):
        a = SpeechEncoder(tiny["whisper"]).pooled([y])[0]
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(a).max())


def test_a_gpu_batch_is_sized_from_free_memory(tiny, monkeypatch):
    from ser_ray import encoders

    enc = encoders.SpeechEncoder(tiny["whisper"], batch_size=8)
    assert enc.batch_limit(16000 * 3) == 8  # a CPU: as configured
    enc.device = "cuda:0"  # what the limit reads; nothing runs on it here
    sizes = {}
    for gib in (0.001, 1, 80):
        monkeypatch.setattr(encoders, "free_memory", lambda device, g=gib: int(g * 2 ** 30))
        sizes[gib] = enc.batch_limit(16000 * 3)
    assert sizes[0.001] == 8  # never below the configured size
    assert 8 < sizes[1] <= sizes[80] == encoders.MAX_GPU_BATCH
    # longer clips, fewer of them
    monkeypatch.setattr(encoders, "free_memory", lambda device: 2 ** 28)
    assert enc.batch_limit(16000 * 30) < enc.batch_limit(16000 * 3)


def _stable_wav2vec2(folder) -> str:
    """A tiny wav2vec 2.0 of the large models' kind: layer norms before each block and one
    after the last layer (``do_stable_layer_norm``)."""
    from transformers import AutoModel, Wav2Vec2FeatureExtractor
    from encoder_helpers import _waveform_config

    torch.manual_seed(3)
    cfg = _waveform_config("wav2vec2")
    cfg.do_stable_layer_norm, cfg.feat_extract_norm, cfg.num_hidden_layers = True, "layer", 3
    AutoModel.from_config(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("family", [*FAMILIES, "wav2vec2-stable"])
def test_a_cut_encoder_gives_the_states_below_the_cut_exactly(tiny, family, tmp_path):
    model = _stable_wav2vec2(tmp_path / "m") if family == "wav2vec2-stable" else tiny[family]
    clips = _clips(0.8, 1.0, 1.7, seed=2)
    full = get_extractor("encoder", model=model, batch_size=4).many(clips, SR)
    n = full[0].shape[0] - 1  # layers
    assert n >= 2
    for depth in range(n):
        e = get_extractor("encoder", model=model, batch_size=4, depth=depth)
        cut = e.many(clips, SR)
        assert e.encoder().n_states == depth + 1
        # the layers above the cut are gone from the module, not only skipped
        layers = e.encoder().backbone.layers if family == "whisper" else \
            e.encoder().backbone.encoder.layers
        assert len(layers) == max(depth, 1 if family != "whisper" else 0)
        for a, b in zip(full, cut):
            assert b.shape == (depth + 1, a.shape[1])
            np.testing.assert_allclose(b, a[: depth + 1], rtol=1e-5, atol=1e-5)
    # the top state of the whole encoder (Whisper's after its final layer norm) differs from
    # the layer's raw output a cut there would give: the cut is not a no-op
    assert get_extractor("encoder", model=model, depth=n).encoder().depth is None
    with pytest.raises(ValueError, match="layers"):
        get_extractor("encoder", model=model, depth=n + 1).encoder()
    with pytest.raises(ValueError, match="depth"):
        get_extractor("encoder", model=model, depth=-1)


def test_int8_cut_encoder_and_windows_run_up_to_the_state_the_head_reads(tiny, monkeypatch):
    from ser_ray.features import extractor_config
    from ser_ray.features.windows import WindowFeatures, encoder_depth, shallow

    clips = _clips(1.0, 1.3, seed=5)
    full = get_extractor("encoder", model=tiny["whisper"], precision="int8").many(clips, SR)
    cut = get_extractor("encoder", model=tiny["whisper"], precision="int8", depth=1)
    np.testing.assert_allclose(cut.many(clips, SR), [a[:2] for a in full], rtol=1e-5, atol=1e-5)
    settings = extractor_config(get_extractor("encoder", model=tiny["whisper"]))
    fc = {"features": ["encoder"], "extractors": {"encoder": settings},
          "audio": {"sample_rate": SR}}
    middle = {**fc, "layers": layer_selection("auto", 3, False)}  # state 1 of 0..2
    assert shallow(middle)["extractors"]["encoder"]["depth"] == 1
    assert encoder_depth(middle) == {"run": 1, "of": 2}
    assert encoder_depth(fc) is None
    # heads reading the top state, or every state, run the whole encoder
    for spec, stack in (("-1", False), ("all", True), ("auto", True)):
        f = {**fc, "layers": layer_selection(spec, 3, stack)}
        assert shallow(f) is f and encoder_depth(f) == {"run": 2, "of": 2}
    # a window's row: the same numbers from the cut encoder as from every state
    rows = WindowFeatures(middle).many(clips)
    assert WindowFeatures(middle).extractors[0].depth == 1
    monkeypatch.setenv("SER_RAY_ENCODER_DEPTH", "full")
    assert WindowFeatures(middle).extractors[0].depth is None
    np.testing.assert_allclose(rows, WindowFeatures(middle).many(clips), rtol=1e-5, atol=1e-5)
    fused = {**middle, "features": ["encoder", "egemaps"],
             "layers": {**middle["layers"], "feature": "encoder"}}
    monkeypatch.delenv("SER_RAY_ENCODER_DEPTH")
    assert shallow(fused)["extractors"]["encoder"]["depth"] == 1
