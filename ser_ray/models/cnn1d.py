"""1-D CNNs over time (or over a vector's positions).

Input: a vector (d,) is read as 1 channel x d steps; a matrix is read with its features as
channels over time: (time, features) when ``time_axis=0`` (mfcc), (features, time) when
``time_axis=1`` (logmel, stft).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ser_ray.models.base import (TorchConfig, channels_over_time, check_rank, dense_head, probe,
                                 register_model, same_conv1d)

HINT = "pass a vector (d,) or a matrix (time, features) per example"


def _in_channels(input_shape: tuple[int, ...], time_axis: int) -> int:
    return 1 if len(input_shape) == 1 else input_shape[1 - time_axis]


@register_model("cnn1d")
@dataclass(frozen=True)
class Cnn1dConfig(TorchConfig):
    """1-D CNN of the call-centre study (80.5% test accuracy, 16 gender x emotion classes).

    Input (d,) e.g. handcrafted173, or (time, features) / (features, time), see module doc.
    Conv1D 256/128/64/32, each kernel 5 "same" + ReLU + MaxPool(5, stride 2, "same") as in the
    common Keras implementations (halves the length per layer, so any length works); Flatten;
    Dropout; Dense 256-128-64-32 ReLU; Dense n. Early stopping patience 5.
    """

    channels: tuple[int, ...] = (256, 128, 64, 32)
    dense: tuple[int, ...] = (256, 128, 64, 32)
    kernel: int = 5
    pool: int = 5
    dropout: float = 0.2
    time_axis: int = 0
    batch_size: int = 64
    patience: int = 5

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (1, 2), HINT)
        return Cnn1d(self, input_shape, n_classes)


@register_model("cnn1d_tuned")
@dataclass(frozen=True)
class Cnn1dTunedConfig(Cnn1dConfig):
    """Tuned ``cnn1d``: Conv1D 288/192/96/32 + Dense 480-128-128-32-n.

    Input (d,), (time, features), or (features, time) with time_axis=1, as ``cnn1d``.
    """

    channels: tuple[int, ...] = (288, 192, 96, 32)
    dense: tuple[int, ...] = (480, 128, 128, 32)


class Cnn1d(nn.Module):
    def __init__(self, cfg: Cnn1dConfig, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.time_axis = cfg.time_axis
        layers, c_in = [], _in_channels(input_shape, cfg.time_axis)
        for c in cfg.channels:
            layers += [same_conv1d(c_in, c, cfg.kernel), nn.ReLU(),
                       nn.MaxPool1d(cfg.pool, stride=2, padding=cfg.pool // 2)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        n_flat = math.prod(probe(self.features, _probe_shape(input_shape, cfg.time_axis), cfg.name))
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), *dense_head(n_flat, cfg.dense, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(channels_over_time(x, self.time_axis)))


def _probe_shape(input_shape: tuple[int, ...], time_axis: int) -> tuple[int, int]:
    """(channels, length) that :func:`channels_over_time` makes of one example."""
    if len(input_shape) == 1:
        return (1, input_shape[0])
    return (input_shape[1 - time_axis], input_shape[time_axis])


@register_model("cnn1d_8")
@dataclass(frozen=True)
class Cnn1d8Config(TorchConfig):
    """8-layer 1-D CNN of the multimodal study.

    Input (d,), (time, features), or (features, time) with time_axis=1, as ``cnn1d``.
    Conv1D 256, 256 (kernel 8, "same", ReLU), BatchNorm, Dropout 0.6; 4 x Conv1D 128, BatchNorm,
    Dropout 0.6; 2 x Conv1D 64; Flatten; 2 x Dense ReLU; Dropout 0.6; Dense n. ``pool`` > 1 adds a
    MaxPool after each dropout (not in the paper; shrinks the Flatten for long inputs).
    """

    wide: int = 256
    mid: int = 128
    narrow: int = 64
    kernel: int = 8
    dropout: float = 0.6
    dense: tuple[int, ...] = (128, 64)
    pool: int = 1
    time_axis: int = 0

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (1, 2), HINT)
        return Cnn1d8(self, input_shape, n_classes)


class Cnn1d8(nn.Module):
    def __init__(self, cfg: Cnn1d8Config, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.time_axis = cfg.time_axis

        def convs(c_in: int, c_out: int, n: int) -> list[nn.Module]:
            out = []
            for i in range(n):
                out += [same_conv1d(c_in if i == 0 else c_out, c_out, cfg.kernel), nn.ReLU()]
            return out

        def regularise(c: int) -> list[nn.Module]:
            pool = [nn.MaxPool1d(cfg.pool)] if cfg.pool > 1 else []
            return [nn.BatchNorm1d(c), nn.Dropout(cfg.dropout), *pool]

        self.features = nn.Sequential(
            *convs(_in_channels(input_shape, cfg.time_axis), cfg.wide, 2), *regularise(cfg.wide),
            *convs(cfg.wide, cfg.mid, 4), *regularise(cfg.mid),
            *convs(cfg.mid, cfg.narrow, 2),
            nn.Flatten(),
        )
        n_flat = math.prod(probe(self.features, _probe_shape(input_shape, cfg.time_axis), cfg.name))
        self.head = dense_head(n_flat, cfg.dense, n_classes, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(channels_over_time(x, self.time_axis)))
