"""Fast scoring: the fitted estimator compiled once into plain arithmetic, stored beside it.

scikit-learn's ``predict`` validates its input on every call, which costs far more than scoring
one iris row, and importing scikit-learn (with SciPy) takes seconds of a pod's start. So training
compiles each estimator into a scorer that holds only what prediction needs (a linear model's
weights, a tree's node arrays) and stores those arrays in the artifact (``scorer.npz``); the
server rebuilds the scorer from them with numpy alone, and never unpickles. Its answers equal
``predict``'s and ``predict_proba``'s exactly (the service tests check this on the data set and
on random points): the same operations on the same operands, in the same order. Where those
operations overflow (a linear model's scores, for inputs near the largest double), scikit-learn
answers a class picked from infinities and probabilities of NaN; these scorers refuse the row
(``ScoresOverflowError``). So does the tree scorer for a row that is not finite once cast to the
float32 a tree compares (any double beyond 3.4e38), as scikit-learn's tree refuses it.

An estimator without a compiled form is served by its pickle and scikit-learn's own methods.
"""

from __future__ import annotations

import math
import warnings
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, SupportsInt

import numpy as np
import numpy.typing as npt

FloatMatrix = npt.NDArray[np.float64]
Arrays = Mapping[str, npt.NDArray[Any]]

# The layout of a stored scorer's arrays; a file of another version is not read.
FORMAT_VERSION: Final = 1

# Scores that overflow are refused (ScoresOverflowError), so numpy's warning about the same
# overflow would only add a line to the log. Silenced for this module's arithmetic alone, not
# with np.errstate around every product: that would cost each call more than the check itself.
warnings.filterwarnings(
    "ignore", r"(overflow|invalid value) encountered", RuntimeWarning, r"mlstack_model\.scoring"
)


class ScoresOverflowError(ValueError):
    """A row's values, finite as they are, lie so far outside what the model was fitted on that
    its arithmetic overflows (``overflows`` says where: a linear model's weighted sum passing the
    largest double, or a value beyond the float32 a tree compares), so no class and no
    probability can be computed from them."""

    def __init__(self, row: int, overflows: str = "its scores") -> None:
        super().__init__(f"row {row}: the values overflow {overflows}")
        self.row = row
        self.overflows = overflows


class Scorer(Protocol):
    """Any method may raise ScoresOverflowError for a row the model cannot score."""

    n_features: int

    def predict_row(self, row: Sequence[float]) -> int:
        """The predicted class label of one row (no validation): the class predict_matrix gives
        the row alone, to the last bit."""

    def predict_matrix(self, x: FloatMatrix) -> list[int]:
        """The predicted class labels of a (rows, features) float64 matrix."""

    def predict_proba_matrix(self, x: FloatMatrix) -> FloatMatrix:
        """Class probabilities of a (rows, features) float64 matrix."""

    def predict_and_proba_matrix(self, x: FloatMatrix) -> tuple[list[int], FloatMatrix]:
        """Both of the above from one computation of the rows' scores (a request that names no
        outputs gets both)."""


class LinearScorer:
    """A multinomial linear classifier (LogisticRegression with three classes or more): the
    class with the highest ``x @ coef.T + intercept``; probabilities by its softmax. A row whose
    scores are not finite (inputs near the largest double overflow them) raises
    ``ScoresOverflowError``: its argmax and its softmax (NaN) would mean nothing."""

    def __init__(
        self, *, coef: FloatMatrix, intercept: npt.NDArray[np.float64], classes: Any
    ) -> None:
        self.n_features = int(coef.shape[1])
        self._coef = np.ascontiguousarray(coef, dtype=np.float64)
        # The same operands predict uses (the transposed view of the C-ordered weights, not a
        # copy), so that numpy takes the same code path and rounds identically.
        self._coef_t = self._coef.T
        self._intercept = np.asarray(intercept, dtype=np.float64)
        self._classes_arr = np.asarray(classes, dtype=np.int64)
        self._classes: list[int] = self._classes_arr.tolist()

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"coef": self._coef, "intercept": self._intercept, "classes": self._classes_arr}

    def predict_row(self, row: Sequence[float]) -> int:
        # The row's scores as _decision computes them for a matrix of that row alone: a sum in
        # another order rounds otherwise, and a row near a class boundary, or near overflow,
        # would get another answer than the same request naming every output. What follows is
        # the rest of predict_matrix in plain Python, which one row makes cheaper.
        x = np.array((row,), dtype=np.float64)
        scores: list[float] = (x @ self._coef_t + self._intercept)[0].tolist()
        if not all(map(math.isfinite, scores)):
            raise ScoresOverflowError(0)
        # The first of the highest, as numpy's argmax.
        return self._classes[scores.index(max(scores))]

    def _decision(self, x: FloatMatrix) -> FloatMatrix:
        scores: FloatMatrix = x @ self._coef_t + self._intercept
        if not np.isfinite(scores).all():
            raise ScoresOverflowError(int(np.isfinite(scores).all(axis=1).argmin()))
        return scores

    def predict_matrix(self, x: FloatMatrix) -> list[int]:
        labels: list[int] = self._classes_arr[self._decision(x).argmax(axis=1)].tolist()
        return labels

    def predict_proba_matrix(self, x: FloatMatrix) -> FloatMatrix:
        return _softmax(self._decision(x))

    def predict_and_proba_matrix(self, x: FloatMatrix) -> tuple[list[int], FloatMatrix]:
        scores = self._decision(x)
        # The classes first: the softmax overwrites the scores.
        labels: list[int] = self._classes_arr[scores.argmax(axis=1)].tolist()
        return labels, _softmax(scores)


