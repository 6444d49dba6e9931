"""A FastStream subscriber that answers requests: consumes the queue in argv[1] (declared
auto-delete, so it goes with this script), prints each request as a JSON line and returns a
value, which FastStream publishes to the request's reply_to. `{"stop": true}` ends it."""

import asyncio
import json
import logging
import sys

from faststream.rabbit import RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage

# FastStream logs to stdout by default; stdout carries the JSON lines the test reads.
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
LOGGER = logging.getLogger("faststream-interop")

queue = sys.argv[1]
broker = RabbitBroker("amqp://guest:guest@127.0.0.1:5672/", logger=LOGGER)
stop = asyncio.Event()


@broker.subscriber(RabbitQueue(queue, auto_delete=True))
async def handle(body: dict, message: RabbitMessage):
    if body.get("stop"):
        stop.set()
        return None
    print(
        json.dumps(
            {
                "got": body,
                "correlation_id": message.correlation_id,
                "reply_to": message.reply_to,
            }
        )
    )
    return {"n": body["n"] + 1, "by": "faststream"}


async def main():
    async with broker:
        await broker.start()
        print(json.dumps({"ready": True}))
        await asyncio.wait_for(stop.wait(), 60)


asyncio.run(main())
