"""2-D CNNs that read a feature matrix as a 1-channel image: x (batch, H, W) -> (batch, 1, H, W)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ser_ray.models.base import TorchConfig, check_rank, probe, register_model

IMAGE_HINT = "pass a 2-D feature matrix per example, e.g. mfcc with pooling='none' or logmel"


@register_model("cnn2d_smote")
@dataclass(frozen=True)
class Cnn2dSmoteConfig(TorchConfig):
    """SMOTE-2DCNN (IEMOCAP 4 classes, UA 81 / WA 80 reported), built as published.

    Input (time, coeffs): MFCC + deltas over time, e.g. mfcc pooling="none" (time, 120), as a
    1-channel image; both sides >= 8 (three 2x2 max-pools). Conv 64 3x3 same LeakyReLU + MaxPool
    2x2 + BatchNorm; Conv 64 3x3 + MaxPool + BatchNorm; Conv 64 3x3 + MaxPool; Flatten; Dense 64
    LeakyReLU with L2 0.01 on kernel and bias (``regularization_loss()``); Dropout 0.5; Dense n.
    """

    filters: int = 64
    dense: int = 64
    negative_slope: float = 0.3  # Keras' LeakyReLU default; the paper used Keras
    l2: float = 0.01  # Keras L2: l2 * sum(w ** 2), added to the mean batch loss
    dropout: float = 0.5
    lr: float = 0.01
    batch_size: int = 64
    epochs: int = 100
    patience: int = 100  # = epochs: the paper trains a fixed 100 epochs, no early stopping

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (2,), IMAGE_HINT)
        return Cnn2dSmote(self, input_shape, n_classes)


class Cnn2dSmote(nn.Module):
    def __init__(self, cfg: Cnn2dSmoteConfig, input_shape: tuple[int, int], n_classes: int):
        super().__init__()
        f, act = cfg.filters, lambda: nn.LeakyReLU(cfg.negative_slope)
        self.l2 = cfg.l2
        self.features = nn.Sequential(
            nn.Conv2d(1, f, 3, padding="same"), act(), nn.MaxPool2d(2), nn.BatchNorm2d(f),
            nn.Conv2d(f, f, 3, padding="same"), act(), nn.MaxPool2d(2), nn.BatchNorm2d(f),
            nn.Conv2d(f, f, 3, padding="same"), act(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        n_flat = math.prod(probe(self.features, (1, *input_shape), cfg.name))
        self.hidden = nn.Linear(n_flat, cfg.dense)
        self.head = nn.Sequential(act(), nn.Dropout(cfg.dropout), nn.Linear(cfg.dense, n_classes))

    @property
    def l2_params(self) -> tuple[nn.Parameter, ...]:
        """Parameters under the paper's L2 penalty: the Dense-64 kernel and bias."""
        return (self.hidden.weight, self.hidden.bias)

    def regularization_loss(self) -> torch.Tensor:
        """``l2 * sum of squares`` of :attr:`l2_params`; add it to the training loss."""
        return self.l2 * sum(p.pow(2).sum() for p in self.l2_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.features(x.unsqueeze(1))))


@register_model("cnn2d_mel")
@dataclass(frozen=True)
class Cnn2dMelConfig(TorchConfig):
    """Custom 2-D CNN on mel images (68.7 +- 0.8% reported, 5-fold).

    Input (n_mels, time) from logmel, or (time, coeffs) from mfcc, as a 1-channel image; each side
    >= 2 ** len(channels). Blocks Conv 5x5 same ReLU + MaxPool 2x2 (256, 256, 128, 64); Flatten;
    Dropout 0.3; Dense n.
    """

    channels: tuple[int, ...] = (256, 256, 128, 64)
    kernel: int = 5
    dropout: float = 0.3
    lr: float = 5e-5
    batch_size: int = 32
    epochs: int = 100
    patience: int = 10

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (2,), IMAGE_HINT)
        return Cnn2dMel(self, input_shape, n_classes)


class Cnn2dMel(nn.Module):
    def __init__(self, cfg: Cnn2dMelConfig, input_shape: tuple[int, int], n_classes: int):
        super().__init__()
        layers, c_in = [], 1
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, cfg.kernel, padding="same"), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        n_flat = math.prod(probe(self.features, (1, *input_shape), cfg.name))
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(n_flat, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1)))
