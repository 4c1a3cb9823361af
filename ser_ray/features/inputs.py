"""Extracted arrays -> model inputs, the one way training rows, augmented copies, noisy test
sets and scoring windows are all shaped: the hidden states a model reads of a layered feature
(:func:`layer_selection`), 2-D features cropped or padded to the training ``frames``
(:func:`conform`), and an extractor rebuilt from the settings a model folder records."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ser_ray.features.base import extractor_config, get_extractor


def fix_frames(a: np.ndarray, axis: int, frames: int) -> np.ndarray:
    """Crop or zero-pad ``a`` along ``axis`` to exactly ``frames``."""
    n = a.shape[axis]
    if n >= frames:
        return np.take(a, np.arange(frames), axis=axis)
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, frames - n)
    return np.pad(a, pad)


def layer_selection(spec: str | None, n_states: int, stack: bool) -> dict[str, Any]:
    """Which hidden states of a layered feature (``encoder``: ``(n_states, 2 x hidden)`` per
    row) a model reads, from ``LearnConfig.layers``:

    * ``auto``: a model that weighs layers itself (``layer_weighted``) gets all of them; any
      other the middle hidden state, ``n_states // 2`` (whisper-base: 3 of 0..6). A fixed rule
      that never looks at test speakers; ``tune`` can search ``layers`` by cross-validation.
    * ``K``: hidden state K (0 = embeddings, negative counts from the last);
    * ``A-B``: states A to B inclusive; ``all``: every state;
    * any of these with ``:mean``: the mean half of each state only (default: mean and std).

    ``stack``: keep ``(k, 2 x hidden)`` rows (layer-weighting models), else concatenate them
    into one vector (classical models, MLPs).
    """
    spec = "auto" if spec in (None, "") else str(spec).strip()
    full, half = spec, None
    if spec.endswith(":mean"):
        spec, half = spec[: -len(":mean")], "mean"
    out = _states(spec, n_states, stack)
    return {"spec": full, "states": n_states, "index": out, "stack": bool(stack),
            **({"half": half} if half else {})}


def _states(spec: str, n_states: int, stack: bool) -> list[int]:
    if spec == "auto":
        index = list(range(n_states)) if stack else [n_states // 2]
    elif spec == "all":
        index = list(range(n_states))
    else:
        try:
            if "-" in spec.lstrip("-"):
                a, b = spec.lstrip("-").split("-", 1)
                a = -int(a) if spec.startswith("-") else int(a)
                index = list(range(a % n_states, int(b) % n_states + 1))
            else:
                index = [int(spec) % n_states] if -n_states <= int(spec) < n_states else []
        except ValueError:
            index = []
        if not index:
            raise ValueError(f"layers={spec!r}: expected auto, all, K or A-B with hidden states "
                             f"0..{n_states - 1} (and :mean for the mean half only)")
    return index


def select_layers(x: np.ndarray, selection: dict[str, Any] | None) -> np.ndarray:
    """Rows ``(..., n_states, d)`` -> the selected states, stacked ``(..., k, d)`` or joined
    ``(..., k * d)``; ``selection`` from :func:`layer_selection` (None: unchanged)."""
    if not selection:
        return x
    if x.shape[-2] != selection["states"]:
        raise ValueError(f"feature has {x.shape[-2]} hidden states but the model was trained on "
                         f"{selection['states']}: it was extracted with another encoder")
    x = x[..., selection["index"], :]
    if selection.get("half") == "mean":  # the extractor's columns: [mean | std]
        x = x[..., : x.shape[-1] // 2]
    return x if selection["stack"] else x.reshape(*x.shape[:-2], -1)


def from_every_state(X: np.ndarray, selection: dict[str, Any] | None) -> np.ndarray:
    """Rows that keep every hidden state stacked ``(n, n_states, d)`` (a nested choice of
    ``layers``: the fold's rows, their augmented copies, noisy and telephone test sets) -> the
    states ``selection`` picks; rows already picked pass as they are."""
    if X.ndim == 3 and selection and X.shape[-2] == selection["states"]:
        return select_layers(X, selection)
    return X


def conform(x: np.ndarray, feature_config: dict[str, Any]) -> np.ndarray:
    """One extracted array -> the model's input shape: the hidden states a model reads of a
    layered feature, or a 2-D feature cropped or padded along its time axis to the ``frames``
    training used (as ``ser_ray.learn.data.load_features`` did to every training row). Augmented copies, noisy
    test sets and scoring windows all go through here."""
    x = select_layers(x, feature_config.get("layers"))
    frames, axis = feature_config.get("frames"), feature_config.get("time_axis")
    if frames is not None and axis is not None:
        return fix_frames(x, axis, frames)
    return x


def join_features(fc: dict[str, Any], parts: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Each extractor's arrays of the same rows (``parts[k][i]``: extractor k of
    ``fc["features"]``, row i) -> model input rows: one feature conformed (:func:`conform`);
    several vectors, each one's chosen part (:func:`select_part`), joined in order as
    ``load_features`` joined the training rows. Scoring windows, augmented copies and noisy or
    telephone test sets all go through here."""
    names = fc["features"]
    if len(names) > 1:
        picked = [select_part(n, list(p), fc.get("layers")) for n, p in zip(names, parts)]
        return [np.concatenate(row).astype(np.float32) for row in zip(*picked)]
    return [conform(x, fc) for x in parts[0]]


def extractor_models(feature_config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The pretrained models a model's features come from, per extractor (an encoder's
    ``model``, Whisper's ``asr``, the ``text_model``): what a run record names."""
    keys = ("model", "asr", "text_model")
    out = {}
    for name, settings in (feature_config.get("extractors") or {}).items():
        found = {k: settings[k] for k in keys if isinstance(settings.get(k), str) and settings[k]}
        if found:
            out[name] = found
    return out


def select_part(name: str, arrays: list[np.ndarray], selection: dict[str, Any] | None
                ) -> list[np.ndarray]:
    """Rows of feature ``name`` as a model on several features reads them: the layered one's
    chosen hidden states joined into one vector, the others as they are. Training, evaluation
    and scoring windows all go through here."""
    if selection and selection.get("feature") == name:
        return [select_layers(a, selection) for a in arrays]
    return arrays


def extractor_settings(prepare_cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """Resolved extractor config ``name`` of a prepare run (its defaults + feature_options)."""
    options = (prepare_cfg.get("feature_options") or {}).get(name, {})
    return extractor_config(get_extractor(name, **options))


def extractor_from_settings(settings: dict[str, Any]):
    """Inverse of :func:`extractor_settings`."""
    opts = dict(settings)
    return get_extractor(opts.pop("name"), **opts)
