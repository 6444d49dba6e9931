//! brook on RabbitMQ: a quorum queue with NackOnError and max_deliveries whose handler publishes
//! each billed order to a topic exchange, a classic queue bound to that exchange under
//! RabbitMQ's default policy (RejectOnError), and a request answered over direct reply-to.
//!
//! `cargo run --example rabbit --features rabbit` with RabbitMQ on 127.0.0.1:5672 (guest/guest;
//! `AMQP_URL` overrides). It publishes a few orders, waits until each was handled, and exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use brook::prelude::*;
use brook::rabbit::subscriber;
use brook::rabbit::{RabbitBroker, RabbitMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    amount: f64,
}

static HANDLED: AtomicU64 = AtomicU64::new(0);
static DONE: LazyLock<Notify> = LazyLock::new(Notify::new);
/// 2 orders billed, then shipped; 1 express order shipped.
const EXPECTED: u64 = 5;

fn handled() {
    if HANDLED.fetch_add(1, Ordering::SeqCst) + 1 == EXPECTED {
        DONE.notify_one();
    }
}

/// A quorum queue counts deliveries (`x-delivery-count`), so `max_deliveries` works. The first
/// delivery of order 2 fails: NackOnError sends basic.nack(requeue) and RabbitMQ redelivers.
/// A billed order goes on to the exchange `brook.example` with routing key `ship.standard`
/// (confirmed before the order is acked).
#[subscriber(
    queue = "brook.example.orders",
    queue_type = quorum,
    ack_policy = NackOnError,
    max_deliveries = 5,
    prefetch = 16,
    publish = "brook.example"
)]
async fn bill(order: Order, msg: &Message) -> anyhow::Result<Publish<Order>> {
    if order.id == 2 && msg.delivery_count() == Some(1) {
        anyhow::bail!("payment backend timed out on order {}", order.id);
    }
    println!(
        "billed order {} (delivery {:?})",
        order.id,
        msg.delivery_count()
    );
    handled();
    Ok(Publish::new(order).key("ship.standard"))
}

/// Answers requests: the result goes back over RabbitMQ's direct reply-to.
#[subscriber(queue = "brook.example.quote")]
async fn quote(order: Order) -> f64 {
    order.amount * 1.2
}

/// Bound to the topic exchange `brook.example` with `ship.*`. RejectOnError (RabbitMQ's
/// default in FastStream and brook): an error rejects the message (requeue = false), which a
/// dead-letter exchange would receive if the queue had one.
#[subscriber(
    queue = "brook.example.ship",
    exchange = "brook.example",
    exchange_type = topic,
    routing_key = "ship.*"
)]
async fn ship(order: Order, rabbit: &RabbitMessage) -> anyhow::Result<()> {
    println!(
        "shipping order {} (routing key {})",
        order.id,
        rabbit.routing_key()
    );
    handled();
    if order.amount < 0.0 {
        return Err(brook::Reject.into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let broker = RabbitBroker::new(url);
    let app = App::new(broker.clone())
        .subscribe(bill)
        .subscribe(ship)
        .subscribe(quote)
        .start()
        .await?;

    for id in [1, 2] {
        // The default exchange routes to the queue of that name; returns once confirmed.
        broker
            .publish(&Order { id, amount: 9.5 }, "brook.example.orders")
            .await?;
    }
    // With a key, the destination is an exchange and the key its routing key.
    let to_ship = Outgoing::encode(
        &Order {
            id: 3,
            amount: -1.0,
        },
        "brook.example",
    )?
    .with_key("ship.express")
    .with_correlation_id("order-3");
    broker.publish_message(to_ship).await?;

    tokio::time::timeout(Duration::from_secs(20), DONE.notified())
        .await
        .map_err(|_| anyhow::anyhow!("not every order was handled within 20 s"))?;
    let reply = broker
        .request(
            &Order {
                id: 4,
                amount: 10.0,
            },
            "brook.example.quote",
            Duration::from_secs(5),
        )
        .await?;
    println!(
        "quote for order 4: {}",
        String::from_utf8_lossy(reply.body())
    );
    app.stop().await?;
    println!(
        "done: {} deliveries handled",
        HANDLED.load(Ordering::SeqCst)
    );
    Ok(())
}
