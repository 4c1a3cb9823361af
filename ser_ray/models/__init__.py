"""Models, one module per architecture family, chosen by registered name.

>>> cfg = model_config("cnn2d_smote")          # architecture + default lr, batch_size, epochs, ...
>>> net = build_model("cnn2d_smote", (300, 120), n_classes=4)   # x (batch, 300, 120) -> logits
>>> clf = build_model("svm", (173,), n_classes=4)                # StandardScaler -> SVC pipeline
>>> get_model_spec("cnn1d").doc                # expected input features and shape

Torch models may define ``regularization_loss()``; the trainer adds it to the loss.
"""

from ser_ray.models.base import (
    OPTIMIZERS, ModelConfig, ModelSpec, available_models, build_model, get_model_spec, model_config,
    register_model, rebuild_options,
)

# Imported for their @register_model side effect.
from ser_ray.models import (  # noqa: E402,F401
    attention, classical, cnn1d, cnn2d, encoder, fusion, imagenet, rnn,
)

__all__ = [
    "OPTIMIZERS", "ModelConfig", "ModelSpec", "available_models", "build_model", "get_model_spec",
    "model_config", "rebuild_options", "register_model",
]
