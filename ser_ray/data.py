"""Learning-plane datasets: feature tables of one or more ``prepare`` outputs -> X, y, meta.

A :class:`FeatureData` holds X ``(n, *shape)`` float32, y ``(n,)`` class indices into ``labels``
and ``meta``, a DataFrame aligned with X (utterance_id, source_id, block_index, speaker, corpus,
sex, label). Ragged 2-D features (MFCC arrays grow with the clip) are padded or cropped along
their time axis to ``frames``, so every row has one shape and one model input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import yaml

from ser_ray.features.arrays import column_to_numpy
from ser_ray.labels import CANONICAL_LABELS, get_label_set

META_COLUMNS = ("utterance_id", "source_id", "block_index", "corpus", "speaker", "sex", "label")
# Axis of each 2-D feature that grows with the clip; fixed-size features are absent.
TIME_AXIS = {"mfcc": 0, "logmel": 1, "stft": 1, "waveform": 0}


@dataclass
class FeatureData:
    X: np.ndarray
    y: np.ndarray
    labels: list[str]
    meta: pd.DataFrame
    feature_config: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> "FeatureData":
        """Rows ``idx`` (int indices), same labels and config."""
        return dataclasses.replace(self, X=self.X[idx], y=self.y[idx],
                                   meta=self.meta.iloc[idx].reset_index(drop=True))


def read_prepare_config(root: str | Path) -> dict[str, Any]:
    """The resolved config a ``prepare`` run wrote next to its tables."""
    path = Path(root) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(
            f"{root}: no config.yaml; --features must be the --output folder of `ser-ray prepare`"
        )
    return yaml.safe_load(path.read_text())


def _read_feature(root: Path, name: str) -> tuple[list[np.ndarray], pd.DataFrame]:
    path = root / "features" / name
    if not path.exists():
        have = sorted(p.name for p in (root / "features").glob("*")) if (root / "features").exists() else []
        raise FileNotFoundError(
            f"{root}: no feature table {name!r} (have {have}); rerun `ser-ray prepare` with "
            f"--features {name}"
        )
    table = pads.dataset(str(path), format="parquet").to_table()
    arrays = column_to_numpy(table)
    meta = table.select(list(META_COLUMNS)).to_pandas()
    return arrays, meta


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
    * ``A-B``: states A to B inclusive; ``all``: every state.

    ``stack``: keep ``(k, 2 x hidden)`` rows (layer-weighting models), else concatenate them
    into one vector (classical models, MLPs).
    """
    spec = "auto" if spec in (None, "") else str(spec).strip()
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
                             f"0..{n_states - 1}")
    return {"spec": spec, "states": n_states, "index": index, "stack": bool(stack)}


def select_layers(x: np.ndarray, selection: dict[str, Any] | None) -> np.ndarray:
    """Rows ``(..., n_states, d)`` -> the selected states, stacked ``(..., k, d)`` or joined
    ``(..., k * d)``; ``selection`` from :func:`layer_selection` (None: unchanged)."""
    if not selection:
        return x
    if x.shape[-2] != selection["states"]:
        raise ValueError(f"feature has {x.shape[-2]} hidden states but the model was trained on "
                         f"{selection['states']}: it was extracted with another encoder")
    x = x[..., selection["index"], :]
    return x if selection["stack"] else x.reshape(*x.shape[:-2], -1)


def conform(x: np.ndarray, feature_config: dict[str, Any]) -> np.ndarray:
    """One extracted array -> the model's input shape: the hidden states a model reads of a
    layered feature, or a 2-D feature cropped or padded along its time axis to the ``frames``
    training used (as :func:`load_features` did to every training row). Augmented copies, noisy
    test sets and scoring windows all go through here."""
    x = select_layers(x, feature_config.get("layers"))
    frames, axis = feature_config.get("frames"), feature_config.get("time_axis")
    if frames is not None and axis is not None:
        return fix_frames(x, axis, frames)
    return x