def _softmax(scores: FloatMatrix) -> FloatMatrix:
    """scikit-learn's softmax, step by step and in place: less the row's maximum, exp, over the
    row's sum."""
    scores -= scores.max(axis=1).reshape((-1, 1))
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1).reshape((-1, 1))
    return scores


# What a tree's overflow is (ScoresOverflowError.overflows).
TREE_OVERFLOWS: Final = "its float32 features"


class TreeScorer:
    """A fitted single-output DecisionTreeClassifier: walk the node arrays to a leaf; each leaf
    holds its class and its class fractions. A row with a value that is not finite as float32
    (a double beyond 3.4e38) raises ``ScoresOverflowError``, as scikit-learn's tree refuses it,
    whether or not the row's path compares that feature."""

    def __init__(
        self,
        *,
        children_left: npt.NDArray[np.intp],
        children_right: npt.NDArray[np.intp],
        feature: npt.NDArray[np.intp],
        threshold: npt.NDArray[np.float64],
        value: FloatMatrix,
        classes: Any,
        n_features: SupportsInt,
    ) -> None:
        self._left_arr = np.asarray(children_left, dtype=np.intp)
        self._right_arr = np.asarray(children_right, dtype=np.intp)
        self._feature_arr = np.asarray(feature, dtype=np.intp)
        self._threshold_arr = np.asarray(threshold, dtype=np.float64)
        # (nodes, classes): the fractions predict_proba answers for a row ending in each node.
        self._value = np.asarray(value, dtype=np.float64)
        self._classes_arr = np.asarray(classes, dtype=np.int64)
        self.n_features = int(n_features)
        self._left: list[int] = self._left_arr.tolist()
        self._right: list[int] = self._right_arr.tolist()
        self._feature: list[int] = self._feature_arr.tolist()
        self._threshold: list[float] = self._threshold_arr.tolist()
        # predict takes the argmax over each node's classes.
        self._leaf_class_arr = self._classes_arr[self._value.argmax(axis=1)]
        self._leaf_class: list[int] = self._leaf_class_arr.tolist()
        self._depth = _depth(self._left, self._right)

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "children_left": self._left_arr,
            "children_right": self._right_arr,
            "feature": self._feature_arr,
            "threshold": self._threshold_arr,
            "value": self._value,
            "classes": self._classes_arr,
            "n_features": np.asarray(self.n_features),
        }

    def predict_row(self, row: Sequence[float]) -> int:
        # predict compares float32 features with float64 thresholds: round the same way.
        values = array("f", row)
        # array("f") turns a double beyond float32 into infinity. The sum of a row of finite
        # float32 values cannot overflow a double, so it is finite exactly when they all are.
        if not math.isfinite(sum(values)):
            raise ScoresOverflowError(0, TREE_OVERFLOWS)
        left, right, feature, threshold = self._left, self._right, self._feature, self._threshold
        node = 0
        while left[node] != -1:
            node = left[node] if values[feature[node]] <= threshold[node] else right[node]
        return self._leaf_class[node]

    def _leaves(self, x: FloatMatrix) -> npt.NDArray[np.intp]:
        """Each row's leaf, every row one level further per step (the tree's depth in all)."""
        x32 = np.asarray(x, dtype=np.float32)
        finite = np.isfinite(x32)
        if not finite.all():
            raise ScoresOverflowError(int(finite.all(axis=1).argmin()), TREE_OVERFLOWS)
        rows = np.arange(x32.shape[0])
        node = np.zeros(x32.shape[0], dtype=np.intp)
        for _ in range(self._depth):
            inner = self._left_arr[node] != -1
            # A float32 feature against a float64 threshold compares as doubles, as in predict.
            left = x32[rows, self._feature_arr[node]] <= self._threshold_arr[node]
            step = np.where(left, self._left_arr[node], self._right_arr[node])
            node = np.where(inner, step, node)
        return node

    def predict_matrix(self, x: FloatMatrix) -> list[int]:
        labels: list[int] = self._leaf_class_arr[self._leaves(x)].tolist()
        return labels

    def predict_proba_matrix(self, x: FloatMatrix) -> FloatMatrix:
        proba: FloatMatrix = self._value[self._leaves(x)]
        return proba

    def predict_and_proba_matrix(self, x: FloatMatrix) -> tuple[list[int], FloatMatrix]:
        leaves = self._leaves(x)
        labels: list[int] = self._leaf_class_arr[leaves].tolist()
        proba: FloatMatrix = self._value[leaves]
        return labels, proba


