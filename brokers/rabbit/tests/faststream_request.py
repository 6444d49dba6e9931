"""FastStream's RPC against a brook handler: `broker.request(...)` (direct reply-to) to the
queue in argv[1], with correlation id argv[2] and a non-ASCII header; prints the reply as one
JSON line."""

import asyncio
import json
import logging
import sys

from faststream.rabbit import RabbitBroker

# FastStream logs to stdout by default; stdout carries the JSON lines the test reads.
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
LOGGER = logging.getLogger("faststream-interop")


def text(value):
    return value.decode() if isinstance(value, (bytes, bytearray)) else value


async def main():
    queue, correlation_id = sys.argv[1], sys.argv[2]
    async with RabbitBroker("amqp://guest:guest@127.0.0.1:5672/", logger=LOGGER) as broker:
        reply = await broker.request(
            {"n": 21},
            queue,
            correlation_id=correlation_id,
            headers={"x-note": "café ünïcode ✓"},
            timeout=10,
        )
        print(
            json.dumps(
                {
                    "body": text(reply.body),
                    "decoded": await reply.decode(),
                    "correlation_id": reply.correlation_id,
                    "content_type": reply.content_type,
                    "headers": {k: text(v) for k, v in reply.headers.items()},
                },
                default=str,
            )
        )


asyncio.run(main())