def _combine(names: Sequence[str], parts: list[tuple[list[np.ndarray], pd.DataFrame]],
             frames: int | None) -> tuple[np.ndarray, pd.DataFrame, int | None]:
    if len(names) == 1:
        (arrays, meta), name = parts[0], names[0]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            axis = TIME_AXIS.get(name)
            if axis is None:
                raise ValueError(f"feature {name!r} has rows of different shapes {sorted(shapes)[:3]}")
            if frames is None:  # the median clip: half the rows are padded, half cropped
                frames = int(np.median([a.shape[axis] for a in arrays]))
            arrays = [fix_frames(a, axis, frames) for a in arrays]
        elif frames is not None and name in TIME_AXIS:
            arrays = [fix_frames(a, TIME_AXIS[name], frames) for a in arrays]
        return np.stack(arrays).astype(np.float32), meta, frames
    # Several features: vectors of one row each, joined on (utterance_id, block_index).
    key = ["utterance_id", "block_index"]
    base = parts[0][1][list(META_COLUMNS)].copy()
    cols = []
    for name, (arrays, meta) in zip(names, parts):
        if any(a.ndim != 1 for a in arrays[:1]):
            raise ValueError(
                f"feature {name!r} is {arrays[0].ndim}-D: only 1-D vectors can be combined "
                "(use pooling='mean_std' or train on it alone)"
            )
        pos = pd.Series(np.arange(len(meta)), index=pd.MultiIndex.from_frame(meta[key]))
        idx = pos.reindex(pd.MultiIndex.from_frame(base[key]))
        if idx.isna().any():
            missing = base.loc[idx.isna().values, "utterance_id"].head(3).tolist()
            raise ValueError(f"feature {name!r} lacks rows present in {names[0]!r}: {missing} ...")
        cols.append(np.stack(arrays)[idx.to_numpy(dtype=np.int64)])
    return np.concatenate(cols, axis=1).astype(np.float32), base, frames


def load_features(roots: str | Path | Sequence[str | Path], features: Sequence[str], *,
                  label_set: str | None = None, labels: Sequence[str] | None = None,
                  frames: int | None = None, layers: str | dict | None = None,
                  model: str | None = None) -> FeatureData:
    """Feature tables ``features`` of one or more prepare outputs as one :class:`FeatureData`.

    ``label_set`` re-maps labels at learning time (rows outside it are dropped and counted in
    ``feature_config["dropped_labels"]``); ``labels`` fixes the class order (a saved model's),
    otherwise canonical order of the labels present. Several features must be 1-D vectors and
    are concatenated in the order given.
    """
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if not roots:
        raise ValueError("no --features folder given")
    if not features:
        raise ValueError("no feature names given (e.g. --feature-set egemaps)")
    _check_needs(features, model)
    Xs, metas, prepare_cfgs, selection = [], [], [], None
    for k, root in enumerate(map(Path, roots)):
        pcfg = read_prepare_config(root)
        prepare_cfgs.append(pcfg)
        parts = [_read_feature(root, n) for n in features]
        if k == 0:
            selection = _layers(features, parts, layers, model)
        if len(features) > 1:  # the layered one's chosen states, joined, before the join
            parts = [(select_part(n, a, selection), m) for n, (a, m) in zip(features, parts)]
        X, meta, frames = _combine(features, parts, frames)
        Xs.append(X)
        metas.append(meta)
    shapes = {x.shape[1:] for x in Xs}
    if len(shapes) > 1:
        raise ValueError(f"feature shapes differ between folders: {sorted(shapes)}")
    X = np.concatenate(Xs)
    if len(features) == 1:
        X = select_layers(X, selection)
    meta = pd.concat(metas, ignore_index=True)
    meta["block_index"] = meta["block_index"].astype(np.int64)

    dropped: dict[str, int] = {}
    if label_set:
        ls = get_label_set(label_set)
        mapped = [ls.apply(lab, sex) for lab, sex in zip(meta["label"], meta["sex"])]
        keep = np.array([m is not None for m in mapped])
        for lab in meta.loc[~keep, "label"]:
            dropped[lab] = dropped.get(lab, 0) + 1
        meta = meta.assign(label=mapped)[keep].reset_index(drop=True)
        X = X[keep]
        order = list(ls.labels)
    else:
        order = list(CANONICAL_LABELS)
    present = set(meta["label"])
    if labels is None:
        labels = [lab for lab in order if lab in present] + sorted(present - set(order))
    labels = list(labels)
    unknown = present - set(labels)
    if unknown:
        keep = meta["label"].isin(labels).to_numpy()
        for lab in meta.loc[~keep, "label"]:
            dropped[lab] = dropped.get(lab, 0) + 1
        meta, X = meta[keep].reset_index(drop=True), X[keep]
    if len(meta) == 0:
        raise ValueError(f"no rows left in {roots} after label selection (dropped {dropped})")
    index = {lab: i for i, lab in enumerate(labels)}
    y = meta["label"].map(index).to_numpy(dtype=np.int64)

    extractors = {}
    for pcfg in prepare_cfgs:
        for name in features:
            extractors[name] = extractor_settings(pcfg, name)
    feature_config = {
        "features": list(features), "frames": frames, "time_axis": TIME_AXIS.get(features[0])
        if len(features) == 1 else None,
        "extractors": extractors, "audio": prepare_cfgs[0].get("audio", {}),
        "label_set": label_set, "roots": [str(r) for r in roots], "dropped_labels": dropped,
        "clip_s": _median_clip_s(roots, prepare_cfgs[0].get("audio", {})),
        "layers": selection,
    }
    return FeatureData(X=X, y=y, labels=labels, meta=meta, feature_config=feature_config)


