# FastStream 0.7.8 as the responder: `@broker.subscriber(argv[1])` returns a value (with a
# non-ASCII header), which FastStream publishes to the request's reply_to. Prints
# {"ready": true} once subscribed, {"handled": ...} per request, and exits when a message
# arrives on argv[2] (the test is done).
import asyncio
import json
import sys

from faststream import Response
from faststream.redis import RedisBroker, RedisMessage

channel, done_channel = sys.argv[1:3]
broker = RedisBroker("redis://127.0.0.1:6379", logger=None)  # stdout carries JSON only
done = asyncio.Event()


@broker.subscriber(channel)
async def double(body: dict, msg: RedisMessage) -> Response:
    print(
        json.dumps(
            {
                "handled": body,
                "correlation_id": msg.correlation_id,
                "reply_to": msg.reply_to,
            }
        ),
        flush=True,
    )
    return Response({"doubled": body["n"] * 2}, headers={"x-city": "Zürich"})


@broker.subscriber(done_channel)
async def finished(body: str) -> None:
    done.set()


async def main() -> None:
    await broker.start()
    print(json.dumps({"ready": True}), flush=True)
    try:
        await asyncio.wait_for(done.wait(), timeout=60)
    finally:
        await broker.stop()


asyncio.run(main())
