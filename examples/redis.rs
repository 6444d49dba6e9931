//! brook on Redis: a stream read through a consumer group, with redelivery on error and a
//! dead-letter stream, plus a pub/sub channel subscriber that receives FastStream-style headers.
//!
//! `cargo run --example redis --features redis` with Redis on 127.0.0.1:6379 (or set
//! `REDIS_URL`). It publishes a few orders, prints what happened to each, and exits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use brook::prelude::*;
use brook::redis::fred::prelude::*;
use brook::redis::subscriber;
use brook::redis::{RedisBroker, RedisMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

const STREAM: &str = "brook.example.orders";
const DEAD: &str = "brook.example.orders.dead";
const EVENTS: &str = "brook.example.events";

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    amount: f64,
}

static HANDLED: AtomicUsize = AtomicUsize::new(0);
static DONE: Notify = Notify::const_new();

fn handled() {
    HANDLED.fetch_add(1, Ordering::SeqCst);
    DONE.notify_one();
}

/// Fails on an order's first delivery (the payment backend "times out"): NackOnError leaves the
/// entry pending and brook claims it again, with Redis's delivery count. Negative amounts are
/// rejected: XACK plus XADD to the dead-letter stream. A billed order's invoice is published to
/// the channel `brook.example.invoices` (with the order's correlation_id) before the XACK.
#[subscriber(
    stream = "brook.example.orders",
    group = "billing",
    dead_letter_stream = "brook.example.orders.dead",
    ack_policy = NackOnError,
    max_deliveries = 3,
    batch = 16,
    publish = "brook.example.invoices"
)]
async fn bill(order: Order, msg: &Message, redis: &RedisMessage) -> anyhow::Result<String> {
    let outcome = if order.amount < 0.0 {
        "rejected (dead-lettered)"
    } else if msg.delivery_count() == Some(1) {
        "failed, will be redelivered"
    } else {
        "billed"
    };
    println!(
        "order {:>2} entry {} delivery {:?}: {outcome}",
        order.id,
        redis.entry_id().unwrap_or("?"),
        msg.delivery_count()
    );
    handled();
    match outcome {
        "billed" => Ok(format!("invoice for order {}", order.id)),
        "rejected (dead-lettered)" => Err(brook::Reject.into()),
        _ => anyhow::bail!("payment backend timed out"),
    }
}

/// Pub/sub: no acknowledgement exists, so the policy is AckFirst (the only honest one).
#[subscriber(channel = "brook.example.*", ack_policy = AckFirst)]
async fn audit(text: String, msg: &Message, redis: &RedisMessage) {
    println!(
        "event on {} (pattern {:?}, correlation_id {:?}): {text}",
        msg.topic(),
        redis.pattern(),
        msg.correlation_id()
    );
    handled();
}

async fn wait_for(n: usize) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while HANDLED.load(Ordering::SeqCst) < n {
            DONE.notified().await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let broker = RedisBroker::new(url.clone());
    // A plain fred client to look at Redis afterwards (the broker's own connection closes with
    // the App), and to start from a clean slate so every run prints the same story.
    let fred = Builder::from_config(Config::from_url(&url)?).build()?;
    fred.init().await?;
    let _: i64 = fred.del(vec![STREAM, DEAD]).await?;

    let app = App::new(broker.clone())
        .subscribe(bill)
        .subscribe(audit)
        .start()
        .await?;

    for (id, amount) in [(1, 10.0), (2, -5.0), (3, 7.5)] {
        broker
            .publish(&Order { id, amount }, &format!("stream:{STREAM}"))
            .await?;
    }
    broker
        .publish_message(Outgoing::encode("orders imported", EVENTS)?.with_correlation_id("run-1"))
        .await?;

    // Orders 1 and 3 twice (fail, then billed), order 2 once (rejected), one event, and the
    // invoices of orders 1 and 3.
    wait_for(8).await?;
    app.stop().await?;

    let dead: u64 = fred.xlen(DEAD).await?;
    println!("dead-letter stream {DEAD}: {dead} entry");
    let pending: brook::redis::fred::types::Value = fred.xpending(STREAM, "billing", ()).await?;
    let pending = pending.into_array().first().and_then(|v| v.as_u64());
    println!("entries still pending in group billing: {pending:?}");
    fred.quit().await?;
    Ok(())
}
