"""``imagenet_cnn``: torchvision architectures on spectrogram images. Unit tests of each arch,
its freezing rule and its weights (a state-dict file, a torchvision name from the hub cache, an
unreachable download), then the whole path through the CLI: the noise protocol in one cv
command (clean + noisy training blocks, noisy test sets per SNR), train with weights from a
file, evaluate and score a saved model whose weights file is gone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cli_helpers import ser_ray_cli
from ser_ray.models import build_model

ARCHS = ["alexnet", "vgg16", "mobilenet_v2", "resnet18"]
SHAPE = (64, 64)  # AlexNet's stride-4 stem and three pools need >= 63 pixels a side
EMOTIONS = ["neutral", "happy", "sad", "angry"]


def _tv():
    from ser_ray.models.imagenet import torchvision_models

    return torchvision_models()


def _grads(net, shape=SHAPE) -> set[str]:
    logits = net(torch.randn(3, *shape))
    assert logits.shape == (3, 4)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 3])).backward()
    return {n for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_trains_all_from_random_init_and_only_its_last_block_when_asked(arch):
    torch.manual_seed(0)
    net = build_model("imagenet_cnn", SHAPE, 4, arch=arch)
    assert _grads(net) == {n for n, _ in net.named_parameters()}  # random init: train=auto is all
    net = build_model("imagenet_cnn", SHAPE, 4, arch=arch, train="last_block", input="conv1x1")
    got = _grads(net)
    last = {"alexnet": "net.features.10.", "vgg16": "net.features.28.",
            "mobilenet_v2": "net.features.18.", "resnet18": "net.layer4.1."}[arch]
    first = {"alexnet": "net.features.0.", "vgg16": "net.features.0.",
             "mobilenet_v2": "net.features.0.", "resnet18": "net.conv1."}[arch]
    assert any(n.startswith(last) for n in got), sorted(got)[:5]
    assert not any(n.startswith(first) for n in got)
    assert "to_rgb.weight" in got
    head = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    assert net.get_submodule(head).out_features == 4 and f"{head}.weight" in got
    net.train()
    bns = [m for m in net.net.modules() if isinstance(m, nn.BatchNorm2d)]
    if bns:  # frozen BatchNorm keeps its statistics in training mode; trained ones do not
        assert not bns[0].training and bns[-1].training


def test_conv1x1_starts_as_replication_and_resize_sets_the_image_size():
    torch.manual_seed(0)
    a = build_model("imagenet_cnn", (40, 50), 4, arch="resnet18", resize=64).eval()
    torch.manual_seed(0)
    b = build_model("imagenet_cnn", (40, 50), 4, arch="resnet18", resize=64,
                    input="conv1x1").eval()
    x = torch.randn(2, 40, 50)
    torch.testing.assert_close(a(x), b(x))
    seen = {}
    a.net.conv1.register_forward_hook(lambda m, i, o: seen.update(shape=i[0].shape) and None)
    a(x)
    assert tuple(seen["shape"]) == (2, 3, 64, 64)


def test_weights_from_a_state_dict_file(tmp_path):
    from safetensors.torch import save_file

    ref = _tv().get_model("resnet18", weights=None)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "r18.pth")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "r18.safetensors")
    for f in ("r18.pth", "r18.safetensors"):
        net = build_model("imagenet_cnn", SHAPE, 4, arch="resnet18", weights=str(tmp_path / f))
        assert torch.equal(net.net.layer2[0].conv1.weight, ref.layer2[0].conv1.weight)
        assert not net.net.conv1.weight.requires_grad  # weights given: last block + dense
        assert net.net.layer4[0].conv1.weight.requires_grad and net.net.fc.weight.requires_grad
    with pytest.raises(ValueError, match="does not fit arch='mobilenet_v2'"):
        build_model("imagenet_cnn", SHAPE, 4, arch="mobilenet_v2", weights=str(tmp_path / "r18.pth"))
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        build_model("imagenet_cnn", SHAPE, 4, arch="resnet18", weights=str(tmp_path / "nothere.pth"))


def test_torchvision_weight_names_come_from_the_hub_cache_or_fail_clearly(tmp_path, monkeypatch):
    import urllib.error

    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=r"model_options\.weights=/path/to/resnet18-\w+\.pth"):
        build_model("imagenet_cnn", SHAPE, 4, arch="resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="not a weight of resnet18"):
        build_model("imagenet_cnn", SHAPE, 4, arch="resnet18", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="arch='resnet1000'"):
        build_model("imagenet_cnn", SHAPE, 4, arch="resnet1000")
    # the file the message names, put where it says: loads by name, with no download
    ref = _tv().get_model("resnet18", weights=None)
    url = _tv().ResNet18_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), cache / url.rsplit("/", 1)[-1])
    for name in ("IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "DEFAULT"):
        net = build_model("imagenet_cnn", SHAPE, 4, arch="resnet18", weights=name)
        assert torch.equal(net.net.conv1.weight, ref.conv1.weight)


# ------------------------------------------------------------------------- through the CLI
def _cli(*args: str):
    return ser_ray_cli(*args)  # in this process, on the module's Ray


@pytest.fixture(scope="module")
def world(ray_session, tmp_path_factory):
    import soundfile as sf

    from ser_ray.synth import synthesize_backlog, synthesize_corpus

    root = tmp_path_factory.mktemp("imagenet")
    synthesize_corpus("ravdess", root / "corpus", n_speakers=4, per_emotion=3, emotions=EMOTIONS,
                      sr=16000, seed=3)
    synthesize_backlog(root / "calls", n_calls=2, seed=4, minutes=(0.3, 0.4), sr=8000,
                       stereo_share=0.5, bad=False)
    rng = np.random.default_rng(1)
    (root / "noise").mkdir()
    for k in range(2):  # a hum and a hiss: the noise bank
        t = np.arange(16000 * 3) / 16000
        y = 0.2 * np.sin(2 * np.pi * (120 + 60 * k) * t) + 0.1 * rng.standard_normal(t.size)
        sf.write(root / "noise" / f"n{k}.wav", y.astype(np.float32), 16000)
    _cli("prepare", "--input", str(root / "corpus"), "--corpus", "ravdess", "--features",
         "logmel", "--set", "feature_options.logmel.n_mels=32", "--set", "audio.block_s=1.0",
         "--set", "audio.trim=true", "--output", str(root / "prepared"), "--no-progress")
    return root


pipeline = pytest.mark.slow


@pipeline
def test_noise_protocol_runs_in_one_cv_command(world, tmp_path):
    out = tmp_path / "cv"
    _cli("cv", "--config", "configs/noise_protocol.yaml", "--features", str(world / "prepared"),
         "--set", f"noise_dir={world / 'noise'}", "--protocol", "explicit", "--test-speakers",
         "ravdess:04", "--set", "cpus_per_worker=1",
         "--set", "model_options={arch: resnet18, epochs: 2, batch_size: 32, lr: 0.01}",
         "--output", str(out))
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["noisy"]) == {"15.0", "20.0", "40.0"}
    assert all(0.0 <= v["ua_mean"] <= 1.0 for v in m["noisy"].values())
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())  # the resolved config
    assert cfg["model"] == "imagenet_cnn" and cfg["augment"]["variant"] == "merged"
    assert cfg["augment"]["steps"][0]["name"] == "background_noise"
    # the training side holds clean and noisy blocks: more rows than the clean ones alone
    fold = m["folds"][0]
    assert fold["n_train"] == 4 * fold["n_train_clean"] > 0, fold
    summary = (out / "summary.md").read_text()
    assert "SNR (dB)" in summary and "40.0" in summary


@pipeline
def test_train_with_a_weights_file_then_evaluate_and_score_without_it(world, tmp_path):
    from ser_ray.models.artifact import load_predictor
    from ser_ray.score import read_calls

    weights = tmp_path / "mnv2.pth"
    torch.save(_tv().get_model("mobilenet_v2", weights=None).state_dict(), weights)
    model = tmp_path / "model"
    _cli("train", "--features", str(world / "prepared"), "--model", "imagenet_cnn",
         "--set", "cpus_per_worker=1", "--set",
         f"model_options={{arch: mobilenet_v2, weights: {weights}, input: conv1x1, resize: 48, "
         "epochs: 2, batch_size: 32}", "--output", str(model))
    weights.unlink()  # the saved model holds every weight: nothing is fetched again
    pred = load_predictor(model)
    assert pred.config["weights"] == str(weights) and pred.input_shape[0] == 32
    _cli("evaluate", "--model", str(model), "--features", str(world / "prepared"),
         "--output", str(tmp_path / "eval"))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["folds"][0]["n_test"] > 0
    out = tmp_path / "reports"
    _cli("score", "--model", str(model), "--input", str(world / "calls"), "--output", str(out),
         "--run-date", "2026-12-01", "--no-progress")
    calls = read_calls(out)
    assert len(calls) == 2 and (calls["status"] == "scored").all()
    shares = [c for c in calls.columns if c.startswith("share_")]
    assert np.allclose(calls[shares].sum(axis=1), 1.0, atol=1e-6)
