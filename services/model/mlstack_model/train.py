"""Train every model version on a data set that ships inside scikit-learn (nothing downloaded).

Run at image build time (``python -m mlstack_model.train --out /opt/mlstack/models``) or, when the
server starts locally and finds no artifacts, on first start into the cache directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from mlstack_model import artifacts

# Data sets bundled with scikit-learn, by the MODEL_NAME that serves them.
DATASETS: dict[str, Callable[..., Any]] = {"iris": load_iris}

# The versions differ genuinely: v1 is a linear model, v2 a shallow decision tree. Both are
# deterministic, so a rebuild produces the same predictions.
ESTIMATORS: dict[str, Callable[[], Any]] = {
    "v1": lambda: LogisticRegression(C=1.0, max_iter=10_000),
    "v2": lambda: DecisionTreeClassifier(max_depth=3, random_state=0),
}


def train_version(name: str, version: str) -> artifacts.Artifact:
    if name not in DATASETS:
        raise ValueError(f"unknown model name {name!r}; known: {', '.join(sorted(DATASETS))}")
    if version not in ESTIMATORS:
        raise ValueError(f"unknown version {version!r}; known: {', '.join(ESTIMATORS)}")
    bunch = DATASETS[name]()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    estimator = ESTIMATORS[version]()
    estimator.fit(x_train, y_train)
    metadata = artifacts.ArtifactMetadata(
        name=name,
        version=version,
        estimator=repr(estimator),
        dataset=f"sklearn.datasets.load_{name}",
        feature_names=[str(f) for f in bunch.feature_names],
        class_labels=[int(c) for c in estimator.classes_],
        class_names=[str(c) for c in bunch.target_names],
        sklearn_version=sklearn.__version__,
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
    """Train ``name`` into ``model_dir`` unless every version is there, from this sklearn."""
    present = artifacts.available_versions(model_dir, name)
    if present and set(ESTIMATORS) <= set(present):
        stale = [
            v
            for v in present
            if artifacts.read_metadata(model_dir, name, v).sklearn_version != sklearn.__version__
        ]
        if not stale:
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
