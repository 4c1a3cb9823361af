"""Classical models: sklearn pipelines ``StandardScaler -> estimator`` on per-utterance vectors.

Input ``(n, d)`` float32: a vector extractor (handcrafted173, handcrafted94, egemaps) or mfcc /
logmel with ``pooling="mean"`` / ``"mean_std"``. The scaler sits inside the pipeline, so it is
fitted on whatever ``fit`` sees: the train split only. Every model supports ``predict_proba``.
The shared training fields (lr, batch_size, ...) are unused unless a model says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ser_ray.models.base import ModelConfig, check_rank, register_model

# sklearn is imported where an estimator is built: a process that only scores a torch model
# (every scoring actor) would otherwise pay ~0.9 CPU s importing it at start-up.

VECTOR_HINT = (
    "classical models need one feature vector per example: extract mfcc/logmel with "
    'pooling="mean_std" (or "mean"), or use a vector extractor (handcrafted173, handcrafted94, egemaps)'
)


@dataclass(frozen=True)
class ClassicalConfig(ModelConfig):
    kind: ClassVar[str] = "classical"
    # Whether fit takes sample weights (``model__sample_weight``), i.e. the class_weights sampler.
    supports_sample_weight: ClassVar[bool] = True
    seed: int = 0

    def estimator(self, n_classes: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def build(self, input_shape: tuple[int, ...], n_classes: int):
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        check_rank(self, input_shape, (1,), VECTOR_HINT)
        return Pipeline([("scale", StandardScaler()), ("model", self.estimator(n_classes))])


@register_model("svm")
@dataclass(frozen=True)
class SVMConfig(ClassicalConfig):
    """RBF SVM. Input (d,) vectors. C=30 without augmentation, 100 with (METHODS).

    Probabilities come from Platt (sigmoid) calibration over ``calibration_folds`` stratified
    folds, then one SVC refitted on all rows (what ``SVC(probability=True)`` did before sklearn
    deprecated it); each class needs >= ``calibration_folds`` training rows. 0 = plain SVC,
    no ``predict_proba``.
    """

    C: float = 30.0
    gamma: str | float = "scale"
    class_weight: str | None = None  # None | "balanced"
    calibration_folds: int = 5

    def estimator(self, n_classes):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        svc = SVC(C=self.C, kernel="rbf", gamma=self.gamma, class_weight=self.class_weight,
                  random_state=self.seed)
        if not self.calibration_folds:
            return svc
        return CalibratedClassifierCV(svc, method="sigmoid", cv=self.calibration_folds, ensemble=False)


@register_model("knn")
@dataclass(frozen=True)
class KNNConfig(ClassicalConfig):
    """k nearest neighbours. Input (d,) vectors; METHODS sweeps k 1..10, manhattan vs euclidean."""

    supports_sample_weight: ClassVar[bool] = False  # use the "ros" sampler instead, as METHODS does
    k: int = 5
    metric: str = "manhattan"  # "manhattan" | "euclidean"
    weights: str = "uniform"  # "uniform" | "distance"

    def __post_init__(self):
        super().__post_init__()
        if self.metric not in ("manhattan", "euclidean") or self.weights not in ("uniform", "distance"):
            raise ValueError(f"knn: metric must be manhattan|euclidean and weights uniform|distance, "
                             f"got {self.metric!r}, {self.weights!r}")

    def estimator(self, n_classes):
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(n_neighbors=self.k, metric=self.metric, weights=self.weights)


@register_model("mlp")
@dataclass(frozen=True)
class MLPConfig(ClassicalConfig):
    """sklearn MLP. Input (d,) vectors; ``lr`` is its Adam learning rate, ``epochs`` its max_iter."""

    hidden: tuple[int, ...] = (256, 128)
    alpha: float = 1e-4  # L2 penalty
    epochs: int = 300

    def estimator(self, n_classes):
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(hidden_layer_sizes=self.hidden, alpha=self.alpha,
                             learning_rate_init=self.lr, max_iter=self.epochs, random_state=self.seed)


@register_model("logreg")
@dataclass(frozen=True)
class LogRegConfig(ClassicalConfig):
    """Multinomial logistic regression. Input (d,) vectors."""

    C: float = 1.0
    max_iter: int = 2000
    class_weight: str | None = None

    def estimator(self, n_classes):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight=self.class_weight,
                                  random_state=self.seed)


@register_model("random_forest")
@dataclass(frozen=True)
class RandomForestConfig(ClassicalConfig):
    """Random forest. Input (d,) vectors."""

    n_estimators: int = 300
    max_depth: int | None = None
    class_weight: str | None = None
    n_jobs: int = 1

    def estimator(self, n_classes):
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                      class_weight=self.class_weight, n_jobs=self.n_jobs,
                                      random_state=self.seed)


@register_model("gradient_boosting")
@dataclass(frozen=True)
class GradientBoostingConfig(ClassicalConfig):
    """Histogram gradient boosting (sklearn's fast GBDT). Input (d,) vectors."""

    max_iter: int = 200
    learning_rate: float = 0.1
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20

    def estimator(self, n_classes):
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                              max_leaf_nodes=self.max_leaf_nodes,
                                              min_samples_leaf=self.min_samples_leaf,
                                              random_state=self.seed)
