"""Fast scoring: the fitted estimator compiled once into plain arithmetic.

scikit-learn's ``predict`` validates its input on every call, which costs far more than scoring
one iris row. At start-up the estimator is turned into a scorer that holds only what prediction
needs (the linear model's weights, or the tree's node arrays). Its answers equal ``predict``'s
exactly (the service tests check this on the data set and on random points); batches go through
numpy with the same operations ``predict`` uses.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float64]


class Scorer(Protocol):
    n_features: int

    def predict_row(self, row: Sequence[float]) -> int:
        """The predicted class label of one row (plain Python: no numpy, no validation)."""

    def predict_matrix(self, x: FloatMatrix) -> list[int]:
        """The predicted class labels of a (rows, features) float64 matrix."""

    def predict_proba_matrix(self, x: FloatMatrix) -> FloatMatrix:
        """Class probabilities of a (rows, features) float64 matrix."""


class LinearScorer:
    """A linear classifier (e.g. LogisticRegression): argmax of ``x @ coef.T + intercept``."""

    def __init__(self, estimator: Any) -> None:
        self._estimator = estimator
        coef = np.asarray(estimator.coef_, dtype=np.float64)
        intercept = np.asarray(estimator.intercept_, dtype=np.float64)
        self.n_features = int(coef.shape[1])
        # The same operands predict uses (the transposed view, not a copy), so that numpy takes
        # the same code path and rounds identically.
        self._coef_t = estimator.coef_.T
        self._intercept = estimator.intercept_
        self._weights: list[tuple[float, list[float]]] = [
            (float(b), [float(w) for w in row]) for row, b in zip(coef, intercept, strict=True)
        ]
        self._classes = [int(c) for c in estimator.classes_]
        self._classes_arr = np.asarray(self._classes, dtype=np.int64)
        self._binary = coef.shape[0] == 1

    def predict_row(self, row: Sequence[float]) -> int:
        mul = operator.mul
        if self._binary:
            bias, weights = self._weights[0]
            return self._classes[1] if bias + sum(map(mul, weights, row)) > 0 else self._classes[0]
        best_index = 0
        best_score = 0.0
        for index, (bias, weights) in enumerate(self._weights):
            score = bias + sum(map(mul, weights, row))
            # Strictly greater: ties go to the first class, as numpy's argmax does.
            if index == 0 or score > best_score:
                best_index, best_score = index, score
        return self._classes[best_index]

    def predict_matrix(self, x: FloatMatrix) -> list[int]:
        scores = x @ self._coef_t + self._intercept
        # As predict does: a binary model has one score column, positive means classes_[1].
        indices = (scores.ravel() > 0).astype(np.intp) if self._binary else scores.argmax(axis=1)
        labels: list[int] = self._classes_arr[indices].tolist()
        return labels

    def predict_proba_matrix(self, x: FloatMatrix) -> FloatMatrix:
        return np.asarray(self._estimator.predict_proba(x), dtype=np.float64)


class TreeScorer:
    """A fitted DecisionTreeClassifier: walk the node arrays; each leaf knows its class."""

    def __init__(self, estimator: Any) -> None:
        self._estimator = estimator
        tree = estimator.tree_
        self._tree = tree
        self.n_features = int(estimator.n_features_in_)
        self._left: list[int] = tree.children_left.tolist()
        self._right: list[int] = tree.children_right.tolist()
        self._feature: list[int] = tree.feature.tolist()
        self._threshold: list[float] = tree.threshold.tolist()
        classes = np.asarray(estimator.classes_, dtype=np.int64)
        # value has shape (nodes, outputs, classes); predict takes argmax over classes.
        leaf_class = classes[np.asarray(tree.value)[:, 0, :].argmax(axis=1)]
        self._leaf_class_arr = leaf_class
        self._leaf_class: list[int] = leaf_class.tolist()

    def predict_row(self, row: Sequence[float]) -> int:
        # predict compares float32 features with float64 thresholds: round the same way.
        values = array("f", row)
        left, right, feature, threshold = self._left, self._right, self._feature, self._threshold
        node = 0
        while left[node] != -1:
            node = left[node] if values[feature[node]] <= threshold[node] else right[node]
        return self._leaf_class[node]

    def predict_matrix(self, x: FloatMatrix) -> list[int]:
        leaves = self._tree.apply(np.ascontiguousarray(x, dtype=np.float32))
        labels: list[int] = self._leaf_class_arr[leaves].tolist()
        return labels

    def predict_proba_matrix(self, x: FloatMatrix) -> FloatMatrix:
        return np.asarray(self._estimator.predict_proba(x), dtype=np.float64)


class EstimatorScorer:
    """Any other classifier: scikit-learn's own predict (correct, just slower)."""

    def __init__(self, estimator: Any) -> None:
        self._estimator = estimator
        self.n_features = int(estimator.n_features_in_)

    def predict_row(self, row: Sequence[float]) -> int:
        x = np.asarray([row], dtype=np.float64)
        return int(self._estimator.predict(x)[0])

    def predict_matrix(self, x: FloatMatrix) -> list[int]:
        return [int(label) for label in self._estimator.predict(x)]

    def predict_proba_matrix(self, x: FloatMatrix) -> FloatMatrix:
        return np.asarray(self._estimator.predict_proba(x), dtype=np.float64)


def compile_scorer(estimator: Any) -> Scorer:
    # Imported here so that the scorer classes stay importable without scikit-learn's start-up.
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    if isinstance(estimator, LogisticRegression):
        return LinearScorer(estimator)
    if isinstance(estimator, DecisionTreeClassifier) and estimator.n_outputs_ == 1:
        return TreeScorer(estimator)
    return EstimatorScorer(estimator)
