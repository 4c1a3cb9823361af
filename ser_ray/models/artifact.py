"""Trained-model directories: everything needed to predict, and nothing from the training code.

A model dir holds::

    model.json                 format_version, name, kind, config, input_shape, n_classes, weights, extra
    weights.safetensors        torch state_dict (no pickle)   | model.skops (classical sklearn pipeline)
    backbone/                  a fine-tuned encoder's backbone and feature extractor, in Hugging
                               Face format (save_pretrained, safetensors); weights.safetensors then
                               holds the rest (pooling, head)
    features.json              extractor configs, audio config, how features were combined
    normalisation.safetensors  optional "mean" / "std" float32 arrays broadcastable to input_shape,
                               applied to every input; a model trained with speaker or corpus
                               normalisation also keeps "population_mean" / "population_std", the
                               pooled statistics of its raw training rows (the scoring job's
                               fallback reference population, see ``ser_ray.score``)
    labels.json                class names; model output i is labels[i]
    calibration.json           optional: the temperature that calibrates predict_proba
                               (models/calibration.py), fitted on held-out training speakers
    drift.json, drift.safetensors  optional: the training reference drift checks compare a
                               scoring night with (models/drift.py)
    metrics.json               evaluation metrics ({} when none)
    versions.json              python and package versions (runtime.versions), format_version

Nothing in a model dir can run code when it is loaded (docs/guide.md, "Guarantees"):

- the kind (torch or classical) comes from the registered model named in ``model.json``, never
  from the file, and each kind keeps its weights under one fixed name inside the folder;
- torch weights are safetensors; classical pipelines are ``skops`` files, loaded only when every
  type they hold is one ser-ray's registered models use (:data:`SKOPS_TYPES`);
- no file is a link, and no file holds pickle or code (``.py``, ``.bin``, ``.pkl``, ...); the
  ``model.joblib`` of older classical dirs is refused unless the caller trusts the folder
  (``--trust-model``), since unpickling it can run anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy
from safetensors.torch import load_file as load_torch, save_file as save_torch

from ser_ray.atomic import write_folder_atomic
from ser_ray.models.drift import DriftReference
from ser_ray.runtime import versions
from ser_ray.models import (ModelConfig, build_model, get_model_spec, model_config as make_config,
                            rebuild_options)

FORMAT_VERSION = 1
WEIGHTS = {"torch": "weights.safetensors", "classical": "model.skops"}
LEGACY_PICKLE = "model.joblib"  # classical weights before skops: unpickled only when trusted
# Types besides skops' defaults that the registered classical models hold once fitted; a
# skops file with any other type is refused (tests/test_artifact.py saves every model).
SKOPS_TYPES = (
    "sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64", "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer", "sklearn.tree._tree.Tree",
)
# Files that carry pickle or code: never read from a model dir (a Hugging Face backbone is
# safetensors; transformers would torch.load a .bin).
UNSAFE_SUFFIXES = (".py", ".pyc", ".pkl", ".pickle", ".joblib", ".bin", ".pt", ".pth", ".ckpt",
                   ".npy", ".npz", ".h5", ".msgpack")
REQUIRED = ("model.json", "features.json", "normalisation.safetensors", "labels.json", "metrics.json",
            "versions.json")
NORMALISATION_KEYS = ("mean", "std", "population_mean", "population_std")
BACKBONE = "backbone"  # a fine-tuned encoder's pretrained part, as a Hugging Face folder


def _saves_backbone(model_name: str) -> bool:
    return getattr(get_model_spec(model_name).config, "saves_backbone", False)


@dataclass
class Predictor:
    """A loaded model: ``predict_proba(X)`` on X (n, *input_shape) after the stored normalisation."""

    model_name: str
    kind: str  # "torch" | "classical"
    model: Any  # nn.Module or fitted sklearn estimator
    labels: list[str]
    input_shape: tuple[int, ...]
    feature_config: dict = field(default_factory=dict)
    normalisation: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # what the trainer stored (fold, speakers, history)
    trained_classes: tuple[int, ...] | None = None  # label indices seen in training; None = all
    calibration: Any = None  # a models.calibration.Temperature, or None: probabilities as fitted
    drift: Any = None  # a models.drift.DriftReference (the training data, for drift checks), or None
    batch_size: int = 256

    def __post_init__(self):
        # float32 statistics, as stored, so an in-memory Predictor matches a loaded one bit for bit.
        self.normalisation = {k: np.asarray(v, dtype=np.float32) for k, v in self.normalisation.items()}
        self.input_shape = tuple(self.input_shape)
        if self.trained_classes is not None:
            self.trained_classes = tuple(int(c) for c in self.trained_classes)

    def prepare(self, X) -> np.ndarray:
        """Check X is (n, *input_shape) and apply the stored mean/std; float32."""
        X = np.asarray(X, dtype=np.float32)
        if X.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.model_name}: X has shape {X.shape}, expected (n, *{self.input_shape}); "
                f"for a single example pass X[None]"
            )
        if "mean" in self.normalisation:
            X = X - self.normalisation["mean"]
        if "std" in self.normalisation:
            X = X / self.normalisation["std"]
        return X.astype(np.float32, copy=False)

    def predict_proba(self, X, calibrated: bool = True) -> np.ndarray:
        """Class probabilities, float32 (n, len(labels)); column i is ``labels[i]``.

        The one predict path of ser-ray: cv, tune, train, evaluate and score all call it. A class
        the model never saw in training (a cross-corpus fold, a small speaker fold) gets
        probability 0: sklearn gives it no column, and a torch model's output for it is masked.
        With a ``calibration`` (and ``calibrated``), the probabilities are calibrated.
        """
        raw = self._raw_proba(X)
        if calibrated and self.calibration is not None:
            return self.calibration.apply(raw)
        return raw

    def _raw_proba(self, X) -> np.ndarray:
        X = self.prepare(X)
        out = np.zeros((len(X), len(self.labels)), dtype=np.float32)
        if not len(X):
            return out
        if self.kind == "classical":
            # sklearn's columns follow estimator.classes_ (the label indices it saw), not labels.
            out[:, np.asarray(self.model.classes_, dtype=int)] = self.model.predict_proba(X)
            return out
        self.model.eval()
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for i in range(0, len(X), self.batch_size):
                logits = self.model(torch.from_numpy(X[i : i + self.batch_size]).to(device))
                if self.trained_classes is not None and len(self.trained_classes) < len(self.labels):
                    unseen = torch.ones(len(self.labels), dtype=torch.bool, device=device)
                    unseen[list(self.trained_classes)] = False
                    logits = logits.masked_fill(unseen, float("-inf"))
                out[i : i + self.batch_size] = torch.softmax(logits, dim=1).cpu().numpy()
        return out

    def predict(self, X) -> list[str]:
        """Most probable label of each example."""
        return [self.labels[i] for i in self.predict_proba(X).argmax(axis=1)]


def save_model_dir(
    path: str | os.PathLike,
    *,
    model_name: str,
    model_config: dict | ModelConfig,
    input_shape: tuple[int, ...],
    labels: list[str],
    model,
    feature_config: dict,
    normalisation: dict[str, np.ndarray] | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    trained_classes: list[int] | tuple[int, ...] | None = None,
    calibration=None,
    drift=None,
) -> Path:
    """Write a model dir at ``path`` atomically (temp dir, then rename); returns ``path``.

    An existing model dir (or empty dir) at ``path`` is replaced; any other existing path is an error.
    ``normalisation`` may hold "mean" and/or "std" arrays that broadcast against ``input_shape``;
    a zero std (constant feature) is stored as 1.
    """
    path = Path(path)
    kind = get_model_spec(model_name).kind
    if isinstance(model_config, ModelConfig):
        model_config = dataclasses.asdict(model_config)
    config = dict(model_config)
    make_config(model_name, **config)  # rejects unknown fields now rather than at load time
    input_shape = tuple(int(s) for s in input_shape)
    labels = [str(lab) for lab in labels]
    _check_model(model_name, kind, model, input_shape, len(labels))
    norm = _check_normalisation(normalisation or {}, input_shape)
    replaceable = path.is_dir() and ((path / "model.json").exists() or not any(path.iterdir()))
    if path.exists() and not replaceable:
        raise FileExistsError(f"{path} exists and is not a model dir; choose another path or remove it")

    meta = {"format_version": FORMAT_VERSION, "name": model_name, "kind": kind, "config": config,
            "input_shape": list(input_shape), "n_classes": len(labels), "weights": WEIGHTS[kind],
            "trained_classes": None if trained_classes is None else [int(c) for c in trained_classes],
            "extra": extra or {}}

    def write(tmp: Path) -> None:
        _write_json(tmp / "model.json", meta)
        _write_json(tmp / "features.json", feature_config)
        _write_json(tmp / "labels.json", labels)
        _write_json(tmp / "metrics.json", metrics or {})
        _write_json(tmp / "versions.json", {**versions(), "format_version": str(FORMAT_VERSION)})
        if calibration is not None:
            _write_json(tmp / "calibration.json", calibration.to_json())
        if drift is not None:
            drift.save(tmp)
        save_numpy(norm, str(tmp / "normalisation.safetensors"))
        if kind == "torch":
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            if _saves_backbone(model_name):  # the pretrained part in Hugging Face format
                model.backbone.save_pretrained(tmp / BACKBONE)
                model.encoder.fe.save_pretrained(tmp / BACKBONE)
                state = {k: v for k, v in state.items() if not k.startswith(f"{BACKBONE}.")}
            save_torch(state, str(tmp / WEIGHTS[kind]), metadata={"format": "pt"})
        else:
            import skops.io  # classical models only: scoring a torch model never imports it

            skops.io.dump(model, tmp / WEIGHTS[kind])

    write_folder_atomic(path, write, replace=True)
    return path


class UntrustedModel(ValueError):
    """A model dir that would need code execution (pickle, an unknown type) to load."""


def check_model_dir(path: str | os.PathLike, *, trust: bool = False) -> Path:
    """Refuse a model dir that could run code or reach outside itself when loaded: links,
    files that carry pickle or code (:data:`UNSAFE_SUFFIXES`; the legacy ``model.joblib`` only
    when ``trust``). Returns the folder's resolved path."""
    root = Path(path)
    if root.is_symlink():
        raise UntrustedModel(f"model dir {path} is a link; pass the folder itself")
    if not root.is_dir():
        raise FileNotFoundError(f"model dir {path} does not exist; pass a dir written by "
                                "save_model_dir")
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            raise UntrustedModel(f"model dir {path}: {rel} is a link; a model folder holds its "
                                 "own files only (copy the target in, or retrain)")
        if p.is_file() and p.suffix.lower() in UNSAFE_SUFFIXES and not (trust and rel == LEGACY_PICKLE):
            raise UntrustedModel(
                f"model dir {path}: {rel} is a pickle/code file, which can run code when loaded; "
                "ser-ray never loads one" + (" (an old classical model.joblib loads with "
                "--trust-model, if you trust where the folder came from)"
                                             if rel == LEGACY_PICKLE else ""))
        elif not (p.is_file() or p.is_dir()):
            raise UntrustedModel(f"model dir {path}: {rel} is not a regular file or folder")
    return root.resolve()


