"""A FastStream subscriber with RabbitTelemetryMiddleware on the queue in argv[1] (declared
auto-delete, so it goes with this script): prints `{"ready": true}` once consuming, then, for
the first message, its consumer span (FastStream's `CurrentSpan`: ids, parent, kind, name),
the baggage FastStream read (`CurrentBaggage`) and the trace headers, as one JSON line; then
exits."""

import asyncio
import json
import logging
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from faststream.opentelemetry import CurrentBaggage, CurrentSpan
from faststream.rabbit import RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware

# FastStream logs to stdout by default; stdout carries the JSON lines the test reads.
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
LOGGER = logging.getLogger("faststream-interop")

queue = sys.argv[1]
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
broker = RabbitBroker(
    "amqp://guest:guest@127.0.0.1:5672/",
    logger=LOGGER,
    middlewares=(RabbitTelemetryMiddleware(tracer_provider=provider),),
)
done = asyncio.Event()


def text(value):
    return value.decode() if isinstance(value, (bytes, bytearray)) else value


@broker.subscriber(RabbitQueue(queue, auto_delete=True))
async def handle(body: dict, message: RabbitMessage, span: CurrentSpan, bag: CurrentBaggage):
    if done.is_set():
        return
    context = span.get_span_context()
    parent = span.parent
    print(
        json.dumps(
            {
                "body": body,
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_span_id": f"{parent.span_id:016x}" if parent else None,
                "parent_is_remote": parent.is_remote if parent else None,
                "baggage": bag.get_all(),
                "traceparent": text(message.headers.get("traceparent")),
                "baggage_header": text(message.headers.get("baggage")),
            }
        )
    )
    done.set()


async def main():
    async with broker:
        await broker.start()
        print(json.dumps({"ready": True}))
        await asyncio.wait_for(done.wait(), 60)


asyncio.run(main())
