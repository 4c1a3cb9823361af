"""A window of audio as a model's input row: the analysis window a model was trained on
(:func:`model_window`) and :class:`WindowFeatures`, which conditions a window and runs the
model's extractors exactly as training made its rows. The scoring job and labelled segments
(``ser-ray evaluate --labels``, ``adapt``) both turn audio into rows through here."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ser_ray.config import AudioConfig, from_dict

DEFAULT_WINDOW_S = 3.0


def training_block_s(fc: dict[str, Any]) -> float | None:
    """The block length training split clips into (``audio.block_s`` or an extractor's own
    ``block_s``), or None."""
    audio = fc.get("audio") or {}
    return audio.get("block_s") or next(
        (fc["extractors"][n]["block_s"] for n in fc["features"] if fc["extractors"][n].get("block_s")), None)


def model_window(fc: dict[str, Any]) -> tuple[float, str]:
    """The analysis window (seconds) a model was trained on, and where that figure comes from.

    Blocks (``audio.block_s`` or an extractor's ``block_s``) and fixed windows
    (``audio.duration_s``) are what the model saw; a 2-D feature cropped to ``frames`` saw
    ``frames`` hops; otherwise the median training clip (``clip_s``), else 3 s.
    """
    audio = fc.get("audio") or {}
    sr = int(audio.get("sample_rate", 16000))
    extractors = [fc["extractors"][n] for n in fc["features"]]
    block = training_block_s(fc)
    if block:
        return float(block), "training block length"
    if audio.get("duration_s"):
        return float(audio["duration_s"]), "training window (audio.duration_s)"
    if fc.get("frames") and fc.get("time_axis") is not None and extractors[0].get("hop_length"):
        return fc["frames"] * extractors[0]["hop_length"] / sr, "training frames x hop"
    if fc.get("clip_s"):
        return float(fc["clip_s"]), "median training clip"
    return DEFAULT_WINDOW_S, "default"


def shallow(fc: dict[str, Any]) -> dict[str, Any]:
    """``fc`` as a window's features need computing: when its model reads hidden states of an
    ``encoder`` feature below the top one only (the default head reads the middle state), the
    encoder runs up to the deepest state read (its ``depth``), so the layers above are not
    computed, and the selection counts the states it gets. The states read are the same
    numbers. ``SER_RAY_ENCODER_DEPTH=full`` runs every layer (benchmarks compare the two)."""
    import os

    sel = fc.get("layers")
    if not isinstance(sel, dict) or os.environ.get("SER_RAY_ENCODER_DEPTH") == "full":
        return fc
    names = [sel["feature"]] if sel.get("feature") else list(fc["features"])
    settings = fc["extractors"].get(names[0]) if len(names) == 1 else None
    deepest = max(sel["index"])
    if not settings or settings.get("name") != "encoder" or deepest + 1 >= sel["states"]:
        return fc
    return {**fc, "layers": {**sel, "states": deepest + 1},
            "extractors": {**fc["extractors"], names[0]: {**settings, "depth": deepest}}}


def encoder_depth(fc: dict[str, Any]) -> dict[str, int] | None:
    """What a run record says of the encoder layers a window runs: ``{"run": k, "of": n}``
    (None without a layered encoder feature)."""
    sel = fc.get("layers")
    if not isinstance(sel, dict):
        return None
    run = shallow(fc)["layers"]["states"]
    return {"run": run - 1, "of": sel["states"] - 1}


class WindowFeatures:
    """One analysis window of conditioned audio -> one model input row, as training made them.

    Per window, like per training clip: pre-emphasis, level normalisation, padding or cropping
    to the training window/block, each extractor, crop/pad of the time axis to ``frames``, and
    concatenation of several vector features.
    """

    def __init__(self, fc: dict[str, Any]):
        from ser_ray.features.inputs import extractor_from_settings

        fc = shallow(fc)
        self.audio = from_dict(AudioConfig, dict(fc.get("audio") or {}))
        self.sr = self.audio.sample_rate
        self.extractors = [extractor_from_settings(fc["extractors"][n]) for n in fc["features"]]
        self.fc, self.time_axis = fc, fc.get("time_axis")
        block = training_block_s(fc)
        fixed = block or (self.audio.duration_s if self.audio.pad else None)
        self.fixed = int(round(fixed * self.sr)) if fixed else None
        self.min_samples = max(e.min_samples(self.sr) for e in self.extractors)

    def _condition(self, y: np.ndarray) -> np.ndarray:
        from ser_ray import audio

        a = self.audio
        y = audio.normalise(audio.pre_emphasise(y, a.pre_emphasis), a.normalise, a.rms_dbfs)
        if self.fixed:
            y = audio.window(y, self.sr, 0.0, self.fixed / self.sr, pad=True)
        if y.size < self.min_samples:
            y = np.pad(y, (0, self.min_samples - y.size))
        return y.astype(np.float32, copy=False)

    def many(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Windows -> model inputs ``(n, *input_shape)``; extractors that batch (a pretrained
        encoder) run the windows together."""
        from ser_ray.features.inputs import join_features

        ys = [self._condition(y) for y in windows]
        parts = [e.many(ys, self.sr) for e in self.extractors]
        return np.stack(join_features(self.fc, parts)).astype(np.float32, copy=False)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        return self.many([y])[0]
