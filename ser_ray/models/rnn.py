"""Recurrent models (LSTMv1, LSTMv2, GRU, GRU-LSTM; 76.5% reported for LSTMv2).

Input: a sequence (time, features) when ``time_axis=0`` (mfcc), (features, time) when
``time_axis=1`` (logmel, stft), or a vector (d,) read as a length-d sequence of 1 feature.
The logits come from the last time step, so pad sequences at the start, not the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ser_ray.models.base import TorchConfig, check_rank, dense_head, register_model, sequence

HINT = "pass a matrix (time, features) or a vector (d,) per example"
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def _n_features(input_shape: tuple[int, ...], time_axis: int) -> int:
    return 1 if len(input_shape) == 1 else input_shape[1 - time_axis]


@dataclass(frozen=True)
class _StackConfig(TorchConfig):
    hidden: int = 128
    dropout: float = 0.2  # before the logits layer
    time_axis: int = 0

    def stack(self) -> list[tuple[str, int]]:  # pragma: no cover - abstract
        """(cell, layers) pairs, run in order."""
        raise NotImplementedError

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (1, 2), HINT)
        return StackedRNN(self, input_shape, n_classes)


@register_model("lstm_v1")
@dataclass(frozen=True)
class LstmV1Config(_StackConfig):
    """LSTMv1: 3 stacked LSTM 128, last step, Dropout, Dense n.

    Input (time, features), (features, time) with time_axis=1, or (d,).
    """

    layers: int = 3

    def stack(self):
        return [("lstm", self.layers)]


@register_model("gru")
@dataclass(frozen=True)
class GruConfig(_StackConfig):
    """GRU: 3 stacked GRU 128, last step, Dropout, Dense n.

    Input (time, features), (features, time) with time_axis=1, or (d,).
    """

    layers: int = 3

    def stack(self):
        return [("gru", self.layers)]


@register_model("gru_lstm")
@dataclass(frozen=True)
class GruLstmConfig(_StackConfig):
    """GRU-LSTM: 2 GRU 128 then 1 LSTM 128 (3 recurrent layers like its siblings), last step, Dense n.

    Input (time, features), (features, time) with time_axis=1, or (d,).
    """

    gru_layers: int = 2
    lstm_layers: int = 1

    def stack(self):
        return [("gru", self.gru_layers), ("lstm", self.lstm_layers)]


class _Outputs(nn.Module):
    """An RNN that returns only its per-step outputs (batch, time, hidden)."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


class StackedRNN(nn.Module):
    def __init__(self, cfg: _StackConfig, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.time_axis = cfg.time_axis
        n_in, rnns = _n_features(input_shape, cfg.time_axis), []
        for cell, layers in cfg.stack():
            rnns.append(_Outputs(CELLS[cell](n_in, cfg.hidden, num_layers=layers, batch_first=True)))
            n_in = cfg.hidden
        self.body = nn.Sequential(*rnns)
        self.head = dense_head(cfg.hidden, (), n_classes, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(sequence(x, self.time_axis))[:, -1])


@register_model("lstm_v2")
@dataclass(frozen=True)
class LstmV2Config(TorchConfig):
    """LSTMv2: 3 blocks of LSTM-BN-LSTM-BN-Dropout (width 1024), last step, Dense 64-64 ReLU, Dense n.

    Input (time, features), (features, time) with time_axis=1, or (d,).
    BatchNorm normalises each channel over batch and time.
    """

    width: int = 1024
    blocks: int = 3
    dense: tuple[int, ...] = (64, 64)
    dropout: float = 0.2
    time_axis: int = 0

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (1, 2), HINT)
        return LstmV2(self, input_shape, n_classes)


class _StepBatchNorm(nn.BatchNorm1d):
    """BatchNorm over (batch, time, channels): each channel normalised over batch and time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class LstmV2(nn.Module):
    def __init__(self, cfg: LstmV2Config, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.time_axis = cfg.time_axis
        n_in, layers = _n_features(input_shape, cfg.time_axis), []
        for _ in range(cfg.blocks):
            for _ in range(2):
                lstm = nn.LSTM(n_in, cfg.width, batch_first=True)
                layers += [_Outputs(lstm), _StepBatchNorm(cfg.width)]
                n_in = cfg.width
            layers.append(nn.Dropout(cfg.dropout))
        self.body = nn.Sequential(*layers)
        self.head = dense_head(cfg.width, cfg.dense, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(sequence(x, self.time_axis))[:, -1])