def _weights_file(root: Path, meta: dict, kind: str, trust: bool) -> Path:
    """The fixed weights file of ``kind`` inside ``root``; ``model.json``'s own ``weights`` is
    only checked against it, never followed."""
    fixed = WEIGHTS[kind]
    named = meta.get("weights", fixed)
    if kind == "classical" and named == LEGACY_PICKLE and not (root / fixed).exists():
        if not trust:
            raise UntrustedModel(
                f"model dir {root}: its classical model is a pickle ({LEGACY_PICKLE}, written "
                "before ser-ray saved skops files), which can run any code when loaded; retrain "
                "it, or pass --trust-model if you trust where the folder came from")
        fixed = LEGACY_PICKLE
    elif named != fixed:
        raise UntrustedModel(f"model dir {root}: model.json names weights {named!r}, but a "
                             f"{kind} model keeps its weights in {fixed!r} inside its folder")
    weights = root / fixed
    if not weights.is_file():
        raise FileNotFoundError(f"model dir {root} lacks {fixed}; it is incomplete, write it again")
    return weights


def _load_classical(weights: Path, trust: bool):
    if weights.name == LEGACY_PICKLE:  # trusted by the caller (_weights_file checked)
        import joblib

        return joblib.load(weights)
    import skops.io

    found = skops.io.get_untrusted_types(file=weights)
    unknown = sorted(set(found) - set(SKOPS_TYPES))
    if unknown and not trust:
        raise UntrustedModel(
            f"{weights} holds types no ser-ray model uses: {unknown[:5]}; loading them could run "
            "code. Retrain, or pass --trust-model if you trust where the folder came from")
    return skops.io.load(weights, trusted=list(found))


