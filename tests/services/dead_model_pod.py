"""The gateway's pooled connections to a model pod whose node died, or to a live pod one of
whose packets was lost: run by tests/services/test_gateway_dead_model_pod.py in a network of its
own (harness/private_network.py), as it drops packets (as they arrive: the client's TCP sends
them, and sends them again, as it would to a host that is gone).

The gateway's ModelClient on the loop named, with MODEL_ACK_TIMEOUT_SECONDS as given ("" for the
default) and its other defaults, calls a stand-in model on 127.0.0.1 that answers each call
after the scenario's ANSWER_SECONDS, and pools the connections of its first calls: POOLED calls
at once, WARM_UP times (the model's TCP, by then, acknowledges a request with its answer, or
after its delayed-ACK wait: the client's TCP measures a round trip as long). Then one call:

- ``dead``: every packet on the pooled connections is dropped from then on;
- ``lost-once``: their packets are dropped for the call's first LOST_SECONDS only, so the
  kernel's resend of the request (its tail-loss probe, twice the round trip and 0.2 s later)
  gets through.

Prints what the call got, the connections the model saw and the client's counters, as JSON.

    python -m tests.services.dead_model_pod asyncio|uvloop dead|lost-once MODEL_ACK_TIMEOUT_SECONDS
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from harness.ports import LOOPBACK
from harness.private_network import dropping
from harness.services import GATEWAY_SRC, import_service
from tests.services.model_stand_in import model_reply, read_request

POOLED = 2
WARM_UP = 10
ANSWER_SECONDS = {"dead": 0.005, "lost-once": 0.05}
LOST_SECONDS = 0.05
TABLE = "mlstack_dead_model_pod"


async def one_call(scenario: str, ack_timeout: str) -> dict[str, Any]:
    from mlstack_gateway.breaker import CircuitBreaker
    from mlstack_gateway.client import ModelClient
    from mlstack_gateway.errors import ApiError
    from mlstack_gateway.ids import new_request_id
    from mlstack_gateway.metrics import GatewayMetrics
    from mlstack_gateway.payload import parse_predict_body
    from mlstack_gateway.settings import GatewaySettings

    clients: list[int] = []
    connections: list[tuple[asyncio.StreamWriter, asyncio.Task[Any]]] = []

    async def model(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.append(writer.get_extra_info("peername")[1])
        connections.append((writer, asyncio.current_task()))  # type: ignore[arg-type]
        while (request := await read_request(reader)) is not None:
            await asyncio.sleep(ANSWER_SECONDS[scenario])
            writer.write(model_reply(request))
            await writer.drain()

    server = await asyncio.start_server(model, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    env = {
        "MLSTACK_API_KEY": "k",
        "MODEL_URL": f"http://{LOOPBACK}:{port}",
        "MODEL_ACK_TIMEOUT_SECONDS": ack_timeout,
    }
    metrics = GatewayMetrics()
    client = ModelClient(GatewaySettings.from_env(env), CircuitBreaker(5, 1.0), metrics)
    payload = parse_predict_body(b'{"instances": [[1, 2, 3, 4]]}', 10, 4)
    await client.start()
    # As many calls at once as connections to pool (the metadata call's is idle by then).
    for _ in range(WARM_UP):
        await asyncio.gather(*(client.infer(new_request_id(), payload) for _ in range(POOLED)))
    outcome: dict[str, Any] = {"pooled": len(clients)}
    rules = [f"tcp sport {{ {', '.join(map(str, clients))} }} tcp dport {port} drop"]
    with dropping(TABLE, rules) if scenario == "dead" else contextlib.nullcontext():
        call = asyncio.create_task(client.infer(new_request_id(), payload))
        if scenario == "lost-once":
            # In place before the call goes out: the task runs once this one waits.
            with dropping(TABLE, rules):
                await asyncio.sleep(LOST_SECONDS)
        try:
            outcome["predictions"] = (await call).predictions
        except ApiError as exc:
            outcome["refused"] = [exc.status, exc.message]
    for name in ("retries", "unacknowledged"):
        sample = metrics.registry.get_sample_value(f"mlstack_gateway_model_{name}_total")
        outcome[name] = sample or 0.0
    outcome["connections"] = len(clients)
    await client.close()
    server.close()
    # The ends of dropped connections never heard the client go: closed here, as the others were.
    for writer, _ in connections:
        writer.close()
    await asyncio.wait([task for _, task in connections])
    return outcome


def main(argv: list[str]) -> int:
    loop_name, scenario, ack_timeout = argv
    import_service(GATEWAY_SRC)
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        print(json.dumps(runner.run(one_call(scenario, ack_timeout))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
