"""Late fusion: two or more saved models, each on its own features, whose utterance-level
class probabilities are averaged with weights (METHODS.md, "Multimodal", the second option
beside ``audio_text``'s early fusion).

``ser-ray fuse --model A --model B --output DIR`` writes a self-contained folder: ``fusion.json``
(members, weights, labels) and a copy of each member under ``members/<k>/``. ``evaluate`` reads
it: every member predicts the rows of its own feature table, probabilities are averaged over
each utterance's blocks, mapped to the fusion's label order and combined; an utterance that a
member has no row for is left out and counted.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ser_ray.atomic import write_folder_atomic

FUSION_FILE = "fusion.json"


def is_late_fusion(path: str | Path) -> bool:
    return (Path(path) / FUSION_FILE).is_file()


@dataclass
class LateFusion:
    members: list  # Predictors
    weights: np.ndarray
    labels: list[str]
    paths: list[str]

    def combine(self, probas: Sequence[np.ndarray]) -> np.ndarray:
        """Member probabilities, each (n, len(labels)) in the fusion's label order -> their
        weighted mean (rows sum to 1)."""
        return np.tensordot(self.weights, np.stack(probas), axes=1).astype(np.float32)

    def columns(self, k: int) -> np.ndarray:
        """Index of each fusion label among member ``k``'s columns."""
        own = list(self.members[k].labels)
        return np.array([own.index(lab) for lab in self.labels])


def save_late_fusion(models: Sequence[str | Path], output: str | Path,
                     weights: Sequence[float] | None = None, trust: bool = False) -> Path:
    """Check the members load and share their label set, then write the fusion folder."""
    from ser_ray.models.artifact import load_predictor
    from ser_ray.runtime import versions

    if len(models) < 2:
        raise ValueError("fuse: give at least two --model folders")
    preds = [load_predictor(m, trust=trust) for m in models]
    labels = list(preds[0].labels)
    for m, p in zip(models, preds):
        if set(p.labels) != set(labels):
            raise ValueError(f"fuse: {m} predicts {sorted(p.labels)} but {models[0]} predicts "
                             f"{sorted(labels)}; fuse models trained on the same label set")
    w = np.ones(len(models)) if weights is None else np.asarray(weights, float)
    if len(w) != len(models) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"fuse: weights {list(w)} must be one non-negative number per model, "
                         "not all zero")
    w = w / w.sum()
    out = Path(output)
    if out.exists():
        raise ValueError(f"fuse: {out} exists; choose another --output")

    def write(tmp: Path) -> None:
        for k, m in enumerate(models):
            shutil.copytree(m, tmp / "members" / str(k))
        (tmp / FUSION_FILE).write_text(json.dumps({
            "kind": "late_fusion", "members": [f"members/{k}" for k in range(len(models))],
            "sources": [str(m) for m in models], "weights": [float(x) for x in w],
            "labels": labels, "member_models": [p.model_name for p in preds],
            "member_features": [p.feature_config.get("features") for p in preds],
            "versions": versions()}, indent=2) + "\n")

    write_folder_atomic(out, write)  # beside --output: one rename, whatever the filesystem
    return out


def load_late_fusion(path: str | Path, trust: bool = False) -> LateFusion:
    """A fusion folder -> its members, each a model dir inside it (``members/<k>``): a member
    named anywhere else (an absolute path, ``..``, a link) is refused, never followed."""
    from ser_ray.models.artifact import UntrustedModel, check_model_dir, load_predictor

    path = Path(path)
    root = check_model_dir(path, trust=trust)
    spec = json.loads((path / FUSION_FILE).read_text())
    members = spec.get("members")
    if not isinstance(members, list) or len(members) < 2:
        raise ValueError(f"{path / FUSION_FILE}: 'members' must list the member folders")
    for k, m in enumerate(members):
        if m != f"members/{k}":
            raise UntrustedModel(f"{path / FUSION_FILE}: member {m!r} is not members/{k}; a "
                                 "late-fusion folder holds copies of its members inside itself")
    loaded = [load_predictor(root / m, trust=trust) for m in members]
    return LateFusion(members=loaded, weights=np.asarray(spec["weights"], float),
                      labels=list(spec["labels"]), paths=[str(path / m) for m in members])
