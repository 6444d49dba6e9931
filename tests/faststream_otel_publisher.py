"""FastStream with RabbitTelemetryMiddleware publishes {"n": 1} to the queue in argv[1] from
inside a span of its own, with correlation id argv[2], message id argv[3] and W3C baggage
`tenant=argv[4]`; then prints every span its in-memory exporter got as one JSON line."""

import asyncio
import json
import logging
import sys

from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from faststream.rabbit import RabbitBroker
from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware

# FastStream logs to stdout by default; stdout carries the JSON lines the test reads.
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
LOGGER = logging.getLogger("faststream-interop")


def span_json(span):
    parent = span.parent
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
    }


async def main():
    queue, correlation_id, message_id, tenant = sys.argv[1:5]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = RabbitBroker(
        "amqp://guest:guest@127.0.0.1:5672/",
        logger=LOGGER,
        middlewares=(RabbitTelemetryMiddleware(tracer_provider=provider),),
    )
    async with broker:
        with provider.get_tracer("faststream-interop").start_as_current_span("fs-producer"):
            # Outside a handler FastStream sends no baggage of its own: put it in the headers
            # the way OpenTelemetry Python writes it.
            headers = {}
            W3CBaggagePropagator().inject(headers, baggage.set_baggage("tenant", tenant))
            await broker.publish(
                {"n": 1},
                queue,
                correlation_id=correlation_id,
                message_id=message_id,
                headers=headers,
            )
    provider.force_flush()
    print(json.dumps({"spans": [span_json(s) for s in exporter.get_finished_spans()]}))


asyncio.run(main())
