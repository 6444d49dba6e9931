# FastStream 0.7.8 as the requester: `await broker.request(...)` to a subject a brook core-NATS
# handler serves; prints the reply it got as one JSON line. argv[1]: the subject.
import asyncio
import json
import sys

from faststream.nats import NatsBroker


async def main() -> None:
    subject = sys.argv[1]
    broker = NatsBroker("nats://127.0.0.1:4222", logger=None)
    await broker.connect()
    try:
        reply = await broker.request(
            {"n": 6},
            subject,
            correlation_id="fs-corr-1",
            headers={"x-from": "faststream"},
            timeout=10,
        )
        body = await reply.decode()
        print(
            json.dumps(
                {
                    "body": body,
                    "correlation_id": reply.correlation_id,
                    "content_type": reply.content_type,
                    "headers": dict(reply.headers),
                }
            ),
            flush=True,
        )
    finally:
        await broker.stop()


asyncio.run(main())
