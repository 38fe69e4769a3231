"""The data plane: the loaded model, which requests it answers, their admission, and scoring.
Both transports (``rest/`` and ``grpc/``) call it with requests they have already parsed into the
same ``tensors.InferRequest``; it knows neither."""

from __future__ import annotations

import asyncio
import reprlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from mlstack_common.tensor_names import INPUT_NAME, OUTPUT_PREDICT, OUTPUT_PROBA

from mlstack_model import tensors
from mlstack_model.admission import Admission
from mlstack_model.errors import ErrorKind, ProtocolError, invalid
from mlstack_model.loaded_model import LoadedModel
from mlstack_model.scoring import FloatMatrix, ScoresOverflowError
from mlstack_model.settings import ModelSettings
from mlstack_model.tensors import InferRequest, OutputTensor

# How often a draining server checks whether its infer requests have all finished.
DRAIN_POLL_SECONDS = 0.05


class DataPlane:
    """Holds the loaded model (set at start-up by the app's lifespan) and scores requests."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.model: LoadedModel | None = None
        # Large batches are scored here so the event loop keeps answering other requests.
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="score")
        self.admission = Admission(settings.max_concurrent_requests)
        self._draining = False
        # Called once, when the drain starts (the gRPC server's health status follows it).
        self.drain_listeners: list[Callable[[], None]] = []

    @property
    def draining(self) -> bool:
        """Set at SIGTERM (mlstack_common.serving): the server is not ready from then on, so
        that it leaves the Service's endpoints while it finishes what it has."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        started = value and not self._draining
        self._draining = value
        if started:
            for listener in self.drain_listeners:
                listener()

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining

    async def drained(self) -> None:
        """Return once no infer request (REST or gRPC) is in flight. Polled while draining
        only, so that the count costs requests nothing more."""
        while self.admission.in_flight:
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    def resolve(self, name: str, version: str | None) -> LoadedModel:
        """The model a request names; ``version`` None (or empty) means the served one."""
        model = self.model
        if model is None:
            raise ProtocolError(ErrorKind.UNAVAILABLE, "model is not loaded yet")
        if name != model.name:
            raise ProtocolError(
                ErrorKind.NOT_FOUND,
                f"unknown model {reprlib.repr(name)}; this server serves {model.name!r}",
            )
        if version and version != model.version:
            raise ProtocolError(
                ErrorKind.NOT_FOUND,
                f"model {name!r} has no version {reprlib.repr(version)} here; served versions: "
                f"{model.version}",
            )
        return model

    async def infer(self, model: LoadedModel, request: InferRequest) -> list[OutputTensor]:
        if request.rows <= self.settings.inline_batch_rows:
            return score(model, request)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, score, model, request)


def score(model: LoadedModel, request: InferRequest) -> list[OutputTensor]:
    """The requested output tensors for one validated infer request; refused (400) when a row
    lies so far out that the model's arithmetic overflows (a linear model's scores, a tree's
    float32 features), rather than answered with a class picked from infinities and
    probabilities of NaN."""
    scorer = model.scorer
    requested = request.outputs
    try:
        if request.rows == 1 and len(requested) == 1 and requested[0].name == OUTPUT_PREDICT:
            # The usual request, one row's class: no matrix, no loop over outputs.
            return [tensors.predict_output([scorer.predict_row(request.data)])]
        matrix: FloatMatrix = np.asarray(request.data, dtype=np.float64).reshape(request.rows, -1)
        names = [output.name for output in requested]
        labels: list[int] | None = None
        proba: FloatMatrix | None = None
        if OUTPUT_PROBA not in names:
            labels = scorer.predict_matrix(matrix)
        elif OUTPUT_PREDICT not in names:
            proba = scorer.predict_proba_matrix(matrix)
        else:
            # Both (what a request naming no outputs gets): the rows' scores computed once.
            labels, proba = scorer.predict_and_proba_matrix(matrix)
        outputs: list[OutputTensor] = []
        for name in names:
            if name == OUTPUT_PREDICT:
                assert labels is not None
                outputs.append(tensors.predict_output(labels))
            else:
                assert proba is not None
                outputs.append(
                    tensors.proba_output(request.rows, int(proba.shape[1]), proba.ravel().tolist())
                )
        return outputs
    except ScoresOverflowError as exc:
        raise invalid(
            f"input {INPUT_NAME!r} is out of the model's range: the values of row {exc.row} "
            f"overflow {exc.overflows}"
        ) from None
