//! brook on NATS: a JetStream subscriber with NackOnError whose result (an invoice) is
//! published to a core subject, a core NATS subscriber that sees it, and a request answered
//! by a handler.
//!
//! `cargo run --example nats --features nats` with nats-server (JetStream enabled) on
//! 127.0.0.1:4222 (`NATS_URL` overrides). It publishes a few orders, waits until each was
//! handled, and exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use brook::nats::subscriber;
use brook::nats::NatsBroker;
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
/// 2 orders billed, 2 invoices and 2 audit events seen.
const EXPECTED: u64 = 6;

#[derive(Debug, Serialize, Deserialize)]
struct Invoice {
    order: u64,
    total: f64,
}

fn handled() {
    if HANDLED.fetch_add(1, Ordering::SeqCst) + 1 == EXPECTED {
        DONE.notify_one();
    }
}

/// JetStream: the stream and the durable pull consumer are created if missing. The first
/// delivery of order 2 fails, so NackOnError sends -NAK and JetStream redelivers it. The
/// invoice it returns is published to `brook.example.audit.invoices` before the order is acked.
#[subscriber(
    subject = "brook.example.orders",
    stream = "BROOK_EXAMPLE_ORDERS",
    durable = "billing",
    deliver_policy = new,
    ack_policy = NackOnError,
    max_deliveries = 5,
    publish = "brook.example.audit.invoices"
)]
async fn bill(order: Order, msg: &Message) -> anyhow::Result<Invoice> {
    if order.id == 2 && msg.delivery_count() == Some(1) {
        anyhow::bail!("payment backend timed out on order {}", order.id);
    }
    tracing::info!(id = order.id, delivery = ?msg.delivery_count(), "billed");
    println!(
        "billed order {} (delivery {:?})",
        order.id,
        msg.delivery_count()
    );
    handled();
    Ok(Invoice {
        order: order.id,
        total: order.amount * 1.2,
    })
}

/// Answers requests on a core subject: the result goes back to the requester's inbox.
#[subscriber(subject = "brook.example.quote")]
async fn quote(order: Order) -> f64 {
    order.amount * 1.2
}

/// Core NATS: no acknowledgement exists, so only AckFirst / Ack / RejectOnError are allowed
/// (they all mean "nothing to do" here).
#[subscriber(subject = "brook.example.audit.*", ack_policy = AckFirst)]
async fn audit(text: String, msg: &Message) {
    println!("audit on {}: {text}", msg.topic());
    handled();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let broker = NatsBroker::new(url);
    let app = App::new(broker.clone())
        .subscribe(bill)
        .subscribe(audit)
        .subscribe(quote)
        .start()
        .await?;

    for id in [1, 2] {
        // JetStream publish (a stream captures the subject): returns once the stream has it.
        broker
            .publish(&Order { id, amount: 9.5 }, "brook.example.orders")
            .await?;
    }
    broker.publish("login", "brook.example.audit.alice").await?;
    broker.publish("logout", "brook.example.audit.bob").await?;

    tokio::time::timeout(Duration::from_secs(20), DONE.notified())
        .await
        .map_err(|_| anyhow::anyhow!("not every message was handled within 20 s"))?;
    let reply = broker
        .request(
            &Order {
                id: 3,
                amount: 10.0,
            },
            "brook.example.quote",
            Duration::from_secs(5),
        )
        .await?;
    println!(
        "quote for order 3: {}",
        String::from_utf8_lossy(reply.body())
    );
    app.stop().await?;
    println!("done: {} messages handled", HANDLED.load(Ordering::SeqCst));
    Ok(())
}
