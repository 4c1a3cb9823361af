"""Image CNNs from torchvision fine-tuned on spectrograms read as images (METHODS.md, "Transfer
learning on spectrogram images"): x (batch, H, W) -> 3 channels -> an ImageNet architecture
whose last linear layer is replaced by one with ``n_classes`` outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ser_ray.models.base import TorchConfig, check_rank, probe, register_model

INPUTS = ("replicate", "conv1x1")
TRAIN = ("auto", "last_block", "all")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def torchvision_models():
    """``torchvision.models`` (importable beside CPU torch: :mod:`ser_ray.compat`)."""
    import torchvision.models as tvm

    return tvm


def architectures() -> list[str]:
    """torchvision's image classification architectures (``arch`` values)."""
    return sorted(torchvision_models().list_models(module=torchvision_models()))


@register_model("imagenet_cnn")
@dataclass(frozen=True)
class ImagenetCnnConfig(TorchConfig):
    """A torchvision image CNN (``arch``: alexnet, vgg16, mobilenet_v2, resnet18, ...: any of
    ``torchvision.models.list_models()``) on a spectrogram read as an image. Input (H, W): an
    ``stft`` block (257, 251) or ``logmel`` (n_mels, time).

    ``input``: ``replicate`` copies the one channel to three; ``conv1x1`` learns a 1x1
    convolution to three (initialised as a copy). ``resize``: the side the image is resized to
    (bilinear; 224 is ImageNet's), 0 keeps it as it is.
    ``weights``: a state-dict file of the architecture (``.pth``/``.pt``/``.safetensors``), a
    torchvision weight name (``DEFAULT``, ``IMAGENET1K_V1``, ``VGG16_Weights.IMAGENET1K_V1``;
    fetched once into torch's hub cache), or empty for random initialisation.
    ``train``: ``last_block`` fine-tunes the last conv block and the dense layers, the rest
    frozen (BatchNorm statistics too); ``all`` trains everything; ``auto`` is ``last_block``
    with weights and ``all`` without. Defaults follow the seed: SGD momentum 0.9, lr 4e-4,
    batch 128, 6 epochs.
    """

    # A saved model's state dict holds every weight: rebuilding it must not fetch them again.
    state_dict_overrides: ClassVar[dict] = {"weights": ""}
    arch: str = "mobilenet_v2"
    weights: str = ""
    input: str = "replicate"
    resize: int = 0
    train: str = "auto"
    optimizer: str = "sgd"
    lr: float = 4e-4
    batch_size: int = 128
    epochs: int = 6
    patience: int = 6

    def __post_init__(self):
        super().__post_init__()
        for field, choices in (("input", INPUTS), ("train", TRAIN)):
            if getattr(self, field) not in choices:
                raise ValueError(f"{self.name}: {field}={getattr(self, field)!r} is not one of "
                                 f"{list(choices)}")
        if self.resize < 0:
            raise ValueError(f"{self.name}: resize must be 0 (keep) or a side in pixels")

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (2,), "pass a spectrogram per example: stft blocks or logmel")
        archs = architectures()
        if self.arch not in archs:
            raise ValueError(f"{self.name}: arch={self.arch!r} is not a torchvision classification "
                             f"model; choose one of {archs}")
        return ImagenetCnn(self, tuple(input_shape), n_classes)


def load_weights(net: nn.Module, arch: str, weights: str) -> None:
    """Load ``weights`` (a state-dict file or a torchvision weight name) into ``net``, the
    architecture as torchvision builds it (1000 ImageNet classes)."""
    if not weights:
        return
    path = Path(weights).expanduser()
    if path.suffix in WEIGHT_SUFFIXES or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"imagenet_cnn: weights file {path} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        source = str(path)
    else:
        state, source = _torchvision_state(arch, weights), f"torchvision weights {weights!r}"
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"imagenet_cnn: {source} does not fit arch={arch!r} (a state dict of "
                         f"torchvision's {arch} with its 1000-class head is expected): "
                         f"{str(exc)[:400]}") from None


def _torchvision_state(arch: str, name: str) -> dict:
    import urllib.error

    tvm = torchvision_models()
    enum = tvm.get_model_weights(arch)
    key = name.split(".", 1)[1] if name.startswith(f"{enum.__name__}.") else name
    if key not in enum.__members__:
        raise ValueError(f"imagenet_cnn: {name!r} is not a weight of {arch}; it has "
                         f"{list(enum.__members__)} (or pass a state-dict file)")
    w = enum[key]
    try:
        return w.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, ConnectionError) as exc:
        file = w.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"imagenet_cnn: could not download {arch} weights {key} from {w.url} ({exc}). "
            f"On a machine that can, download that file, then pass it as "
            f"model_options.weights=/path/to/{file}, or put it at "
            f"{Path(torch.hub.get_dir()) / 'checkpoints' / file}") from None


def _parent(net: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    mod = net
    for p in path:
        mod = getattr(mod, p)
    return mod, leaf


def last_block(net: nn.Module, arch: str) -> list[nn.Module]:
    """The last conv block: ResNets' ``layer4``; in a ``features`` stack of conv blocks ending
    in max-pools (AlexNet, VGG) what follows the last-but-one pool; else the stack's last
    module (MobileNet, EfficientNet, ...)."""
    if isinstance(getattr(net, "layer4", None), nn.Module):
        return [net.layer4]
    feats = getattr(net, "features", None)
    if isinstance(feats, nn.Sequential):
        pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
        if len(pools) >= 2 and pools[-1] == len(feats) - 1:
            return [feats[pools[-2] + 1:]]
        return [feats[-1]]
    raise ValueError(f"imagenet_cnn: no rule finds the last conv block of {arch}; set "
                     "model_options.train=all")


class ImagenetCnn(nn.Module):
    def __init__(self, cfg: ImagenetCnnConfig, input_shape: tuple[int, int], n_classes: int):
        super().__init__()
        tvm = torchvision_models()
        net = tvm.get_model(cfg.arch, weights=None)
        load_weights(net, cfg.arch, cfg.weights)
        name = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
        parent, leaf = _parent(net, name)
        setattr(parent, leaf, nn.Linear(getattr(parent, leaf).in_features, n_classes))
        self.net, self.resize = net, cfg.resize
        self.to_rgb = None
        if cfg.input == "conv1x1":
            self.to_rgb = nn.Conv2d(1, 3, 1)
            nn.init.ones_(self.to_rgb.weight)
            nn.init.zeros_(self.to_rgb.bias)
        train = cfg.train if cfg.train != "auto" else ("last_block" if cfg.weights else "all")
        self.frozen: list[nn.Module] = []
        if train == "last_block":
            dense = getattr(net, name.split(".")[0])  # the head the last linear layer is in
            keep = {id(p) for m in [*last_block(net, cfg.arch), dense] for p in m.parameters()}
            for p in net.parameters():
                p.requires_grad_(id(p) in keep)
            self.frozen = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                           and not any(p.requires_grad for p in m.parameters())]
        probe(self, input_shape, cfg.name)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen:  # frozen layers keep their (pretrained) BatchNorm statistics
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1)
        x = self.to_rgb(x) if self.to_rgb is not None else x.expand(-1, 3, -1, -1)
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                              align_corners=False)
        return self.net(x)
