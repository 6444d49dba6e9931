//! The AsyncAPI 3.0 document of an App with a subscriber on each broker, written without
//! connecting to any of them:
//!
//! ```text
//! cargo run --example asyncapi --features full,asyncapi > asyncapi.yaml
//! cargo run --example asyncapi --features full,asyncapi -- --json > asyncapi.json
//! cargo run --example asyncapi --features full,asyncapi -- --html asyncapi.html
//! ```
//!
//! Names come from configuration (environment variables here; `ORDERS_QUEUE`,
//! `INVOICES_TOPIC`), and the document shows them as configured. Payload types derive
//! `schemars::JsonSchema` to show their fields; `Reading` does not, and still appears.

use brook::asyncapi::AsyncApi;
use brook::kafka::KafkaBroker;
use brook::mqtt::MqttBroker;
use brook::nats::NatsBroker;
use brook::prelude::*;
use brook::rabbit::RabbitBroker;
use brook::redis::RedisBroker;
use brook::{BrokerKind, With};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Names and addresses, from the environment with these defaults.
pub struct Config {
    pub amqp_url: String,
    pub kafka_url: String,
    pub nats_url: String,
    pub redis_url: String,
    pub mqtt_url: String,
    pub orders_queue: String,
    pub invoices_topic: String,
}

impl Config {
    pub fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Config {
            amqp_url: var("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            kafka_url: var("KAFKA_URL", "127.0.0.1:9092"),
            nats_url: var("NATS_URL", "nats://127.0.0.1:4222"),
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
            mqtt_url: var(
                "MQTT_URL",
                "mqtt://127.0.0.1:1883?client_id=brook-example&version=5",
            ),
            orders_queue: var("ORDERS_QUEUE", "orders"),
            invoices_topic: var("INVOICES_TOPIC", "invoices"),
        }
    }
}

/// An order to bill.
#[derive(Deserialize, JsonSchema)]
pub struct Order {
    /// The order's number.
    pub id: u64,
    pub customer: String,
    pub lines: Vec<Line>,
}

/// One line of an order.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Line {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
}

/// What billing an order produces.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Invoice {
    pub order_id: u64,
    pub total_cents: u64,
}

/// A price request, answered over request/reply.
#[derive(Deserialize, JsonSchema)]
pub struct QuoteRequest {
    pub sku: String,
    pub quantity: u32,
}

/// A price.
#[derive(Serialize, JsonSchema)]
pub struct Quote {
    pub sku: String,
    pub total_cents: u64,
}

/// A parcel to ship.
#[derive(Deserialize, JsonSchema)]
pub struct Shipment {
    pub order_id: u64,
    pub address: String,
}

/// A sensor reading from a device that predates schemas (no `JsonSchema`).
#[derive(Deserialize)]
pub struct Reading {
    pub celsius: f64,
}

/// An audit record, published from handlers with a `Publisher`.
#[derive(Serialize, JsonSchema)]
pub struct AuditEvent {
    pub what: String,
}

/// Bills an order and publishes its invoice on Kafka.
///
/// A failure hands the order back to the queue, to be delivered again.
#[brook::rabbit::subscriber(
    queue = _,
    ack_policy = NackOnError,
    publish = _,
    publish_broker = kafka
)]
pub async fn bill(order: Order) -> anyhow::Result<Invoice> {
    let total_cents = order
        .lines
        .iter()
        .map(|l| l.unit_price_cents * u64::from(l.quantity))
        .sum();
    tracing::info!(order.id, %order.customer, "billed");
    Ok(Invoice {
        order_id: order.id,
        total_cents,
    })
}

/// Records each invoice in the ledger.
#[brook::kafka::subscriber(topic = _, group_id = "ledger", auto_offset_reset = earliest, ack_policy = NackOnError)]
pub async fn record(invoice: Invoice) -> anyhow::Result<()> {
    tracing::info!(invoice.order_id, invoice.total_cents, "recorded");
    Ok(())
}

/// Answers price requests.
#[brook::nats::subscriber(subject = "prices.quote", queue_group = "pricing")]
pub async fn quote(request: QuoteRequest) -> Quote {
    Quote {
        total_cents: 250 * u64::from(request.quantity),
        sku: request.sku,
    }
}

/// Ships paid orders; after five failed deliveries a shipment is dead-lettered.
#[brook::redis::subscriber(
    stream = "shipments",
    group = "shipping",
    ack_policy = NackOnError,
    max_deliveries = 5,
    dead_letter_stream = "shipments.dead"
)]
pub async fn ship(shipment: Shipment, publisher: Publisher<'_>) -> anyhow::Result<()> {
    let what = format!(
        "shipped order {} to {}",
        shipment.order_id, shipment.address
    );
    publisher.publish(&AuditEvent { what }, "audit").await?;
    Ok(())
}

/// Keeps the latest temperature per sensor.
#[brook::mqtt::subscriber(topic = "sensors/+/temperature", qos = 1)]
pub async fn temperature(reading: Reading) {
    tracing::info!(reading.celsius, "temperature");
}

/// The brokers of the App, in the order they are added.
pub type Brokers =
    With<With<With<With<RabbitBroker, KafkaBroker>, NatsBroker>, RedisBroker>, MqttBroker>;

/// The App, with names from `config`.
pub fn app(config: &Config) -> App<Brokers> {
    App::new(RabbitBroker::new(&config.amqp_url))
        .with_broker(KafkaBroker::new(&config.kafka_url))
        .with_broker(NatsBroker::new(&config.nats_url))
        .with_broker(RedisBroker::new(&config.redis_url))
        .with_broker(MqttBroker::new(&config.mqtt_url))
        .subscribe(
            bill.queue(&config.orders_queue)
                .publish(&config.invoices_topic),
        )
        .subscribe(record.topic(&config.invoices_topic))
        .subscribe(quote)
        .subscribe(ship)
        .subscribe(temperature)
}

/// The App's document.
pub fn document(app: &App<Brokers>) -> AsyncApi {
    app.asyncapi()
        .title("brook example: orders")
        .version("1.0.0")
        .description("Bills orders from RabbitMQ, records invoices from Kafka, quotes prices over NATS, ships from a Redis stream and reads MQTT sensors.")
        .publishes::<AuditEvent>(BrokerKind::Redis, "audit")
}

#[allow(dead_code)] // the tests include this file for `app` and `document`
fn main() -> anyhow::Result<()> {
    let doc = document(&app(&Config::from_env()));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => print!("{}", doc.to_yaml()),
        ["--json"] => println!("{}", doc.to_json()),
        ["--html", path] => {
            std::fs::write(path, doc.to_html())?;
            eprintln!("wrote {path}");
        }
        _ => anyhow::bail!("usage: asyncapi [--json | --html <file>]"),
    }
    Ok(())
}
