"""The model's artifacts and its fast scoring path (in-process, no server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from mlstack_common.tensor_names import OUTPUT_PREDICT
from mlstack_model import artifacts, train
from mlstack_model.dataplane import score
from mlstack_model.errors import ProtocolError
from mlstack_model.loaded_model import load_model
from mlstack_model.rest import protocol
from mlstack_model.scoring import (
    EstimatorScorer,
    LinearScorer,
    ScoresOverflowError,
    TreeScorer,
    compile_scorer,
    from_stored,
    stored,
)
from mlstack_model.settings import ModelSettings
from mlstack_model.tensors import DEFAULT_OUTPUTS, InferRequest, RequestedOutput
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from components.app import MODEL_NAME
from tests.services import oip
from tests.services.oip import tensor

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


# v1's scores of these rows round to other classes, or overflow or not, in another order of
# summation than numpy's: a row on the boundary between versicolor and virginica (their scores
# about one ulp apart), and a row of finite values near the largest double.
ORDER_SENSITIVE = [
    [5.069932731727999, 5.409341840026354, 6.328781442365451, 0.4191988032493516],
    [1.4294808230569777e308, 1.4623667980294275e308, 4.7297687744226e307, -9.325160368496636e307],
]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("version", VERSIONS)
def test_fast_row_scoring_equals_sklearn_predict_of_the_row_alone(
    model_dir: Path, version: str
) -> None:
    """A one-row request is scored as scikit-learn scores that row alone: the same class, and
    the same refusal where the scores overflow."""
    estimator = artifacts.load(model_dir, MODEL_NAME, version).estimator
    scorer = artifacts.load_scorer(model_dir, MODEL_NAME, version)
    for row in [*_probe_rows().tolist(), *ORDER_SENSITIVE]:
        alone = np.asarray([row])
        try:
            expected: int | str = scorer.predict_matrix(alone)[0]
        except ScoresOverflowError:
            expected = "refused"
        else:
            assert expected == estimator.predict(alone)[0], row
        try:
            assert scorer.predict_row(row) == expected, row
        except ScoresOverflowError:
            assert expected == "refused", row


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("row", ORDER_SENSITIVE)
def test_one_rows_class_does_not_depend_on_the_outputs_named(
    model_dir: Path, row: list[float]
) -> None:
    """The gateway names `predict` alone; a client naming no outputs gets the same class."""
    model = load_model(ModelSettings.from_env({"MODEL_DIR": str(model_dir), "MODEL_VERSION": "v1"}))

    def answer(outputs: tuple[RequestedOutput, ...]) -> object:
        try:
            return score(model, InferRequest(None, 1, row, outputs))[0].data
        except ProtocolError as exc:
            return exc.message

    assert answer((RequestedOutput(OUTPUT_PREDICT),)) == answer(DEFAULT_OUTPUTS[False])


@pytest.mark.parametrize("version", VERSIONS)
def test_batch_scoring_equals_sklearn_predict_and_predict_proba(
    model_dir: Path, version: str
) -> None:
    """The stored scorer, rebuilt from its arrays alone, against the pickled estimator: the same
    classes and, to the last bit, the same probabilities."""
    estimator = artifacts.load(model_dir, MODEL_NAME, version).estimator
    scorer = artifacts.load_scorer(model_dir, MODEL_NAME, version)
    rows = _probe_rows()
    assert scorer.predict_matrix(rows) == estimator.predict(rows).tolist()
    proba = scorer.predict_proba_matrix(rows)
    assert proba.dtype == np.float64
    assert np.array_equal(proba, estimator.predict_proba(rows))


def _infer_body(rows: list[list[float]], outputs: list[str] | None = None) -> bytes:
    flat = [v for row in rows for v in row]
    body: dict[str, Any] = {"inputs": [tensor(flat, [len(rows), 4])]}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return orjson.dumps(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_served_path_answers_as_sklearn_on_the_data_set(model_dir: Path, version: str) -> None:
    """Each shipped iris row as the server takes it (the REST parser, then the scoring path that
    answers one row naming `predict` alone without numpy or scikit-learn's checks), and all 150
    in one batch: the classes predict gives and the probabilities predict_proba gives, exactly."""
    settings = ModelSettings.from_env({"MODEL_DIR": str(model_dir), "MODEL_VERSION": version})
    model = load_model(settings)
    estimator = artifacts.load(model_dir, MODEL_NAME, version).estimator
    data = load_iris().data
    expected = estimator.predict(data).tolist()
    answers = []
    for row in data.tolist():
        request = protocol.parse_infer_request(_infer_body([row], ["predict"]), None, 4, 4096)
        (tensor,) = score(model, request)
        answers.extend(tensor.data)
    assert answers == expected
    batch = protocol.parse_infer_request(
        _infer_body(data.tolist(), ["predict", "predict_proba"]), None, 4, 4096
    )
    labels, proba = score(model, batch)
    assert labels.data == expected
    assert proba.shape == (150, 3)
    assert proba.data == estimator.predict_proba(data).ravel().tolist()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("rows", [1, 3, 100], ids=["one-row", "batch", "batch-in-a-thread"])
def test_a_request_naming_no_outputs_scores_its_rows_once(
    model_dir: Path, tmp_path: Path, version: str, rows: int
) -> None:
    """Every output, as predict and predict_proba answer, from one pass of the scorer over the
    rows (a linear model's scores, a tree's leaves), over REST JSON, the binary extension and
    gRPC raw and typed, through the server's own handlers; 100 rows are more than
    INLINE_BATCH_ROWS, so scored in the data plane's worker thread."""
    data = _probe_rows()[:rows]
    nested = data.tolist()
    binary, headers = oip.binary_body(nested)
    requests = {
        "json": ("rest", orjson.dumps(oip.infer_body(nested)), {}),
        "binary": ("rest", binary, headers),
        "grpc-raw": ("grpc", oip.raw_message(nested).SerializeToString(), {}),
        "grpc-typed": ("grpc", oip.typed_message(nested).SerializeToString(), {}),
    }
    requests_file = tmp_path / "requests.json"
    requests_file.write_bytes(
        orjson.dumps(
            [
                {"transport": transport, "body": body.hex(), "headers": fields}
                for transport, body, fields in requests.values()
            ]
        )
    )
    run = subprocess.run(
        [
            *(sys.executable, "-m", "tests.services.model_handlers"),
            *(str(model_dir), version, str(requests_file)),
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    estimator = artifacts.load(model_dir, MODEL_NAME, version).estimator
    expected = [estimator.predict(data).tolist(), estimator.predict_proba(data).ravel().tolist()]
    for name, answer in zip(requests, json.loads(run.stdout), strict=True):
        assert answer["outputs"] == expected, name
        assert answer["passes"] == [rows], name


# Finite doubles whose weighted sums pass the largest double: a linear model's scores overflow.
OVERFLOWING = [1e308, -1e308, 1e308, 1e308]


# The server silences numpy's warning about the overflow it refuses (scoring.py); pytest resets
# warning filters around each test, so the filter is restated here.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_the_linear_scorer_refuses_a_row_whose_scores_overflow(model_dir: Path) -> None:
    """Rather than an argmax over infinities and a softmax of NaN, every method names the row."""
    scorer = artifacts.load_scorer(model_dir, MODEL_NAME, "v1")
    assert isinstance(scorer, LinearScorer)
    with pytest.raises(ScoresOverflowError) as refused:
        scorer.predict_row(OVERFLOWING)
    assert refused.value.row == 0
    batch = np.asarray([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], OVERFLOWING])
    with pytest.raises(ScoresOverflowError) as refused:
        scorer.predict_matrix(batch)
    assert refused.value.row == 2
    with pytest.raises(ScoresOverflowError) as refused:
        scorer.predict_proba_matrix(batch)
    assert refused.value.row == 2


# A double beyond float32's range in a feature a setosa's path through the tree never compares.
BEYOND_FLOAT32 = [1e39, 3.5, 1.4, 0.2]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_the_tree_scorer_refuses_a_row_not_finite_as_float32(model_dir: Path) -> None:
    """The tree compares float32 features: a finite double beyond float32 becomes infinity
    there, and scikit-learn's tree refuses the row; every method names it, whether or not the
    row's path compares that feature."""
    estimator = artifacts.load(model_dir, MODEL_NAME, "v2").estimator
    scorer = artifacts.load_scorer(model_dir, MODEL_NAME, "v2")
    assert isinstance(scorer, TreeScorer)
    with pytest.raises(ValueError, match="too large for dtype"):
        estimator.predict(np.asarray([BEYOND_FLOAT32]))
    for row in (BEYOND_FLOAT32, OVERFLOWING, [5.1, 3.5, 1.4, -3.5e38]):
        with pytest.raises(ScoresOverflowError, match="overflow its float32 features") as refused:
            scorer.predict_row(row)
        assert refused.value.row == 0
    batch = np.asarray([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], BEYOND_FLOAT32])
    methods = (scorer.predict_matrix, scorer.predict_proba_matrix, scorer.predict_and_proba_matrix)
    for method in methods:
        with pytest.raises(ScoresOverflowError) as refused:
            method(batch)
        assert refused.value.row == 2


def test_the_tree_answers_values_up_to_the_largest_float32(model_dir: Path) -> None:
    estimator = artifacts.load(model_dir, MODEL_NAME, "v2").estimator
    scorer = artifacts.load_scorer(model_dir, MODEL_NAME, "v2")
    largest = float(np.finfo(np.float32).max)
    rows = np.asarray([[largest, 3.5, 1.4, 0.2], [5.1, -largest, largest, largest]])
    assert scorer.predict_matrix(rows) == estimator.predict(rows).tolist()
    assert [scorer.predict_row(row) for row in rows.tolist()] == estimator.predict(rows).tolist()
    assert np.array_equal(scorer.predict_proba_matrix(rows), estimator.predict_proba(rows))


def test_large_finite_scores_are_still_answered(model_dir: Path) -> None:
    """Only scores that overflow are refused: values far outside the data set whose scores
    stay finite get the class and probabilities sklearn gives."""
    estimator = artifacts.load(model_dir, MODEL_NAME, "v1").estimator
    scorer = artifacts.load_scorer(model_dir, MODEL_NAME, "v1")
    rows = np.asarray([[1e300, 1e300, -1e300, 1e300], [1e200, 3.0, 1.0, 0.5]])
    assert scorer.predict_matrix(rows) == estimator.predict(rows).tolist()
    assert [scorer.predict_row(row) for row in rows.tolist()] == estimator.predict(rows).tolist()
    assert np.array_equal(scorer.predict_proba_matrix(rows), estimator.predict_proba(rows))


def test_each_version_is_served_by_its_compiled_scorer(model_dir: Path) -> None:
    for version, kind in (("v1", LinearScorer), ("v2", TreeScorer)):
        settings = ModelSettings.from_env({"MODEL_DIR": str(model_dir), "MODEL_VERSION": version})
        assert isinstance(load_model(settings).scorer, kind)


def test_the_server_loads_and_scores_without_importing_scikit_learn(model_dir: Path) -> None:
    """scikit-learn and SciPy take seconds to import: a pod's start does without them."""
    script = (
        "import sys\n"
        "from mlstack_model.dataplane import score\n"
        "from mlstack_model.loaded_model import load_model\n"
        "from mlstack_model.rest import protocol\n"
        "from mlstack_model.settings import ModelSettings\n"
        "for version in ('v1', 'v2'):\n"
        f"    env = {{'MODEL_DIR': {str(model_dir)!r}, 'MODEL_VERSION': version}}\n"
        "    model = load_model(ModelSettings.from_env(env))\n"
        f"    body = {_infer_body([[5.1, 3.5, 1.4, 0.2]] * 2, ['predict', 'predict_proba'])!r}\n"
        "    score(model, protocol.parse_infer_request(body, None, 4, 4096))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.stdout.strip() == "[]", run.stdout + run.stderr


def test_an_estimator_without_a_compiled_form_is_served_by_its_own_methods(
    tmp_path: Path,
) -> None:
    data = load_iris()
    estimator = KNeighborsClassifier(n_neighbors=3).fit(data.data, data.target)
    artifact = artifacts.Artifact(
        metadata=artifacts.ArtifactMetadata(
            name="neighbours", version="v1", estimator=repr(estimator), dataset="iris",
            feature_names=[str(f) for f in data.feature_names], class_labels=[0, 1, 2],
            class_names=[str(c) for c in data.target_names],
            sklearn_version=train.sklearn_version(), holdout_accuracy=1.0,
        ),
        estimator=estimator,
    )  # fmt: skip
    artifacts.save(tmp_path, artifact)
    assert not artifacts.has_scorer(tmp_path, "neighbours", "v1")
    settings = ModelSettings.from_env({"MODEL_DIR": str(tmp_path), "MODEL_NAME": "neighbours"})
    model = load_model(settings)
    assert isinstance(model.scorer, EstimatorScorer)
    assert model.scorer.predict_matrix(data.data) == estimator.predict(data.data).tolist()


def test_a_binary_linear_model_has_no_compiled_form() -> None:
    """Its probabilities are scikit-learn's expit, not the softmax the linear scorer computes."""
    data = load_iris()
    binary = LogisticRegression().fit(data.data, data.target == 0)
    assert compile_scorer(binary) is None


def test_a_stored_scorer_round_trips_and_a_foreign_format_is_refused(model_dir: Path) -> None:
    scorer = artifacts.load_scorer(model_dir, MODEL_NAME, "v2")
    again = from_stored(stored(scorer))
    rows = _probe_rows()
    assert np.array_equal(again.predict_proba_matrix(rows), scorer.predict_proba_matrix(rows))
    with pytest.raises(ValueError, match="scorer format 99, this server reads 1"):
        from_stored({**stored(scorer), "format": np.asarray(99)})


def test_versions_are_genuinely_different_models(model_dir: Path) -> None:
    v1 = artifacts.load(model_dir, MODEL_NAME, "v1")
    v2 = artifacts.load(model_dir, MODEL_NAME, "v2")
    assert type(v1.estimator) is not type(v2.estimator)
    rows = _probe_rows()
    assert (v1.estimator.predict(rows) != v2.estimator.predict(rows)).any()


@pytest.mark.parametrize("version", VERSIONS)
def test_artifact_records_its_version(model_dir: Path, version: str) -> None:
    artifact = artifacts.load(model_dir, MODEL_NAME, version)
    assert artifact.metadata.version == version
    on_disk = json.loads((model_dir / MODEL_NAME / version / "metadata.json").read_text())
    assert on_disk["version"] == version
    assert on_disk["feature_names"] == artifact.metadata.feature_names
    assert artifact.metadata.holdout_accuracy > 0.85


def test_available_versions_are_ordered_newest_last(model_dir: Path) -> None:
    assert artifacts.available_versions(model_dir, MODEL_NAME) == ["v1", "v2"]


def test_loading_an_artifact_under_the_wrong_version_is_refused(
    model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / MODEL_NAME).mkdir()
    (tmp_path / MODEL_NAME / "v9").symlink_to(model_dir / MODEL_NAME / "v1")
    with pytest.raises(ValueError, match=f"holds {MODEL_NAME} v1"):
        artifacts.load(tmp_path, MODEL_NAME, "v9")


def test_ensure_trained_fills_an_empty_cache(tmp_path: Path) -> None:
    train.ensure_trained(tmp_path, MODEL_NAME)
    assert artifacts.available_versions(tmp_path, MODEL_NAME) == ["v1", "v2"]


def test_ensure_trained_retrains_an_artifact_without_its_compiled_scorer(tmp_path: Path) -> None:
    """A cache trained before the scorer was stored beside the pickle is trained again."""
    train.ensure_trained(tmp_path, MODEL_NAME)
    (tmp_path / MODEL_NAME / "v1" / artifacts.SCORER_FILE).unlink()
    train.ensure_trained(tmp_path, MODEL_NAME)
    assert artifacts.has_scorer(tmp_path, MODEL_NAME, "v1")