def _depth(left: list[int], right: list[int]) -> int:
    """The number of edges on the tree's longest path from the root."""
    deepest, level = 0, [0]
    while True:
        level = [child for node in level if left[node] != -1 for child in (left[node], right[node])]
        if not level:
            return deepest
        deepest += 1


class EstimatorScorer:
    """Any other classifier: scikit-learn's own methods (correct, just slower)."""

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

    def predict_and_proba_matrix(self, x: FloatMatrix) -> tuple[list[int], FloatMatrix]:
        # Two calls: an estimator's predict need not be the argmax of its predict_proba (a
        # neighbours vote, say), and only its own methods are known to answer as it does.
        return self.predict_matrix(x), self.predict_proba_matrix(x)


def compile_scorer(estimator: Any) -> LinearScorer | TreeScorer | None:
    """The compiled form of a fitted estimator, or None where it has none."""
    # Imported here: serving a compiled scorer never imports scikit-learn.
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    if isinstance(estimator, LogisticRegression) and len(estimator.classes_) > 2:
        return LinearScorer(
            coef=estimator.coef_, intercept=estimator.intercept_, classes=estimator.classes_
        )
    if isinstance(estimator, DecisionTreeClassifier) and estimator.n_outputs_ == 1:
        tree = estimator.tree_
        return TreeScorer(
            children_left=tree.children_left,
            children_right=tree.children_right,
            feature=tree.feature,
            threshold=tree.threshold,
            # (nodes, outputs, classes): scikit-learn keeps each node's class fractions.
            value=np.asarray(tree.value)[:, 0, : len(estimator.classes_)],
            classes=estimator.classes_,
            n_features=estimator.n_features_in_,
        )
    return None


# Each compiled scorer by the name its file gives: `arrays()` holds its constructor's arguments.
_KINDS: Final[dict[str, type[LinearScorer | TreeScorer]]] = {
    "linear": LinearScorer,
    "tree": TreeScorer,
}


def stored(scorer: LinearScorer | TreeScorer) -> dict[str, npt.NDArray[Any]]:
    """What ``from_stored`` rebuilds ``scorer`` from: its arrays, its kind, the format."""
    (kind,) = [name for name, cls in _KINDS.items() if type(scorer) is cls]
    return {"format": np.asarray(FORMAT_VERSION), "kind": np.asarray(kind), **scorer.arrays()}


def from_stored(arrays: Arrays) -> LinearScorer | TreeScorer:
    """The scorer ``stored`` saved; ValueError for a file this code does not know."""
    version = int(arrays["format"]) if "format" in arrays else None
    if version != FORMAT_VERSION:
        raise ValueError(f"scorer format {version}, this server reads {FORMAT_VERSION}")
    kind = str(arrays["kind"])
    if kind not in _KINDS:
        raise ValueError(f"unknown scorer kind {kind!r}")
    return _KINDS[kind](**{key: arrays[key] for key in arrays if key not in ("format", "kind")})
