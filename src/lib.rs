//! # brook
//!
//! Declarative message handlers for Kafka, RabbitMQ, NATS, Redis and MQTT, in the spirit of
//! Python's FastStream: annotate an async fn with `#[subscriber]`, and brook subscribes it,
//! decodes the payload with serde, runs it, and settles the message exactly as its
//! **ack policy** says, for that broker. Policy/broker combinations that cannot work are
//! compile errors.
//!
//! ```
//! use brook::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64, amount: f64 }
//!
//! #[subscriber(broker = memory, topic = "orders", ack_policy = NackOnError)]
//! async fn bill(order: Order, msg: &Message) -> anyhow::Result<()> {
//!     if order.amount < 0.0 {
//!         return Err(brook::Reject.into()); // settle now, from any depth, with `?`
//!     }
//!     tracing::info!(id = order.id, delivery = ?msg.delivery_count(), "billing");
//!     Ok(())                                // Ok: ack; any other error: nack (redeliver)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let app = App::new(MemoryBroker::new()).subscribe(bill);
//! # app.shutdown_handle().shutdown();
//! app.run().await?; // until SIGINT/SIGTERM, then drains in-flight messages
//! # Ok(()) }
//! ```
//!
//! - Ack policies, interrupts and the per-broker semantics: `docs/ack-policies.md`.
//! - Compile-time checks: `docs/compile-time-checks.md`.
//! - Testing handlers without a broker: [`testing`] and `docs/testing.md`.
//!
//! The in-memory broker is always compiled in; each real broker is a cargo feature (`kafka`,
//! `rabbit`, `nats`, `redis`, `mqtt`, or `full`).

pub use brook_runtime::*;

/// Declares an async fn as a message handler.
///
/// ```text
/// #[subscriber(broker = memory, topic = "orders", ack_policy = NackOnError, concurrency = 4, max_deliveries = 5)]
/// async fn bill(order: Order, msg: &Message) -> anyhow::Result<()> { ... }
/// ```
///
/// The function becomes a unit struct `bill` implementing [`Handler`], registered with
/// `App::subscribe(bill)`; the function itself stays callable as `bill::handle(...)`.
///
/// **Which broker.** `brook::subscriber` takes `broker = kafka` / `rabbit` / `nats` / `redis` /
/// `mqtt` / `memory`, and is the in-memory broker without it; `brook::kafka::subscriber` (and
/// the other brokers' paths) fix the broker. Which cargo features are on never matters.
///
/// **Names** (topic, queue, group_id, ...) are string literals, any expression that yields a
/// string (evaluated when the App is built: `topic = std::env::var("T").unwrap_or_default()`),
/// or `_`, given where the subscriber is mounted (`App::subscribe(bill.topic(&cfg.orders))`,
/// see [`Mount`]). Literal names are checked at compile time, the others by `App::start`.
///
/// **Arguments of the attribute.** Every broker: `broker`, `ack_policy` (`AckFirst`,
/// `Ack`, `RejectOnError`, `NackOnError`, `Manual`; default: FastStream's for the broker),
/// `concurrency`, `max_deliveries`, `on_decode_error` (`Reject` or `Nack`). The source:
/// `topic` (memory, Kafka, MQTT), `queue` (RabbitMQ), `subject`/`stream` (NATS),
/// `channel`/`list`/`stream` (Redis), plus each broker's own options. Unknown arguments, a
/// policy that cannot work on the source, or a broker that is not compiled in are compile
/// errors naming the broker, the source and the policy; degraded combinations (Kafka
/// `RejectOnError`, ...) compile with a warning.
///
/// **Arguments of the function**: any `serde::Deserialize` type (the decoded payload),
/// `String`/`&str`, `Vec<u8>`/`Bytes`/`&[u8]` (raw), `&Message`, `&Headers`, `State<T>`,
/// `&Context`, a broker's own message type (`&brook::kafka::KafkaMessage`, ...), or anything
/// implementing [`FromMessage`]. It returns `()` or `Result<(), E>` with
/// `E: Into<anyhow::Error>`. Arguments the App can never produce (a `State<T>` it has no `T`
/// for) stop `App::start`.
pub use brook_macros::subscriber;

/// The in-memory broker (always compiled in), with its `#[subscriber]`:
/// `use brook::memory::subscriber;`.
pub mod memory {
    pub use brook_macros::memory_subscriber as subscriber;
    pub use brook_runtime::memory::*;
}

/// Kafka (`kafka` feature): `use brook::kafka::subscriber;` declares Kafka subscribers.
#[cfg(feature = "kafka")]
pub mod kafka {
    pub use brook_kafka::*;
    pub use brook_macros::kafka_subscriber as subscriber;
}

/// RabbitMQ (`rabbit` feature): `use brook::rabbit::subscriber;` declares RabbitMQ subscribers.
#[cfg(feature = "rabbit")]
pub mod rabbit {
    pub use brook_macros::rabbit_subscriber as subscriber;
    pub use brook_rabbit::*;
}

/// NATS core and JetStream (`nats` feature): `use brook::nats::subscriber;`.
#[cfg(feature = "nats")]
pub mod nats {
    pub use brook_macros::nats_subscriber as subscriber;
    pub use brook_nats::*;
}

/// Redis pub/sub, lists and streams (`redis` feature): `use brook::redis::subscriber;`.
#[cfg(feature = "redis")]
pub mod redis {
    pub use brook_macros::redis_subscriber as subscriber;
    pub use brook_redis::*;
}

/// MQTT (`mqtt` feature): `use brook::mqtt::subscriber;`.
#[cfg(feature = "mqtt")]
pub mod mqtt {
    pub use brook_macros::mqtt_subscriber as subscriber;
    pub use brook_mqtt::*;
}

/// Everything a handler module usually needs.
pub mod prelude {
    pub use crate::subscriber;
    pub use brook_runtime::{
        AckPolicy, App, Broker, Context, Headers, MemoryBroker, Message, Mount, MountNames,
        Outgoing, Publish, Publisher, Settled, State,
    };
}
