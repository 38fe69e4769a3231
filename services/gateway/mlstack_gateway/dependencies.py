"""What the gateway knows of the services behind it: the model, the database and, with
DATABASE_READ_URL, the read URL.

Readiness does not depend on them (``/readyz`` says only that this process takes requests): a
request that needs one that is away gets 503 with ``Retry-After``, and their state goes to
``mlstack_gateway_dependency_up`` in /metrics and to ``GET /dependencies`` on the metrics port.
That state is what the last request or check that asked each one saw. The check runs in the
background every CHECK_INTERVAL_SECONDS, each question time-bounded (the model's readiness
within 0.5 s, a database ping within a second); a check still waiting when the next one is due
is not joined by another, so checks never pile up on a dependency that hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson

from mlstack_gateway.client import ModelClient
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.stores.base import PredictionStore

log = logging.getLogger("mlstack_gateway")

CHECK_INTERVAL_SECONDS = 2.0


class Dependencies:
    def __init__(
        self, client: ModelClient, store: PredictionStore, metrics: GatewayMetrics
    ) -> None:
        self._client = client
        self._store = store
        self._pending: asyncio.Task[None] | None = None
        for name in self.states():
            metrics.dependency_up.labels(dependency=name).set_function(self._up(name))

    def _up(self, name: str) -> Callable[[], float]:
        """The gauge's value for ``name``, read at each scrape."""
        return lambda: 1.0 if self.states()[name] else 0.0

    def states(self) -> dict[str, bool]:
        """Each dependency (``model``, ``database``, ``database_read``) and whether it is up."""
        return {"model": self._client.answering, **self._store.reachable()}

    def detail(self) -> bytes:
        """The JSON of ``GET /dependencies``: each one's state, no address and no credential."""
        return orjson.dumps(
            {
                "dependencies": {name: {"up": up} for name, up in self.states().items()},
                "database_kind": self._store.kind,
            }
        )

    async def _ask(self) -> None:
        await asyncio.gather(self._ask_model(), self._store.ping())

    async def _ask_model(self) -> None:
        if await self._client.ready() and self._client.n_features is None:
            await self._client.refresh_metadata()

    async def check(self) -> None:
        """Ask each dependency once, unless the previous check is still waiting for an answer;
        return after at most CHECK_INTERVAL_SECONDS either way."""
        pending = self._pending
        if pending is None or pending.done():
            if pending is not None and not pending.cancelled() and pending.exception():
                log.error("dependency check failed", exc_info=pending.exception())
            self._pending = pending = asyncio.create_task(self._ask())
        await asyncio.wait({pending}, timeout=CHECK_INTERVAL_SECONDS)

    async def watch(self) -> None:
        """Check every CHECK_INTERVAL_SECONDS until cancelled."""
        try:
            while True:
                await self.check()
                await asyncio.sleep(CHECK_INTERVAL_SECONDS)
        finally:
            if self._pending is not None:
                self._pending.cancel()
                with contextlib.suppress(BaseException):
                    await self._pending
