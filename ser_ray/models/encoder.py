"""Heads on pretrained speech encoders: a layer-weighted head on frozen hidden states, and the
fine-tuned encoder itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ser_ray.models.attention import AdditivePooling
from ser_ray.models.base import (EmbeddingHeadConfig, TorchConfig, check_rank, dense_head,
                                 register_model)


@register_model("layer_weighted")
@dataclass(frozen=True)
class LayerWeightedConfig(EmbeddingHeadConfig):
    """SUPERB-style head on an ``encoder`` feature: learned softmax weights over the hidden
    states, their weighted sum, then a small MLP. Input (states, 2 x hidden): all states by
    default, ``layers`` picks a range; ``layer_weights()`` gives the learned weights."""

    takes_layers: ClassVar[bool] = True

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (2,), "use the encoder feature (states, 2 x hidden) with "
                                            "layers=auto, all or A-B")
        return LayerWeighted(self, input_shape, n_classes)


class LayerWeighted(nn.Module):
    def __init__(self, cfg: LayerWeightedConfig, input_shape, n_classes: int):
        super().__init__()
        states, d = input_shape
        self.logits_w = nn.Parameter(torch.zeros(states))  # uniform at start
        self.head = dense_head(d, cfg.hidden, n_classes, cfg.dropout)

    def layer_weights(self) -> np.ndarray:
        return torch.softmax(self.logits_w.detach(), 0).cpu().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.logits_w, 0)
        return self.head(torch.einsum("bsd,s->bd", x, w))


@register_model("encoder_finetune")
@dataclass(frozen=True)
class EncoderFinetuneConfig(TorchConfig):
    """A pretrained encoder fine-tuned end to end on the ``waveform`` feature (16 kHz,
    ``(samples,)``): backbone -> mean or attentive pooling of its last hidden state over the
    clip's frames -> dropout -> linear head. Input (samples,).

    ``model``: Hugging Face folder or hub id (Whisper, HuBERT, wav2vec 2.0, WavLM,
    data2vec-audio). The CNN feature encoder (Whisper: its two convs) stays frozen;
    ``freeze_layers`` also freezes the first N transformer layers. Defaults follow the seed's
    recipe: AdamW lr 5e-5, weight decay 0.01, warm-up (at most a tenth of the optimiser steps),
    batch 4 x gradient accumulation 4, 6 epochs. On GPU, mixed precision (``precision``).
    Zero padding at the end of a clip is left out of the pooling. A saved model keeps the
    backbone in Hugging Face format (``backbone/``).
    """

    saves_backbone: ClassVar[bool] = True
    model: str = ""
    pooling: str = "mean"           # mean | attentive
    freeze_feature_encoder: bool = True
    freeze_layers: int = 0
    whisper_input: str = "unpadded"
    dropout: float = 0.1
    lr: float = 5e-5
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    batch_size: int = 4
    grad_accum: int = 4
    warmup_steps: int = 500
    epochs: int = 6
    patience: int = 6

    def __post_init__(self):
        super().__post_init__()
        if self.pooling not in ("mean", "attentive"):
            raise ValueError(f"{self.name}: pooling={self.pooling!r} is not one of "
                             "['mean', 'attentive']")

    def build(self, input_shape, n_classes):
        if not self.model:
            raise ValueError(f"{self.name}: set model_options.model=/path/to/hf-folder (e.g. "
                             "../shared/models/whisper-base) or a hub id")
        check_rank(self, input_shape, (1,), "train on the waveform feature (prepare --features "
                                            "waveform)")
        return EncoderFinetune(self, n_classes)


class EncoderFinetune(nn.Module):
    def __init__(self, cfg: EncoderFinetuneConfig, n_classes: int):
        super().__init__()
        from ser_ray.encoders import SpeechEncoder

        # fp32 on the CPU: Ray Train moves the module to its device; autocast does the rest
        self.encoder = SpeechEncoder(cfg.model, device="cpu", dtype="fp32",
                                     whisper_input=cfg.whisper_input)
        self.backbone = self.encoder.backbone  # registered: its weights are the model's
        self.backbone.train()
        self._freeze(cfg)
        hidden = self.encoder.hidden
        self.pool = AdditivePooling(hidden, 128) if cfg.pooling == "attentive" else None
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(hidden, n_classes))

    def _freeze(self, cfg: EncoderFinetuneConfig) -> None:
        b = self.backbone
        if cfg.freeze_feature_encoder:
            frozen = [b.conv1, b.conv2] if self.encoder.whisper else [b.feature_extractor]
            for m in frozen:
                m.requires_grad_(False)
        layers = b.layers if self.encoder.whisper else b.encoder.layers
        for layer in list(layers)[: cfg.freeze_layers]:
            layer.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ser_ray.encoders import MIN_SAMPLES, frame_mask

        wav = x.detach().float().cpu().numpy()
        # a clip's length: up to its last non-zero sample (learning zero-pads short clips)
        nz = wav != 0
        lengths = np.where(nz.any(1), wav.shape[1] - np.argmax(nz[:, ::-1], axis=1), 0)
        waves = [w[: max(int(n), MIN_SAMPLES)] for w, n in zip(wav, lengths)]
        pooled: list = [None] * len(waves)
        for idx in self.encoder.exact_batches([len(w) for w in waves], len(waves)):
            batch = self.encoder.batch([waves[k] for k in idx])
            h = self.encoder.states(batch)[-1]  # (b, T, hidden)
            keep = frame_mask(h.shape[1], batch.frames, h.device)
            if self.pool is None:
                m = keep.unsqueeze(-1).to(h.dtype)
                p = (h * m).sum(1) / m.sum(1).clamp(min=1)
            else:
                p = self.pool(h, keep)
            for j, k in enumerate(idx):
                pooled[k] = p[j]
        return self.head(torch.stack(pooled).float())
