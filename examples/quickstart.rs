//! brook on the in-memory broker: subscribers with different ack policies, one that publishes
//! its result to the next topic, and a request answered by a handler.
//!
//! `cargo run --example quickstart` (no broker needed). It publishes a few orders and prints
//! what happened to each message (acked, nacked and redelivered, or rejected), what the
//! confirming handler published, and the reply to a request.

use std::time::Duration;

use brook::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    amount: f64,
}

/// The topic the confirmations come from: its name from the environment, as a deployment
/// would set it (`ORDERS_TOPIC=orders.created.staging cargo run --example quickstart`).
fn orders_topic() -> String {
    std::env::var("ORDERS_TOPIC").unwrap_or_else(|_| "orders.created".into())
}

#[derive(Debug, Serialize, Deserialize)]
struct Confirmation {
    order: u64,
    total_cents: u64,
}

/// Always succeeds, and publishes a `Confirmation` to `orders.confirmed` before the order is
/// acked. The topic name is an expression, evaluated when the App is built.
#[subscriber(topic = orders_topic(), publish = "orders.confirmed", ack_policy = NackOnError)]
async fn confirm(order: Order) -> anyhow::Result<Confirmation> {
    tracing::info!(id = order.id, "order confirmed");
    Ok(Confirmation {
        order: order.id,
        total_cents: (order.amount * 100.0).round() as u64,
    })
}

/// Answers requests: its result goes back to the requester's `reply_to`.
#[subscriber(topic = "orders.quote")]
async fn quote(order: Order) -> f64 {
    order.amount * 1.2
}

/// The payment backend fails on the first attempt: NackOnError redelivers, and the second
/// delivery succeeds.
#[subscriber(topic = "orders.charge", ack_policy = NackOnError, max_deliveries = 5)]
async fn charge(order: Order, msg: &Message) -> anyhow::Result<()> {
    if msg.delivery_count() == Some(1) {
        anyhow::bail!("payment backend timed out charging order {}", order.id);
    }
    tracing::info!(id = order.id, "order charged");
    Ok(())
}

/// Bad input is rejected: a negative amount with the `Reject` interrupt, a payload that is
/// not an `Order` by the decoder (rejected, not redelivered: retrying cannot fix it).
#[subscriber(topic = "orders.ship", ack_policy = RejectOnError)]
async fn ship(order: Order) -> anyhow::Result<()> {
    if order.amount < 0.0 {
        return Err(brook::Reject.into());
    }
    tracing::info!(id = order.id, "order shipped");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let broker = MemoryBroker::new();
    broker.record(); // keep a trace per message, so we can print what happened
    let app = App::new(broker.clone())
        .subscribe(confirm)
        .subscribe(charge)
        .subscribe(ship)
        .subscribe(quote)
        .start()
        .await?;

    let order = |id, amount| Outgoing::encode(&Order { id, amount }, "");
    let created = orders_topic();
    let sends = [
        (created.as_str(), order(1, 10.0)?, "valid order"),
        ("orders.charge", order(2, 25.0)?, "backend fails once"),
        ("orders.ship", order(3, -5.0)?, "negative amount"),
        (
            "orders.ship",
            Outgoing::encode("not json at all", "")?,
            "malformed payload",
        ),
        ("orders.ship", order(4, 7.5)?, "valid order"),
    ];
    for (topic, mut message, what) in sends {
        message.destination = topic.to_owned();
        let id = broker.publish_traced(message);
        let trace = tokio::time::timeout(
            Duration::from_secs(5),
            broker.wait_for_trace(id, |t| t.is_final()),
        )
        .await?;
        let fate = match trace.settlements.as_slice() {
            [Settled::Acked] => "acked".to_owned(),
            [.., Settled::Nacked, Settled::Acked] => format!(
                "nacked, redelivered {} time(s), then acked",
                trace.redeliveries()
            ),
            [.., Settled::Rejected] => "rejected (dead-lettered)".to_owned(),
            other => format!("{other:?}"),
        };
        println!("{topic:<15} {what:<20} -> {fate}");
    }
    println!(
        "dead letters on orders.ship: {}",
        broker.dead_letters("orders.ship").len()
    );
    for confirmation in broker.published("orders.confirmed") {
        println!(
            "published to orders.confirmed: {} (correlation_id {})",
            String::from_utf8_lossy(&confirmation.body),
            confirmation.headers.get("correlation_id").unwrap_or("-")
        );
    }
    let reply = broker
        .request(
            &Order {
                id: 5,
                amount: 10.0,
            },
            "orders.quote",
            Duration::from_secs(5),
        )
        .await?;
    println!(
        "request to orders.quote -> reply {}",
        String::from_utf8_lossy(reply.body())
    );
    app.stop().await?;
    Ok(())
}
