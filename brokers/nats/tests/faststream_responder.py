# FastStream 0.7.8 as the responder: `@broker.subscriber(subject)` returning a value, which
# FastStream sends to the request's reply subject. Prints {"ready": true} once subscribed, then
# what the handler received; exits when a message arrives on `<subject>.done` (the test sends
# it once it has the reply, so FastStream is never stopped before replying). argv[1]: the subject.
import asyncio
import json
import sys

from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage


async def main() -> None:
    subject = sys.argv[1]
    broker = NatsBroker("nats://127.0.0.1:4222", logger=None)
    done = asyncio.Event()

    @broker.subscriber(subject)
    async def double(body: dict, msg: NatsMessage) -> dict:
        print(
            json.dumps(
                {
                    "body": body,
                    "correlation_id": msg.correlation_id,
                    "reply_to": msg.reply_to,
                    "headers": dict(msg.headers),
                }
            ),
            flush=True,
        )
        return {"doubled": body["n"] * 2, "seen": msg.correlation_id}

    @broker.subscriber(subject + ".done")
    async def finish(body: str) -> None:
        done.set()

    await broker.start()
    try:
        # Make sure the server has the subscriptions before the test is told to go.
        await broker.config.connection_state.connection.flush()
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await broker.stop()


asyncio.run(main())
