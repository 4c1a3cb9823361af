"""Audio + transcript fusion (METHODS.md, "Multimodal"): an audio embedding and a text
embedding of the Whisper transcript, concatenated, behind a linear head or a small MLP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ser_ray.models.base import EmbeddingHeadConfig, check_rank, dense_head, register_model


@register_model("audio_text")
@dataclass(frozen=True)
class AudioTextConfig(EmbeddingHeadConfig):
    """Early fusion of what was heard and what was said. Input (d_audio + d_text,): an audio
    vector (``encoder``, its chosen hidden state joined: ``layers``; or any 1-D audio feature)
    and ``text`` (a text encoder's embedding of the clip's Whisper transcript), concatenated
    in ``--feature-set`` order, e.g. ``--feature-set encoder,text``. ``hidden: []`` is the
    published linear head; ``hidden: [256]`` a small MLP. Dropout on the joined vector."""

    needs_features: ClassVar[tuple[str, ...]] = ("text",)
    hidden: tuple[int, ...] = ()

    def build(self, input_shape, n_classes):
        check_rank(self, input_shape, (1,), "learn from an audio vector and text: --feature-set "
                                            "encoder,text")
        return dense_head(input_shape[0], tuple(self.hidden), n_classes, self.dropout)