def load_learn_features(roots: str | Path | Sequence[str | Path], cfg) -> FeatureData:
    """The rows a :class:`~ser_ray.config.LearnConfig` learns from (features, label set,
    frames, layers for its model): what ``cv``, ``train`` and every ``tune`` trial read."""
    return load_features(roots, cfg.features, label_set=cfg.label_set, frames=cfg.frames,
                         layers=cfg.layers, model=cfg.model)


def _layers(features: Sequence[str], parts: list[tuple[list[np.ndarray], pd.DataFrame]],
            layers, model: str | None):
    from ser_ray.features.encoder import LAYERED

    if isinstance(layers, dict) or layers is None and model is None:
        return layers or None
    layered = [f for f in features if f in LAYERED]
    if not layered:
        if layers not in (None, "", "auto"):
            raise ValueError(f"layers={layers!r}: only layered features {list(LAYERED)} have "
                             f"layers; {list(features)} do not")
        return None
    if len(layered) > 1:
        raise ValueError(f"{list(features)}: at most one layered feature can be combined")
    from ser_ray.models import get_model_spec

    stack = bool(model) and getattr(get_model_spec(model).config, "takes_layers", False)
    if stack and len(features) > 1:
        raise ValueError(f"{model} weighs the hidden states of one feature; train it on "
                         f"{layered[0]} alone, not {list(features)}")
    arrays = parts[list(features).index(layered[0])][0]
    selection = layer_selection(layers, arrays[0].shape[0], stack)
    if len(features) > 1:  # joined into a vector beside the others (select_part)
        selection["feature"] = layered[0]
    return selection


def _check_needs(features: Sequence[str], model: str | None) -> None:
    """A model that fuses modalities (``needs_features``) gets them and one more."""
    if not model:
        return
    from ser_ray.models import get_model_spec

    needs = getattr(get_model_spec(model).config, "needs_features", ())
    missing = [f for f in needs if f not in features]
    if missing or (needs and len(features) <= len(needs)):
        raise ValueError(f"{model} fuses {', '.join(needs)} with an audio feature; got "
                         f"{list(features)}: use e.g. --feature-set encoder,{','.join(needs)}")


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


def _median_clip_s(roots: Sequence[str | Path], audio: dict[str, Any]) -> float | None:
    """Median length of the training clips after windowing: how long a window a model saw
    (the scoring job cuts calls into windows this long when nothing more precise is known)."""
    try:
        d = pd.concat([pads.dataset(str(Path(r) / "manifest"), format="parquet")
                       .to_table(columns=["duration_s"]).to_pandas() for r in roots])["duration_s"]
    except Exception:  # an old prepare output without a manifest: the scorer falls back
        return None
    if d.empty:
        return None
    d = (d - (audio.get("offset_s") or 0.0)).clip(lower=0)
    if audio.get("duration_s"):
        d = d.clip(upper=audio["duration_s"])
    return round(float(d.median()), 3)


