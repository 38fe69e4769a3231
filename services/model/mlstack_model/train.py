"""Train every model version on a data set that ships inside scikit-learn (nothing downloaded).

Run at image build time (``python -m mlstack_model.train --out /opt/mlstack/models``) or, when the
server starts locally and finds no artifacts, on first start into the cache directory.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from mlstack_model import artifacts

# Data sets bundled with scikit-learn, by the MODEL_NAME that serves them: each one's loader in
# sklearn.datasets. scikit-learn is imported only to train: the server starts without it.
DATASETS: Final = {"iris": "load_iris"}


def _logistic_regression() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=10_000)


def _decision_tree() -> Any:
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=3, random_state=0)


# The versions differ genuinely: v1 is a linear model, v2 a shallow decision tree. Both are
# deterministic, so a rebuild produces the same predictions.
ESTIMATORS: dict[str, Callable[[], Any]] = {"v1": _logistic_regression, "v2": _decision_tree}


def sklearn_version() -> str:
    """The installed scikit-learn's version, read without importing it."""
    return importlib.metadata.version("scikit-learn")


def train_version(name: str, version: str) -> artifacts.Artifact:
    if name not in DATASETS:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(sorted(DATASETS))}")
    if version not in ESTIMATORS:
        raise ValueError(f"unknown version {version!r}; known: {', '.join(ESTIMATORS)}")
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    bunch = getattr(sklearn.datasets, DATASETS[name])()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    estimator = ESTIMATORS[version]()
    estimator.fit(x_train, y_train)
    metadata = artifacts.ArtifactMetadata(
        name=name,
        version=version,
        estimator=repr(estimator),
        dataset=f"sklearn.datasets.{DATASETS[name]}",
        feature_names=[str(f) for f in bunch.feature_names],
        class_labels=[int(c) for c in estimator.classes_],
        class_names=[str(c) for c in bunch.target_names],
        sklearn_version=sklearn_version(),
        holdout_accuracy=round(float(estimator.score(x_test, y_test)), 4),
    )
    return artifacts.Artifact(metadata=metadata, estimator=estimator)


def train_all(model_dir: Path, names: list[str]) -> list[Path]:
    return [
        artifacts.save(model_dir, train_version(name, version))
        for name in names
        for version in ESTIMATORS
    ]


def ensure_trained(model_dir: Path, name: str) -> None:
    """Train ``name`` into ``model_dir`` unless every version is there, trained by the installed
    scikit-learn and compiled for serving (every estimator above has a compiled form)."""
    present = artifacts.available_versions(model_dir, name)
    if set(ESTIMATORS) <= set(present):
        installed = sklearn_version()
        if all(
            artifacts.read_metadata(model_dir, name, v).sklearn_version == installed
            and artifacts.has_scorer(model_dir, name, v)
            for v in present
        ):
            return
    if name not in DATASETS:
        # Nothing to train: the server reports the missing artifact itself.
        return
    train_all(model_dir, [name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlstack_model.train", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for the artifacts")
    parser.add_argument(
        "--name",
        action="append",
        choices=sorted(DATASETS),
        help="model(s) to train (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    for path in train_all(args.out, args.name or sorted(DATASETS)):
        meta = artifacts.read_metadata(args.out, path.parent.name, path.name)
        print(f"{path}: {meta.estimator} holdout accuracy {meta.holdout_accuracy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
