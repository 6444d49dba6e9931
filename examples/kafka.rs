//! brook on Kafka: a NackOnError subscriber (commit on success, seek back on failure) and an
//! AckFirst one (librdkafka's auto-commit, FastStream's default), in one consumer group each.
//!
//! `cargo run --example kafka --features kafka` with a Kafka-protocol broker on 127.0.0.1:9092
//! (`KAFKA_URL` overrides; `scripts/brokers/kafka.sh` starts tansu). It creates the topics,
//! publishes a few orders, waits until each was handled, and exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use brook::kafka::subscriber;
use brook::kafka::{KafkaBroker, KafkaMessage};
use brook::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    amount: f64,
}

static HANDLED: AtomicU64 = AtomicU64::new(0);
static DONE: LazyLock<Notify> = LazyLock::new(Notify::new);
/// 2 orders billed, their 2 invoices and 2 logins audited.
const EXPECTED: u64 = 6;

fn handled() {
    if HANDLED.fetch_add(1, Ordering::SeqCst) + 1 == EXPECTED {
        DONE.notify_one();
    }
}

/// The first delivery of order 2 fails: NackOnError seeks the partition back to it, so it is
/// read again (the delivery count is kept by this consumer), then the later orders, in order.
/// Its result is published to `brook-example-audit` before the order's offset is stored.
#[subscriber(
    topic = "brook-example-orders",
    group_id = "billing",
    auto_offset_reset = earliest,
    ack_policy = NackOnError,
    max_deliveries = 5,
    publish = "brook-example-audit"
)]
async fn bill(order: Order, msg: &Message, kafka: &KafkaMessage) -> anyhow::Result<String> {
    if order.id == 2 && msg.delivery_count() == Some(1) {
        anyhow::bail!("payment backend timed out on order {}", order.id);
    }
    println!(
        "billed order {} (partition {}, offset {}, delivery {:?})",
        order.id,
        kafka.partition(),
        kafka.offset(),
        msg.delivery_count()
    );
    handled();
    Ok(format!("invoice for order {}", order.id))
}

/// AckFirst: the offset is stored when the message is read and committed in the background.
#[subscriber(
    topic = "brook-example-audit",
    group_id = "audit",
    auto_offset_reset = earliest,
    ack_policy = AckFirst
)]
async fn audit(text: String) {
    println!("audit: {text}");
    handled();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let url = std::env::var("KAFKA_URL").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let broker = KafkaBroker::new(&url);
    broker.connect().await?;
    broker.create_topic("brook-example-orders", 1).await?;
    broker.create_topic("brook-example-audit", 1).await?;
    let app = App::new(broker.clone())
        .subscribe(bill)
        .subscribe(audit)
        .start()
        .await?;

    for id in [1, 2] {
        // Returns once the broker has the message (librdkafka delivery report).
        broker
            .publish(&Order { id, amount: 9.5 }, "brook-example-orders")
            .await?;
    }
    broker.publish("login", "brook-example-audit").await?;
    broker.publish("logout", "brook-example-audit").await?;

    tokio::time::timeout(Duration::from_secs(30), DONE.notified())
        .await
        .map_err(|_| anyhow::anyhow!("not every message was handled within 30 s"))?;
    app.stop().await?;
    println!("done: {} messages handled", HANDLED.load(Ordering::SeqCst));
    Ok(())
}