def extractor_settings(prepare_cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """Resolved extractor config ``name`` of a prepare run (its defaults + feature_options)."""
    from ser_ray.features import extractor_config, get_extractor

    options = (prepare_cfg.get("feature_options") or {}).get(name, {})
    return extractor_config(get_extractor(name, **options))


def extractor_from_settings(settings: dict[str, Any]):
    """Inverse of :func:`extractor_settings`."""
    from ser_ray.features import get_extractor

    opts = dict(settings)
    return get_extractor(opts.pop("name"), **opts)


def manifest(roots: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """The manifest rows (uri, utterance_id, ...) of one or more prepare outputs."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    return pd.concat([pads.dataset(str(Path(r) / "manifest"), format="parquet").to_table()
                      .to_pandas() for r in roots], ignore_index=True)


# --------------------------------------------------------------------------------------------
# Normalisation: statistics are fitted on the training rows only and stored with the model.
# --------------------------------------------------------------------------------------------

def _reduce_axes(X: np.ndarray, time_axis: int | None) -> tuple[int, ...]:
    """Axes to average over: rows, plus the time axis of 2-D features (stats per channel)."""
    if time_axis is None:
        return (0,)
    # a 1-D signal (waveform): one mean and std; a 2-D feature: one per channel
    return (0, 1) if X.ndim == 2 else (0, 1 + time_axis)


STD_FLOOR = 1e-6


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a population of feature rows: value count, sum and sum of
    squares per channel (float64, shaped to broadcast against one row).

    The one implementation of feature statistics: training fits them on rows at once
    (:meth:`of`); the scoring job gathers them per unit of calls and adds them up (``+``), so a
    population of any size gives the same mean and std as if all its rows were in memory.
    """

    count: float
    sum: np.ndarray
    sumsq: np.ndarray

    @classmethod
    def of(cls, X: np.ndarray, time_axis: int | None) -> "Moments":
        axes = _reduce_axes(X, time_axis)
        x = np.asarray(X, dtype=np.float64)
        count = float(np.prod([X.shape[a] for a in axes])) if X.size else 0.0
        return cls(count, x.sum(axis=axes, keepdims=True)[0], np.square(x).sum(axis=axes, keepdims=True)[0])

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (population) std, float32; a std below 1e-6 is raised to 1e-6."""
        if self.count <= 0:
            raise ValueError("no feature values to take statistics of")
        mean = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - np.square(mean), 0.0)
        return mean.astype(np.float32), np.maximum(np.sqrt(var), STD_FLOOR).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"count": np.asarray([self.count]), "sum": self.sum, "sumsq": self.sumsq}

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> "Moments":
        return cls(float(np.asarray(d["count"]).reshape(-1)[0]), np.asarray(d["sum"], np.float64),
                   np.asarray(d["sumsq"], np.float64))


def moments(X: np.ndarray, time_axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``X`` (rows first), shaped to broadcast against one row."""
    return Moments.of(X, time_axis).mean_std()


def standardise(X: np.ndarray, mean: np.ndarray, std: np.ndarray | float) -> np.ndarray:
    """``(X - mean) / std`` as float32: every standardisation of features goes through here."""
    return ((X - mean) / std).astype(np.float32, copy=False)


def group_standardise(X: np.ndarray, groups: np.ndarray, time_axis: int | None) -> np.ndarray:
    """Standardise each group's rows (a speaker, a corpus) by that group's own moments.

    Uses no labels, only the group's own features, so it is legal on test speakers too: the
    literature's "speaker normalisation". A group of one row is only centred. The scoring job
    does not use this on a call alone (see ``score``: a reference population of calls).
    """
    out = np.empty(X.shape, np.float32)
    for g in pd.unique(groups):
        rows = groups == g
        mean, std = moments(X[rows], time_axis)
        out[rows] = standardise(X[rows], mean, std if rows.sum() > 1 else 1.0)
    return out


NORMALISE_GROUPS = {"none": None, "global": None, "speaker": "speaker", "corpus": "corpus"}


def check_normalise(mode: str) -> None:
    if mode not in NORMALISE_GROUPS:
        raise ValueError(f"normalise={mode!r} is not one of {list(NORMALISE_GROUPS)}")


# --------------------------------------------------------------------------------------------
# Which feature table to learn from
# --------------------------------------------------------------------------------------------

def feature_tables(root: str | Path) -> list[str]:
    """Names of the feature tables a ``prepare`` output holds (``features/<name>/``)."""
    root = Path(root)
    read_prepare_config(root)  # not a prepare output: say so rather than "no tables"
    base = root / "features"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def resolve_feature_set(roots: str | Path | Sequence[str | Path],
                        features: Sequence[str] | None) -> tuple[str, ...]:
    """The feature table(s) to learn from: ``features`` when given; otherwise the one table
    every folder holds. Several candidates, or none, is an error that lists what exists."""
    if features:
        return tuple(features)
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if not roots:
        raise ValueError("no --features folder given")
    per_root = {str(r): feature_tables(r) for r in roots}
    common = sorted(set.intersection(*(set(v) for v in per_root.values())))
    if len(common) == 1:
        return (common[0],)
    have = "; ".join(f"{r}: {', '.join(v) or 'none'}" for r, v in per_root.items())
    if not common:
        raise ValueError(f"no feature table is in every --features folder ({have}); rerun "
                         "`ser-ray prepare` with --features NAME on each folder")
    raise ValueError(f"the --features folder(s) hold {len(common)} feature tables "
                     f"({', '.join(common)}); choose one with --feature-set NAME (e.g. "
                     f"--feature-set {common[0]}; 1-D vectors combine as --feature-set "
                     f"NAME,NAME), or in a config/space file set features: [NAME]")
