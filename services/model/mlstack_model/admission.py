"""The bound on infer requests in flight, one count for REST and gRPC together.

An infer request takes a slot before its body is read (REST) or scored (gRPC); with every slot
taken it is refused at once, 503 with ``Retry-After`` over REST and UNAVAILABLE over gRPC, so
memory stays bounded by the requests admitted (each at most MAX_BODY_BYTES) however many clients
arrive together. Probes and metadata take no slot. Both servers share one event loop, so the
count needs no lock.
"""

from __future__ import annotations

from types import TracebackType

from mlstack_common.errors import busy_in_flight

from mlstack_model.errors import ErrorKind, ProtocolError


class Admission:
    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._busy = busy_in_flight(max_in_flight)

    def slot(self) -> Admission:
        """Hold one slot for the ``with`` block, or refuse with UNAVAILABLE if none is free.
        (The object is its own context manager: a generator-based one costs more than the rest
        of the count, on every request.)"""
        return self

    def __enter__(self) -> None:
        if self.in_flight >= self.max_in_flight:
            raise ProtocolError(ErrorKind.UNAVAILABLE, self._busy)
        self.in_flight += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.in_flight -= 1
