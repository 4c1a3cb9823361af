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

from ser_ray.features.arrays import META_COLUMNS, read_feature
from ser_ray.features.inputs import (extractor_settings, fix_frames, layer_selection, select_layers,
                                     select_part)
from ser_ray.labels import CANONICAL_LABELS, get_label_set

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
        parts = [read_feature(root, n) for n in features]
        if k == 0:
            selection = _layers(features, parts, layers, model)
        if len(features) > 1:  # the layered one's chosen states, joined, before the join
            parts = [(select_part(n, a, selection), m) for n, (a, m) in zip(features, parts)]
        X, meta, frames = _combine(features, parts, frames)
        Xs.append(X)
        metas.append(_with_inputs(meta, root))
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
    frames, layers for its model): what ``cv``, ``train`` and every ``tune`` trial read. When
    ``select`` chooses the layers, every hidden state is kept (``learn.select.view`` picks)."""
    if "layers" in cfg.select:
        if len(cfg.features) != 1:
            raise ValueError(f"select.layers chooses among one encoder feature's states; "
                             f"features are {list(cfg.features)}")
        return load_features(roots, cfg.features, label_set=cfg.label_set, frames=cfg.frames,
                             layers=ALL_STATES, model=cfg.model)
    return load_features(roots, cfg.features, label_set=cfg.label_set, frames=cfg.frames,
                         layers=cfg.layers, model=cfg.model)


# Every hidden state, stacked: the rows a nested choice of ``layers`` selects from.
ALL_STATES = "all-states"


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
    if layers == ALL_STATES:
        return layer_selection("all", arrays[0].shape[0], True)
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


INPUT_COLUMNS = ("sample_rate", "codec")


def _with_inputs(meta: pd.DataFrame, root: Path) -> pd.DataFrame:
    """``meta`` with each utterance's input sample rate and codec from the folder's manifest
    (what a model's drift reference says it was trained on); unchanged without a manifest."""
    try:
        m = pads.dataset(str(root / "manifest"), format="parquet").to_table(
            columns=["utterance_id", *INPUT_COLUMNS]).to_pandas()
    except Exception:  # an old prepare output: no manifest, or one without codecs
        return meta
    m = m.drop_duplicates("utterance_id")
    return meta.drop(columns=[c for c in INPUT_COLUMNS if c in meta]).merge(
        m, on="utterance_id", how="left", validate="many_to_one")


def manifest(roots: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """The manifest rows (uri, utterance_id, ...) of one or more prepare outputs."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    return pd.concat([pads.dataset(str(Path(r) / "manifest"), format="parquet").to_table()
                      .to_pandas() for r in roots], ignore_index=True)


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
