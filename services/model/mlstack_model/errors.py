"""What went wrong with a request, and the one map from that to each transport's answer.

REST answers an error with its HTTP status and ``{"error": "<message>"}``; gRPC with its status
code and the same message as the status details. Both take the status from ``ErrorKind``.
"""

from __future__ import annotations

from enum import Enum

import grpc


class ErrorKind(Enum):
    """Each kind of failure with its HTTP status and its gRPC status code."""

    INVALID = (400, grpc.StatusCode.INVALID_ARGUMENT)
    NOT_FOUND = (404, grpc.StatusCode.NOT_FOUND)
    TOO_LARGE = (413, grpc.StatusCode.RESOURCE_EXHAUSTED)
    UNAVAILABLE = (503, grpc.StatusCode.UNAVAILABLE)
    INTERNAL = (500, grpc.StatusCode.INTERNAL)

    @property
    def http_status(self) -> int:
        status: int = self.value[0]
        return status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = self.value[1]
        return code


class ProtocolError(Exception):
    """A request the protocol or this model cannot take; the message names what is wrong."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorKind.INVALID, message)
