"""Model registry and the config every model shares.

A model is a frozen dataclass config (architecture plus default training hyperparameters) with a
``build(input_shape, n_classes)`` method, registered by name. Torch models take ``x`` of shape
``(batch, *input_shape)`` float32 and return logits ``(batch, n_classes)``; classical models are
sklearn pipelines on ``(n, d)`` vectors. A torch model may define ``regularization_loss() -> Tensor``,
which the trainer adds to the loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, TypeVar

import torch
from torch import nn

from ser_ray.registry import registrar

_REGISTRY: dict[str, type["ModelConfig"]] = {}
_register = registrar(_REGISTRY, "model")
OPTIMIZERS = ("adam", "adamw", "sgd")

C = TypeVar("C", bound=type["ModelConfig"])


@dataclass(frozen=True)
class ModelConfig:
    """Base config: the training defaults every model carries (the trainer reads them)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "torch" | "classical"
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 50
    patience: int = 10  # early-stopping patience in epochs; >= epochs means train all epochs
    optimizer: str = "adam"  # one of OPTIMIZERS
    weight_decay: float = 0.0
    grad_accum: int = 1        # batches per optimiser step
    warmup_steps: int = 0      # linear warm-up then linear decay (0: constant lr); at most a
                               # tenth of the run's optimiser steps
    precision: str = "auto"    # auto: mixed precision (bf16, else fp16) on GPU, fp32 on CPU | fp32

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{self.name}: optimizer={self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.precision not in ("auto", "fp32"):
            raise ValueError(f"{self.name}: precision={self.precision!r} is not one of ['auto', 'fp32']")
        for f in ("batch_size", "epochs", "patience", "grad_accum"):
            if getattr(self, f) < 1:
                raise ValueError(f"{self.name}: {f} must be >= 1, got {getattr(self, f)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"{self.name}: need lr > 0 and weight_decay >= 0")

    def build(self, input_shape: tuple[int, ...], n_classes: int):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model."""

    name: str
    kind: str
    config: type[ModelConfig]

    @property
    def doc(self) -> str:
        """The config's docstring: expected input features and shape."""
        return self.config.__doc__ or ""

    def build(self, input_shape: tuple[int, ...], n_classes: int, **overrides):
        """Same as :func:`build_model` for this spec's name."""
        return build_model(self.name, input_shape, n_classes, **overrides)


def register_model(name: str) -> Callable[[C], C]:
    """Class decorator: register a :class:`ModelConfig` subclass under ``name``."""

    def deco(cls: C) -> C:
        if cls.kind not in ("torch", "classical"):
            raise ValueError(f"model {name!r}: kind must be 'torch' or 'classical', got {cls.kind!r}")
        return _register(name)(cls)

    return deco


def available_models(kind: str | None = None) -> list[str]:
    """Registered model names, sorted; only those of ``kind`` when given."""
    return sorted(n for n, c in _REGISTRY.items() if kind is None or c.kind == kind)


def get_model_spec(name: str) -> ModelSpec:
    """The spec (kind, config class, builder) registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {available_models()}")
    cls = _REGISTRY[name]
    return ModelSpec(name=name, kind=cls.kind, config=cls)


def model_config(name: str, **overrides) -> ModelConfig:
    """Config of model ``name`` with fields replaced by ``overrides`` (JSON lists become tuples)."""
    cls = get_model_spec(name).config
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"model {name!r} has no field(s) {unknown}; valid fields: {fields}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, **overrides):
    """Build model ``name`` for inputs ``(batch, *input_shape)`` and ``n_classes`` outputs.

    Returns a torch ``nn.Module`` (kind "torch") or an sklearn estimator (kind "classical").
    """
    cfg = model_config(name, **overrides)
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(
            f"model {name!r}: input_shape must be non-empty positive ints, got {input_shape}"
        )
    if n_classes < 2:
        raise ValueError(f"model {name!r}: n_classes must be >= 2, got {n_classes}")
    return cfg.build(shape, int(n_classes))


def rebuild_options(name: str, options: dict) -> dict:
    """``options`` for building model ``name`` only to load a trained state dict into it: a
    model whose build would fetch pretrained weights declares ``state_dict_overrides`` (e.g.
    ``{"weights": ""}``), since the state dict holds every weight."""
    return {**options, **getattr(get_model_spec(name).config, "state_dict_overrides", {})}


def check_rank(cfg: ModelConfig, input_shape: tuple[int, ...], ranks: tuple[int, ...], hint: str):
    """Reject an ``input_shape`` whose rank is not in ``ranks``; ``hint`` says what to do."""
    if len(input_shape) not in ranks:
        raise ValueError(
            f"model {cfg.name!r} takes {' or '.join(f'{r}-D' for r in ranks)} inputs per example, "
            f"got input_shape {tuple(input_shape)}; {hint}"
        )


# ----------------------------------------------------------------------------- torch helpers
@dataclass(frozen=True)
class TorchConfig(ModelConfig):
    """Base of torch model configs; a ``time_axis`` field, where present, must be 0 or 1."""

    kind: ClassVar[str] = "torch"

    def __post_init__(self):
        super().__post_init__()
        if getattr(self, "time_axis", 0) not in (0, 1):
            raise ValueError(f"{self.name}: time_axis must be 0 (time, features) or 1 (features, time)")


@dataclass(frozen=True)
class EmbeddingHeadConfig(TorchConfig):
    """Base of small heads on pretrained embeddings: an MLP of widths ``hidden`` (``()``: one
    linear layer) with dropout, trained with AdamW and early stopping."""

    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    epochs: int = 60
    patience: int = 10


def probe(net: nn.Module, shape: tuple[int, ...], owner: str) -> tuple[int, ...]:
    """Output shape (without batch) of ``net`` on a zero batch of ``shape``; sizes Flatten layers."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, *shape))
    except RuntimeError as e:
        raise ValueError(
            f"model {owner!r}: an example of shape {shape} (as fed to its conv/pool stack) is too "
            f"small ({e}); use longer inputs or fewer conv/pool layers"
        ) from None
    finally:
        net.train(was)
    return tuple(out.shape[1:])


def same_conv1d(c_in: int, c_out: int, k: int) -> nn.Module:
    """Conv1d with Keras "same" padding (extra zero on the right for even ``k``)."""
    if k % 2:
        return nn.Conv1d(c_in, c_out, k, padding=k // 2)
    return nn.Sequential(nn.ConstantPad1d(((k - 1) // 2, k // 2), 0.0), nn.Conv1d(c_in, c_out, k))


def dense_head(
    n_in: int, hidden: tuple[int, ...], n_classes: int, dropout: float = 0.0
) -> nn.Sequential:
    """Linear-ReLU layers of widths ``hidden``, then Dropout and the logits layer."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()]
        n_in = h
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(n_in, n_classes))


def channels_over_time(x: torch.Tensor, time_axis: int) -> torch.Tensor:
    """(B, d) -> (B, 1, d); (B, T, F) -> (B, F, T) when ``time_axis`` is 0, kept when it is 1."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.transpose(1, 2) if time_axis == 0 else x


def sequence(x: torch.Tensor, time_axis: int) -> torch.Tensor:
    """(B, d) -> (B, d, 1); (B, T, F) kept when ``time_axis`` is 0, (B, F, T) -> (B, T, F) when 1."""
    if x.dim() == 2:
        return x.unsqueeze(-1)
    return x if time_axis == 0 else x.transpose(1, 2)

