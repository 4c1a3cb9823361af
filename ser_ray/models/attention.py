"""CNN + BiLSTM + additive attention pooling over time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ser_ray.models.base import TorchConfig, check_rank, probe, register_model


@register_model("cnn_bilstm_attn")
@dataclass(frozen=True)
class CnnBiLstmAttnConfig(TorchConfig):
    """2-D CNN front-end, BiLSTM over the pooled time axis, additive attention, linear head.

    Input (time, features) when ``time_axis=0`` (mfcc) or (features, time) when ``time_axis=1``
    (logmel, stft); each side >= 2 ** len(channels). Conv blocks: Conv 3x3 same,
    BatchNorm, ReLU, MaxPool 2x2; the pooled features x channels of each step feed the BiLSTM;
    attention weights a_t = softmax_t(v . tanh(W h_t)) pool the steps into one vector.
    """

    channels: tuple[int, ...] = (32, 64)
    kernel: int = 3
    hidden: int = 128  # per direction
    attention: int = 128
    dropout: float = 0.3
    time_axis: int = 0

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (2,), "pass a matrix (time, features) or (features, time)")
        return CnnBiLstmAttn(self, input_shape, n_classes)


class AdditivePooling(nn.Module):
    """Attention pooling (batch, time, d) -> (batch, d) with weights softmax(v . tanh(W h))."""

    def __init__(self, d: int, attention: int):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(d, attention), nn.Tanh(), nn.Linear(attention, 1, bias=False)
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (batch, time) bool: the steps that exist (padding gets no weight)."""
        s = self.score(h)
        if mask is not None:
            s = s.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        w = torch.softmax(s, dim=1)  # (batch, time, 1)
        return (w * h).sum(dim=1)


class CnnBiLstmAttn(nn.Module):
    def __init__(self, cfg: CnnBiLstmAttnConfig, input_shape: tuple[int, int], n_classes: int):
        super().__init__()
        self.time_axis = cfg.time_axis
        layers, c_in = [], 1
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, cfg.kernel, padding="same"), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in = c
        self.cnn = nn.Sequential(*layers)
        time_first = input_shape if cfg.time_axis == 0 else input_shape[::-1]
        c, _, f = probe(self.cnn, (1, *time_first), cfg.name)
        self.lstm = nn.LSTM(c * f, cfg.hidden, batch_first=True, bidirectional=True)
        self.pool = AdditivePooling(2 * cfg.hidden, cfg.attention)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(2 * cfg.hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_axis == 1:
            x = x.transpose(1, 2)
        h = self.cnn(x.unsqueeze(1))  # (batch, channels, time', features')
        h = h.permute(0, 2, 1, 3).flatten(2)  # (batch, time', channels * features')
        h, _ = self.lstm(h)
        return self.head(self.pool(h))
