"""The model's artifacts and its fast scoring path (in-process, no server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from mlstack_model import artifacts, train
from mlstack_model.dataplane import score
from mlstack_model.loaded_model import load_model
from mlstack_model.rest import protocol
from mlstack_model.scoring import LinearScorer, TreeScorer, compile_scorer
from mlstack_model.settings import ModelSettings
from sklearn.datasets import load_iris

VERSIONS = ["v1", "v2"]


def _probe_rows() -> np.ndarray[Any, np.dtype[np.float64]]:
    """The data set itself plus random points around and far beyond it."""
    data = load_iris().data
    rng = np.random.default_rng(7)
    low, high = data.min(axis=0), data.max(axis=0)
    around = rng.uniform(low - 1, high + 1, size=(3000, data.shape[1]))
    wild = rng.normal(0, 50, size=(500, data.shape[1]))
    # Values on a tree's thresholds exercise the float32 rounding that predict applies.
    return np.vstack([data, around, wild, np.round(around, 2)])


@pytest.mark.parametrize("version", VERSIONS)
def test_fast_row_scoring_equals_sklearn_predict(model_dir: Path, version: str) -> None:
    artifact = artifacts.load(model_dir, "iris", version)
    scorer = compile_scorer(artifact.estimator)
    rows = _probe_rows()
    expected = artifact.estimator.predict(rows).tolist()
    assert [scorer.predict_row(row) for row in rows.tolist()] == expected


@pytest.mark.parametrize("version", VERSIONS)
def test_batch_scoring_equals_sklearn_predict(model_dir: Path, version: str) -> None:
    artifact = artifacts.load(model_dir, "iris", version)
    scorer = compile_scorer(artifact.estimator)
    rows = _probe_rows()
    assert scorer.predict_matrix(rows) == artifact.estimator.predict(rows).tolist()


def _infer_body(rows: list[list[float]], outputs: list[str] | None = None) -> bytes:
    tensor = {"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64"}
    body: dict[str, Any] = {"inputs": [{**tensor, "data": [v for row in rows for v in row]}]}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return orjson.dumps(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_served_path_answers_as_sklearn_on_the_data_set(model_dir: Path, version: str) -> None:
    """Each shipped iris row as the server takes it (the REST parser, then the scoring path that
    answers one row without numpy or scikit-learn's checks), and all 150 in one batch: the
    classes predict gives and the probabilities predict_proba gives, exactly."""
    settings = ModelSettings.from_env({"MODEL_DIR": str(model_dir), "MODEL_VERSION": version})
    model = load_model(settings)
    data = load_iris().data
    expected = model.estimator.predict(data).tolist()
    answers = []
    for row in data.tolist():
        request = protocol.parse_infer_request(_infer_body([row]), None, 4, 4096)
        (tensor,) = score(model, request)
        answers.extend(tensor.data)
    assert answers == expected
    batch = protocol.parse_infer_request(
        _infer_body(data.tolist(), ["predict", "predict_proba"]), None, 4, 4096
    )
    labels, proba = score(model, batch)
    assert labels.data == expected
    assert proba.shape == (150, 3)
    assert proba.data == model.estimator.predict_proba(data).ravel().tolist()


def test_each_version_compiles_to_its_fast_scorer(model_dir: Path) -> None:
    v1 = compile_scorer(artifacts.load(model_dir, "iris", "v1").estimator)
    v2 = compile_scorer(artifacts.load(model_dir, "iris", "v2").estimator)
    assert isinstance(v1, LinearScorer)
    assert isinstance(v2, TreeScorer)


def test_versions_are_genuinely_different_models(model_dir: Path) -> None:
    v1 = artifacts.load(model_dir, "iris", "v1")
    v2 = artifacts.load(model_dir, "iris", "v2")
    assert type(v1.estimator) is not type(v2.estimator)
    rows = _probe_rows()
    assert (v1.estimator.predict(rows) != v2.estimator.predict(rows)).any()


@pytest.mark.parametrize("version", VERSIONS)
def test_artifact_records_its_version(model_dir: Path, version: str) -> None:
    artifact = artifacts.load(model_dir, "iris", version)
    assert artifact.metadata.version == version
    on_disk = json.loads((model_dir / "iris" / version / "metadata.json").read_text())
    assert on_disk["version"] == version
    assert on_disk["feature_names"] == artifact.metadata.feature_names
    assert artifact.metadata.holdout_accuracy > 0.85


def test_available_versions_are_ordered_newest_last(model_dir: Path) -> None:
    assert artifacts.available_versions(model_dir, "iris") == ["v1", "v2"]


def test_loading_an_artifact_under_the_wrong_version_is_refused(
    model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "iris").mkdir()
    (tmp_path / "iris" / "v9").symlink_to(model_dir / "iris" / "v1")
    with pytest.raises(ValueError, match="holds iris v1"):
        artifacts.load(tmp_path, "iris", "v9")


def test_ensure_trained_fills_an_empty_cache(tmp_path: Path) -> None:
    train.ensure_trained(tmp_path, "iris")
    assert artifacts.available_versions(tmp_path, "iris") == ["v1", "v2"]
