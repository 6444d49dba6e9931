# FastStream 0.7.8 as the requester: `await broker.request(...)` to a brook handler on a
# channel, a list and a stream (argv[1..3]), each with its own correlation_id and a header with
# a non-ASCII value; prints one JSON line per reply.
import asyncio
import json
import sys

from faststream.redis import RedisBroker


async def main() -> None:
    channel, list_, stream = sys.argv[1:4]
    broker = RedisBroker("redis://127.0.0.1:6379", logger=None)  # stdout carries JSON only
    await broker.connect()
    try:
        for n, where in ((3, {"channel": channel}), (4, {"list": list_}), (5, {"stream": stream})):
            msg = await broker.request(
                {"n": n},
                correlation_id=f"fs-cid-{n}",
                headers={"x-city": "Zürich"},
                timeout=10.0,
                **where,
            )
            print(
                json.dumps(
                    {
                        "to": next(iter(where)),
                        "body": msg.body.decode(),
                        "correlation_id": msg.correlation_id,
                        "headers": {k: str(v) for k, v in msg.headers.items()},
                    }
                ),
                flush=True,
            )
    finally:
        await broker.stop()


asyncio.run(main())
