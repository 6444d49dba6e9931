// Every argument kind a handler may take, on the in-memory broker.
use brook::prelude::*;

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

struct Config;

#[subscriber(broker = memory, topic = "orders", ack_policy = Manual, concurrency = 2, max_deliveries = 3, on_decode_error = Nack, group_id = "g")]
async fn all_kinds(
    order: Order,
    msg: &Message,
    headers: &Headers,
    config: State<Config>,
    ctx: &Context,
    raw: bytes::Bytes,
) -> anyhow::Result<()> {
    let _ = (order.id, headers.len(), &*config, ctx, raw.len());
    msg.ack().await?;
    Ok(())
}

#[subscriber(broker = memory, topic = "text")]
async fn text(body: String, bytes: Vec<u8>, s: &str) {
    let _ = (body, bytes, s);
}

fn main() {
    let _app = App::new(MemoryBroker::new()).state(Config).subscribe(all_kinds).subscribe(text);
}