def load_predictor(path: str | os.PathLike, *, device: str = "cpu",
                   trust: bool = False) -> Predictor:
    """Load a model dir written by :func:`save_model_dir` (torch weights onto ``device``).

    Nothing in the folder runs code (see the module doc); ``trust`` also loads the pickle of an
    old classical dir and skops types outside :data:`SKOPS_TYPES`."""
    root = check_model_dir(path, trust=trust)
    path = Path(path)
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"model dir {path} lacks {missing}; it is incomplete, write it again")
    meta = json.loads((path / "model.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"model dir {path} has format_version {meta.get('format_version')!r} but this ser_ray "
            f"reads {FORMAT_VERSION}; load it with the ser_ray version that wrote it "
            f"(see versions.json) or retrain"
        )
    name, shape = meta["name"], tuple(meta["input_shape"])
    kind = get_model_spec(name).kind  # the registry says what it is, not the file
    if meta.get("kind", kind) != kind:
        raise UntrustedModel(f"model dir {path}: model.json says kind {meta.get('kind')!r} but "
                             f"model {name!r} is a {kind} model; the folder was altered")
    weights = _weights_file(root, meta, kind, trust)
    if kind == "torch":
        config = rebuild_options(name, dict(meta["config"]))
        backbone = _saves_backbone(name)
        if backbone:  # built from the fine-tuned backbone kept in the dir, not the original
            config["model"] = str(root / BACKBONE)
        model = build_model(name, shape, meta["n_classes"], **config)
        try:
            missing, unexpected = model.load_state_dict(load_torch(str(weights)), strict=not backbone)
        except RuntimeError as e:
            raise ValueError(
                f"{weights} does not fit model {name!r} with the stored config: {e}"
            ) from None
        if backbone and (unexpected or any(not k.startswith(f"{BACKBONE}.") for k in missing)):
            raise ValueError(f"{weights} does not fit model {name!r}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        model.to(device).eval()
    else:
        model = _load_classical(weights, trust)
    return Predictor(
        model_name=name, kind=kind, model=model,
        labels=json.loads((path / "labels.json").read_text()), input_shape=shape,
        feature_config=json.loads((path / "features.json").read_text()),
        normalisation=load_numpy(str(path / "normalisation.safetensors")),
        config=meta["config"], metrics=json.loads((path / "metrics.json").read_text()),
        extra=meta.get("extra") or {}, trained_classes=meta.get("trained_classes"),
        calibration=_calibration(path), drift=DriftReference.load(path),
    )


def content_hash(files: dict[str, bytes]) -> str:
    """The identity of a model folder: sha256 over its files' relative names and contents, in
    :func:`folder_files` order."""
    import hashlib

    h = hashlib.sha256()
    for name, data in files.items():
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def folder_files(path: str | os.PathLike) -> dict[str, bytes]:
    """Every file of a model folder by its path relative to it (a backbone/ folder too)."""
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def folder_hash(path: str | os.PathLike) -> str:
    return content_hash(folder_files(path))


def _calibration(path: Path):
    """The model's calibrator from ``calibration.json`` (plain JSON), or None when it has none."""
    from ser_ray.models.calibration import Temperature

    file = path / "calibration.json"
    return Temperature.from_json(json.loads(file.read_text())) if file.is_file() else None


def save_predictor(path: str | os.PathLike, predictor: Predictor, *, metrics: dict | None = None,
                   extra: dict | None = None) -> Path:
    """Write an in-memory :class:`Predictor` (a fitted fold, a trained model) as a model dir;
    :func:`load_predictor` gives back one that predicts the same probabilities."""
    return save_model_dir(
        path, model_name=predictor.model_name, model_config=predictor.config,
        input_shape=predictor.input_shape, labels=predictor.labels, model=predictor.model,
        feature_config=predictor.feature_config, normalisation=predictor.normalisation,
        metrics=metrics, extra={**predictor.extra, **(extra or {})},
        trained_classes=predictor.trained_classes, calibration=predictor.calibration,
        drift=predictor.drift)


def _check_model(name: str, kind: str, model, input_shape: tuple[int, ...], n_classes: int) -> None:
    """Refuse a model whose type or output size does not match ``kind`` and the labels."""
    if kind == "torch":
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model {name!r} is a torch model; got {type(model).__name__}")
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape, device=device))
        model.train(was)
        if tuple(out.shape) != (1, n_classes):
            raise ValueError(
                f"model {name!r} outputs {tuple(out.shape[1:])} per example for input_shape "
                f"{input_shape} but there are {n_classes} labels"
            )
        return
    if isinstance(model, torch.nn.Module) or not hasattr(model, "predict_proba"):
        raise TypeError(f"model {name!r} is classical: pass its sklearn estimator with predict_proba, "
                        f"got {type(model).__name__}")
    classes = getattr(model, "classes_", None)
    if classes is None:
        raise ValueError(f"model {name!r} is not fitted (no classes_); fit it before saving")
    classes = np.asarray(classes)
    if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() >= n_classes:
        raise ValueError(f"model {name!r} predicts classes {list(classes)}; expected indices into "
                         f"{n_classes} labels")


def _check_normalisation(norm: dict, input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    unknown = sorted(set(norm) - set(NORMALISATION_KEYS))
    if unknown:
        raise ValueError(
            f"normalisation keys {unknown} are not understood; use {list(NORMALISATION_KEYS)}"
        )
    out = {}
    for k, v in norm.items():
        v = np.ascontiguousarray(v, dtype=np.float32)
        try:
            fits = np.broadcast_shapes(v.shape, input_shape) == input_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"normalisation {k!r} of shape {v.shape} does not broadcast to {input_shape}"
            )
        out[k] = np.where(v == 0, 1, v).astype(np.float32) if k == "std" else v
    return out


def _write_json(path: Path, obj) -> None:
    def default(o):
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{path.name}: cannot write {type(o).__name__} as JSON; pass plain values")

    path.write_text(json.dumps(obj, indent=2, default=default) + "\n")
