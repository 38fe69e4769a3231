"""The model as the gateway's client tests stand it in, over HTTP/1.1 read and written by hand:
its metadata (rows of four numbers), and an inference's one output, predicting 2."""

from __future__ import annotations

import asyncio
import json

from components.app import MODEL_NAME
from tests.services.oip import INPUT

METADATA = json.dumps({"name": MODEL_NAME, "inputs": [{"name": INPUT, "shape": [-1, 4]}]}).encode()
PREDICT_OUTPUT = {"name": "predict", "shape": [1], "datatype": "INT64", "data": [2]}
PREDICTION = json.dumps(
    {"model_name": MODEL_NAME, "model_version": "v9", "outputs": [PREDICT_OUTPUT]}
).encode()


def model_reply(request: bytes) -> bytes:
    """The model's 200 to ``request``: a prediction for an inference (a POST), its metadata for
    a GET."""
    body = PREDICTION if request.startswith(b"POST") else METADATA
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (headers and Content-Length body), or None when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def serve_model(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A connection's every request answered as the model would, until the client closes."""
    while (request := await read_request(reader)) is not None:
        writer.write(model_reply(request))
        await writer.drain()
    writer.close()
