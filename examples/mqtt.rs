//! brook on MQTT (Mosquitto): a NackOnError subscriber whose failed message comes back after
//! the session resumes, a QoS 0 sensor feed, and a Manual QoS 2 subscriber.
//!
//! `cargo run --example mqtt --features mqtt` with Mosquitto on 127.0.0.1:1883 (`MQTT_URL`
//! overrides). It publishes a few messages, waits until each was handled, and exits.

// brook warns (as a deprecation) that MQTT's NackOnError redelivers only through a persistent
// session; this example sets one up (client id + persistent_session), so the warning is known.
#![allow(deprecated)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use brook::mqtt::subscriber;
use brook::mqtt::{MqttBroker, MqttMessage};
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
/// 2 orders billed and their 2 invoices audited, 2 readings, 1 login.
const EXPECTED: u64 = 7;

fn handled() {
    if HANDLED.fetch_add(1, Ordering::SeqCst) + 1 == EXPECTED {
        DONE.notify_one();
    }
}

/// Order 2 fails on its first delivery: NackOnError withholds the PUBACK, brook resumes the
/// session, and Mosquitto redelivers it with the DUP flag set.
/// Its result is published to `brook/example/audit/invoices` before the PUBACK.
#[subscriber(
    topic = "brook/example/orders",
    qos = 1,
    ack_policy = NackOnError,
    publish = "brook/example/audit/invoices"
)]
async fn bill(order: Order, mqtt: &MqttMessage) -> anyhow::Result<String> {
    if order.id == 2 && !mqtt.dup() {
        anyhow::bail!("payment backend timed out on order {}", order.id);
    }
    println!("billed order {} (redelivery: {})", order.id, mqtt.dup());
    handled();
    Ok(format!("invoice for order {}", order.id))
}

/// QoS 0: nothing to acknowledge.
#[subscriber(topic = "brook/example/sensors/+", qos = 0)]
async fn sensor(reading: f64, msg: &Message) {
    println!("{} = {reading}", msg.topic());
    handled();
}

/// Manual, QoS 2: the handler's ack sends PUBREC (the handshake then completes with
/// PUBREL/PUBCOMP).
#[subscriber(topic = "brook/example/audit/#", qos = 2, ack_policy = Manual)]
async fn audit(text: String, msg: &Message) -> anyhow::Result<()> {
    println!("audit on {}: {text}", msg.topic());
    msg.ack().await?;
    handled();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let url = std::env::var("MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    // A stable client id and a persistent session: what NackOnError needs to redeliver.
    let broker = MqttBroker::new(&url)
        .client_id("brook-example-mqtt")
        .persistent_session(true);
    let app = App::new(broker.clone())
        .subscribe(bill)
        .subscribe(sensor)
        .subscribe(audit)
        .start()
        .await?;

    for id in [1, 2] {
        broker
            .publish(&Order { id, amount: 9.5 }, "brook/example/orders")
            .await?;
    }
    broker
        .publish(&21.5, "brook/example/sensors/kitchen")
        .await?;
    broker
        .publish(&19.0, "brook/example/sensors/cellar")
        .await?;
    broker
        .publish_with(
            Outgoing::new("brook/example/audit/alice", "login"),
            2,
            false,
        )
        .await?;

    tokio::time::timeout(Duration::from_secs(20), DONE.notified())
        .await
        .map_err(|_| anyhow::anyhow!("not every message was handled within 20 s"))?;
    app.stop().await?;
    println!("done: {} messages handled", HANDLED.load(Ordering::SeqCst));
    Ok(())
}
